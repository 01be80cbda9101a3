"""Can a conv net learn a median filter? Every model of the zoo trained on real photos for each
non-linear operator for the same budget, measured on held-out photos against the best linear filter.

    python scripts/operator_zoo.py --out zoo.md              # 200 steps per cell, data=samples
    python scripts/operator_zoo.py --steps 100 --operators median gamma --models linear can_small

Every cell is an ordinary ``train.py`` run with ``data=samples`` (its run dir lands under
``--runs``), trained on random patches of the training photos; it is then measured on the held-out
photos (``data.val``): the relative MSE (MSE over the targets' variance) and the PSNR (peak: the
targets' range). The reference row is the linear optimum: the least-squares ``--lstsq-size``
kernel (with a bias) fitted on the held-out photos themselves, which no linear filter of that size
can beat there. The last table gives each model's gain over it, ``10 log10(lstsq rel_mse / rel_mse)``
in dB: above 0 a model does what no linear filter can.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from convlearn import geometry  # noqa: E402 (needs the repository on the path; first: quiets TensorFlow's start-up)
import keras  # noqa: E402
from convlearn.config import build  # noqa: E402
from convlearn.data import Images, make_feed  # noqa: E402
from convlearn.targets import Pipeline  # noqa: E402
from convlearn.pipeline import run_experiment  # noqa: E402

# The operators, as target overrides (presets of configs/target/).
OPERATORS: dict[str, list[str]] = {
    "median": ["target=median"],
    "dilation": ["target=dilation"],
    "bilateral": ["target=bilateral"],
    "gamma": ["target=gamma"],
    "opening": ["target=opening"],
    "local_contrast": ["target=local_contrast"],
}
# The models, as model overrides: a linear filter trained like the others, the notebook's model, and
# the context aggregation network at two depths and widths (receptive fields 17 and 33 pixels).
MODELS: dict[str, list[str]] = {
    "can_small": ["model=can", "model.depth=4", "model.width=16"],
    "can_large": ["model=can", "model.depth=5", "model.width=32"],
    "linear": ["model=linear", "model.kernel_size=9", "model.use_bias=true"],
    "notebook": ["model=notebook"],
}


def compose_run(overrides: list[str], args: argparse.Namespace) -> DictConfig:
    """The config of one cell: data=samples, the zoo's budget, then ``overrides``."""
    budget = [
        "data=samples", f"data.scale={args.scale}", f"trainer.steps={args.steps}", "trainer.progress=false",
        f"trainer.val_every={args.steps}", "logger.image_every=0", f"optimizer.lr={args.lr}",
        f"+optimizer.decay_steps={args.steps}", f"+optimizer.warmup_steps={args.steps // 10}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*budget, *overrides])


def held_out(images: Images, target: Pipeline, model: keras.Model) -> dict[str, float]:
    """rel_mse and PSNR of ``model`` over every compared pixel of the held-out photos."""
    errors, targets = [], []
    for batch in make_feed(images, target, model).validation:
        targets.append(batch.targets.numpy().ravel())
        errors.append(batch.predict(model).numpy().ravel() - targets[-1])
    return _scores(np.concatenate(errors), np.concatenate(targets))


def linear_optimum(images: Images, target: Pipeline, size: int) -> dict[str, float]:
    """The least-squares ``size x size`` kernel and bias on the held-out photos themselves: the
    best any such linear filter does there (solved by the normal equations in float64)."""
    gram, moment, pairs = np.zeros((size * size + 1,) * 2), np.zeros(size * size + 1), []
    for image in images.val:
        crops = geometry.align(geometry.conv((size, size)), target.footprint, image.shape[:2])
        windows = np.lib.stride_tricks.sliding_window_view(image[..., 0].astype(np.float64), (size, size))
        design = windows[crops.model].reshape(-1, size * size)
        design = np.hstack([design, np.ones((len(design), 1))])
        wanted = target.apply(image[..., 0])[crops.target].astype(np.float64).ravel()
        gram += design.T @ design
        moment += design.T @ wanted
        pairs.append((design, wanted))
    solution = np.linalg.solve(gram, moment)
    errors = np.concatenate([design @ solution - wanted for design, wanted in pairs])
    return _scores(errors, np.concatenate([wanted for _, wanted in pairs]))


def _scores(errors: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    mse = float(np.mean(np.square(errors, dtype=np.float64)))
    peak = float(targets.max() - targets.min())
    return {"rel_mse": mse / float(np.var(targets, dtype=np.float64)), "psnr_db": 10 * math.log10(peak**2 / mse)}


def table(cells: dict[str, dict[str, str]], columns: list[str]) -> str:
    """Rows = models, columns = operators."""
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {row} | " + " | ".join(values.get(c, "") for c in columns) + " |" for row, values in cells.items()]
    return "\n".join(lines)


def report(results: dict[str, dict[str, dict]], args: argparse.Namespace) -> str:
    """The Markdown tables of ``results[model][operator]`` (the optimum under ``lstsq``)."""
    columns = [op for op in OPERATORS if any(op in cells for cells in results.values())]
    psnr = {row: {op: f"{cell['psnr_db']:.1f}" for op, cell in cells.items()} for row, cells in results.items()}
    rel = {row: {op: f"{cell['rel_mse']:.2e}" for op, cell in cells.items()} for row, cells in results.items()}
    optimum = results.get("lstsq", {})
    gain = {
        row: {op: f"{10 * math.log10(optimum[op]['rel_mse'] / cell['rel_mse']):+.1f}"
              for op, cell in cells.items() if op in optimum}
        for row, cells in results.items() if row != "lstsq"
    }
    budget = (
        f"{args.steps} steps of {args.lr:g} Adam (10% warm-up, cosine decay), batches of 8 random 64x64 patches "
        f"of the training photos at scale {args.scale}; lstsq: the {args.lstsq_size}x{args.lstsq_size} kernel "
        "and bias fitted on the held-out photos"
    )
    return (
        f"Budget: {budget}.\n\nPSNR (dB) on the held-out photos:\n\n{table(psnr, columns)}\n\n"
        f"rel_mse on the held-out photos:\n\n{table(rel, columns)}\n\n"
        f"Gain over the linear optimum (dB, 10 log10 of lstsq rel_mse / rel_mse):\n\n{table(gain, columns)}\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults are the budget of the table in docs/operators.md."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per cell")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's peak learning rate")
    parser.add_argument("--scale", type=float, default=0.5, help="resize factor of the photos (data.scale)")
    parser.add_argument("--lstsq-size", type=int, default=9, help="side of the linear optimum's kernel")
    parser.add_argument("--operators", nargs="+", choices=list(OPERATORS), default=list(OPERATORS))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "operator_zoo", help="where the run dirs go")
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file (and the cells as .json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict]]:
    args = parse_args(argv)
    logging.getLogger("convlearn").setLevel(logging.WARNING)
    results: dict[str, dict[str, dict]] = {}
    start = time.perf_counter()
    loaded: dict[str, tuple[Images, Pipeline]] = {}
    # Model by model, so that a stopped run leaves whole rows.
    for name in args.models:
        for operator in args.operators:
            if operator not in loaded:
                cfg = compose_run(OPERATORS[operator], args)
                loaded[operator] = images, target = build(cfg, "data"), build(cfg, "target")
                results.setdefault("lstsq", {})[operator] = linear_optimum(images, target, args.lstsq_size)
            images, target = loaded[operator]
            run_dir = args.runs / name / operator
            cell = time.perf_counter()
            run = run_experiment(compose_run([*OPERATORS[operator], *MODELS[name]], args), run_dir)
            if run.metrics["status"] != "completed":  # stopped (Ctrl-C, a diverged loss): not a result of the budget
                print(f"{name} on {operator}: {run.metrics['status']} ({run.metrics.get('reason')}); the table "
                      "keeps the cells before it", file=sys.stderr)
                print(report(results, args))
                return results
            scores = held_out(images, target, run.model)
            results.setdefault(name, {})[operator] = {**scores, "seconds": time.perf_counter() - cell,
                                                      "steps_per_sec": run.metrics["steps_per_sec"]}
            print(f"{name} on {operator}: held-out PSNR {scores['psnr_db']:.1f} dB, rel_mse {scores['rel_mse']:.2e} "
                  f"(lstsq {results['lstsq'][operator]['rel_mse']:.2e}), {time.perf_counter() - cell:.0f} s",
                  file=sys.stderr, flush=True)
            if args.out:  # every finished cell is kept, so a stopped run still leaves its rows
                args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
                args.out.write_text(report(results, args))
    print(f"all cells: {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr)
    text = report(results, args)
    print(text)
    return results


if __name__ == "__main__":
    main()
