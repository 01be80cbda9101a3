"""Which architectures can learn which operators: every zoo model trained on every target for
the same budget, as a Markdown table of PSNR (dB) on the default generated image.

    python scripts/model_zoo.py --out zoo.md        # 200 steps per cell on the default 300x400 image
    python scripts/model_zoo.py --steps 100 --height 120 --width 160

Every cell is an ordinary ``train.py`` run (its run dir lands under ``--runs``), so the numbers
are the ones a user gets from the same overrides. A second table gives ``kernel_rel_error`` where
the target is linear.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from convlearn.config import build  # noqa: E402 (needs the repository on the path)
from convlearn.errors import ConvlearnError  # noqa: E402
from convlearn.pipeline import run_experiment  # noqa: E402


# The target presets of configs/target/, as override lists; sobel_x is a custom kernel.
TARGETS: dict[str, list[str]] = {
    "edge_blur": ["target=edge_blur"],
    "gaussian": ["target=gaussian", "target.size=5"],
    "sobel_x": ["target=custom", "target.values=[[-1,0,1],[-2,0,2],[-1,0,1]]"],
    "sobel_magnitude": ["target=sobel_magnitude"],
}

# Overrides per model for targets whose shrink is (odd, even): the model's shrink must have the
# same parity or the outputs sit half a pixel apart. Most configs follow the target by themselves
# (`auto` kernel sizes; linear's is the target's receptive field); deep_linear's stack of equal
# kernels has no such knob.
MODELS: dict[str, tuple[list[str], list[str]]] = {
    "linear": (["model=linear"],) * 2,
    "linear, trainer=lstsq": (["model=linear", "trainer=lstsq"],) * 2,
    "deep_linear": (["model=deep_linear", "model.depth=7", "model.kernel_size=4"], ["model=deep_linear"]),
    "notebook": (["model=notebook", "optimizer.lr=3e-3"],) * 2,
    "edge_blur_structured": (["model=edge_blur_structured", "model.edge_size=auto"],) * 2,
    "can": (["model=can", "optimizer.lr=3e-3"],) * 2,
}


def compose_run(overrides: list[str], args: argparse.Namespace) -> DictConfig:
    """The config of one run: the zoo's budget, then ``overrides``."""
    size = [f"data.{key}={value}" for key, value in (("height", args.height), ("width", args.width)) if value]
    common = [*size, "logger.image_every=0", "optimizer.lr=1e-2"]
    if "trainer=lstsq" not in overrides:
        # A short warm-up: at full rate from the start, edge_blur_structured's box blurs flip sign and die.
        schedule = [f"+optimizer.decay_steps={args.steps}", f"+optimizer.warmup_steps={args.steps // 10}"]
        common += [f"trainer.steps={args.steps}", "trainer.progress=false", *schedule]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*common, *overrides])


def model_overrides(variants: tuple[list[str], list[str]], target: list[str], args: argparse.Namespace) -> list[str]:
    """The variant of a model whose shrink has the parity of the target's."""
    footprint = build(compose_run(target, args), "target").footprint
    return variants[0] if footprint.shrink[0] % 2 else variants[1]


def table(rows: dict[str, dict[str, str]]) -> str:
    """Rows = models, columns = the targets that have a cell in some row."""
    columns = [t for t in TARGETS if any(t in cells for cells in rows.values())]
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    lines += [f"| {model} | " + " | ".join(cells.get(t, "") for t in columns) + " |" for model, cells in rows.items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults are the zoo's budget on the default image."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # 200 steps keep the whole table near 13 minutes on 2 CPU cores (300 steps: about 18).
    parser.add_argument(
        "--steps", type=int, default=200, help="optimizer steps per cell (Adam: 10%% warm-up, then cosine decay)"
    )
    parser.add_argument("--height", type=int, help="image height (default: the data config's, 300)")
    parser.add_argument("--width", type=int, help="image width (default: the data config's, 400)")
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "zoo", help="where the run dirs go")
    parser.add_argument("--out", type=Path, help="also write the tables to this Markdown file")
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    logging.getLogger("convlearn").setLevel(logging.WARNING)

    psnr: dict[str, dict[str, str]] = {}
    recovery: dict[str, dict[str, str]] = {}
    start = time.perf_counter()
    for model, variants in MODELS.items():
        for name, target in TARGETS.items():
            overrides = model_overrides(variants, target, args)
            cfg = compose_run([*target, *overrides], args)
            run_dir = args.runs / model.split(",")[0].replace(" ", "") / name
            if "lstsq" in model:
                run_dir = run_dir.with_name(name + "_lstsq")
            cell = time.perf_counter()
            try:
                summary = run_experiment(cfg, run_dir).metrics
            except ConvlearnError as err:
                psnr.setdefault(model, {})[name] = "n/a"
                print(f"{model} on {name}: {err}", file=sys.stderr)
                continue
            finite = math.isfinite(summary["psnr_db"])
            psnr.setdefault(model, {})[name] = f"{summary['psnr_db']:.1f}" if finite else "inf"
            if "kernel_rel_error" in summary:
                recovery.setdefault(model, {})[name] = f"{summary['kernel_rel_error']:.1e}"
            print(
                f"{model} on {name} ({' '.join(overrides)}): PSNR {summary['psnr_db']:.1f} dB, "
                f"{time.perf_counter() - cell:.0f} s", file=sys.stderr, flush=True,
            )

    data = compose_run([], args).data
    budget = f"{args.steps} steps, {data.height}x{data.width} image"
    print(f"all cells: {(time.perf_counter() - start) / 60:.1f} min", file=sys.stderr)
    text = (
        f"PSNR (dB) after {budget}:\n\n{table(psnr)}\n\n"
        f"kernel_rel_error on the linear targets:\n\n{table(recovery)}\n"
    )
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
