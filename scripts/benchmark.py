"""How fast does convlearn train, next to the notebook's own loop and to Keras ``fit``?

    python scripts/benchmark.py --out bench.json           # the notebook's experiment, 500 steps
    python scripts/benchmark.py --image img.npy --steps 300
    python scripts/benchmark.py --scaling                   # also square images 128..2048, full frame and patches
    python scripts/benchmark.py --quick                     # a tiny image and a few steps: checks that it runs

Every row trains the notebook's experiment (its 13-layer model, edge_blur, the generated 300x400
image or ``--image``) and runs in a process of its own, so that its peak memory (resident set
size, which is what TensorFlow on a CPU really uses) is its own and its thread pools can be sized
freshly. ``--quick`` runs the rows in this process to stay fast: its memory column is then the
shared process's peak. Per row: steady steps/s (after the first steps, which trace and compile),
the ratio to the notebook loop, the wall time from the first step until the model is as good as
the notebook's after all its steps (its final MSE), peak memory, and the achieved GFLOP/s next to
a plain matmul's, measured in the same run. A full run also sweeps the thread pools and measures
the logger's cost in turns with the bare step in one process, free of the drift between processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere, without installing

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from convlearn import perf  # noqa: E402
from convlearn.config import build  # noqa: E402
from convlearn.data import make_batch, shapes  # noqa: E402
from convlearn.logs import hparams_from_config  # noqa: E402
from convlearn.optim import current_lr  # noqa: E402
from convlearn.pipeline import build_experiment, train_experiment  # noqa: E402
from convlearn.training import compiled_step, mse  # noqa: E402

QUICK_DATA = ["debug=tiny"]  # configs/debug/tiny.yaml: the tests' tiny image
QUICK_STEPS = 6
SCALING_SIZES = [128, 256, 512, 1024, 2048]
QUICK_SCALING_SIZES = [48, 64]
PATCH, PATCH_BATCH = 128, 8
# The memory goal: patch training on an image this large stays under 2 GB.
LARGE_SIZE, QUICK_LARGE_SIZE = 4096, 96
THREAD_SWEEP_STEPS = 100
# The logger's cost: rounds of this many bare steps and as many logged ones, in turns.
LOGGING_ROUNDS, LOGGING_CHUNK = 5, 50
NOTEBOOK = "notebook loop"  # the reference every other row is measured against
ROW_FIELDS = ("name", "steps_per_sec", "ratio_vs_notebook", "seconds_to_notebook_quality", "peak_mem_mb")


class StepClock:
    """Seconds from ``start()`` to the end of every step. Passed to the trainer as its logger, it
    times each step and hands the call on to the real logger, if any (whose work is then counted
    in the next step, as a user would see it)."""

    def __init__(self, logger: object | None = None) -> None:
        self.logger = logger
        self.times: list[float] = []
        self._start = time.perf_counter()

    def start(self) -> None:
        self.times.clear()
        self._start = time.perf_counter()

    def watch(self, logger: object) -> StepClock:
        """Time the steps reported to ``logger`` from now on (the trainer then reports to the clock)."""
        self.logger = logger
        self.start()
        return self

    def tick(self) -> None:
        self.times.append(time.perf_counter() - self._start)

    def on_step(self, step: int, scalars: dict[str, float], model: keras.Model) -> None:
        self.tick()
        if self.logger is not None:
            self.logger.on_step(step, scalars, model)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.scalars(step, values)


def notebook_model() -> keras.Model:
    """The notebook's model, as it wrote it."""
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Conv2D(filters=2, kernel_size=2, activation="elu"),
            tf.keras.layers.Conv2D(filters=100, kernel_size=1, activation="elu"),
            tf.keras.layers.Conv2D(filters=1, kernel_size=1, activation="elu"),
            *[tf.keras.layers.Conv2D(filters=4, kernel_size=3, activation="elu") for _ in range(9)],
            tf.keras.layers.Conv2D(filters=1, kernel_size=3, activation="elu"),
        ]
    )
    model.build(input_shape=(None, None, None, 1))
    return model


def notebook_loop(
    model: keras.Model, img: np.ndarray, edges_blurred: np.ndarray, steps: int, clock: StepClock
) -> list[float]:
    """The notebook's training cell: eager GradientTape, Adam with Keras' defaults, the model on
    the full image, MSE against the target. Only its progress bar is left out."""
    opt = tf.optimizers.Adam()
    loss_values = []
    clock.start()
    for _ in range(steps):
        with tf.GradientTape() as t:
            prediction = model(img[None, ..., None].astype("float32"))
            loss = tf.reduce_mean((prediction - edges_blurred[None, ..., None]) ** 2)
        grads = t.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        loss_values.append(loss.numpy())
        clock.tick()
    return [float(v) for v in loss_values]


class _FitClock(keras.callbacks.Callback):
    """Times Keras ``fit``'s epochs (one step each) and keeps each one's loss."""

    def __init__(self, clock: StepClock) -> None:
        super().__init__()
        self.clock, self.losses = clock, []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.clock.start()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.losses.append(float(logs["loss"]))
        self.clock.tick()


def compose_config(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def run_row(spec: dict) -> dict:
    """Train one row's loop and return its per-step losses and times (the parent summarises).

    ``quality[k]``: the training MSE after ``k + 1`` updates (the next step's loss, and after the
    last step a final evaluation), so it can be compared with the notebook's final MSE. Kind
    ``logging`` returns :func:`_logging_cost`'s numbers instead."""
    perf.set_threads(spec.get("threads"))
    experiment = build_experiment(compose_config(spec["overrides"]))
    trainer, images, target = experiment.trainer, experiment.images, experiment.target
    clock = StepClock()
    if spec["kind"] in ("notebook", "keras_fit"):
        keras.utils.set_random_seed(trainer.seed)
        model = notebook_model()
        batch = make_batch(images.train[0][..., 0], target, model)
        if tuple(model(batch.inputs).shape) != tuple(batch.targets.shape):
            raise SystemExit("benchmark: the notebook's loop needs a target as large as the model's output")
        if spec["kind"] == "notebook":
            image, target_image = images.train[0][..., 0], batch.targets.numpy()[0, ..., 0]
            losses = notebook_loop(model, image, target_image, trainer.steps, clock)
        else:
            model.compile(optimizer=keras.optimizers.Adam(), loss="mse")
            timer = _FitClock(clock)
            model.fit(batch.inputs, batch.targets, epochs=trainer.steps, batch_size=1, verbose=0, callbacks=[timer])
            losses = timer.losses
        train, preview = batch, batch
    else:
        model, optimizer = experiment.model, experiment.optimizer
        train, preview = experiment.feed.train, experiment.feed.preview
        if spec["kind"] == "bare":
            losses = _bare_loop(model, optimizer, train, trainer.steps, clock)
        elif spec["kind"] == "logging":
            make_logger = build(experiment.cfg, "logger")
            with tempfile.TemporaryDirectory() as log_dir, make_logger(
                log_dir=Path(log_dir), batch=preview, config_text=OmegaConf.to_yaml(experiment.cfg),
                hparams=hparams_from_config(experiment.cfg), target_kernel=target.linear_kernel(),
            ) as logger:
                return _logging_cost(model, optimizer, train, logger, spec["rounds"], spec["chunk"])
        else:
            with tempfile.TemporaryDirectory() as run_dir:
                losses = train_experiment(experiment, Path(run_dir), watch=clock.watch).history.losses
    final = mse(model, preview)
    inputs = train.inputs if hasattr(train, "inputs") else next(iter(train))[0]
    return {
        "quality": [*losses[1:], final],
        "times": list(clock.times),
        "target_variance": float(np.var(preview.targets.numpy(), dtype=np.float64)),
        "flops_per_step": perf.training_flops(model, tuple(inputs.shape)),
        "pixels_per_step": int(np.prod(inputs.shape[:3])),
        "peak_mem_mb": perf.peak_rss_mb(),
        "threads": [
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        ],
    }


def _bare_loop(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, train: object, steps: int, clock: StepClock
) -> list[float]:
    """Only the trainer's compiled step, back to back: the practical limit for this model here."""
    step_fn = compiled_step(model, optimizer, train.crops)
    feed = iter(train) if not hasattr(train, "inputs") else None
    losses = []
    clock.start()
    for _ in range(steps):
        inputs, targets = next(feed) if feed is not None else (train.inputs, train.targets)
        losses.append(step_fn(inputs, targets)[0])
        clock.tick()
    return [float(v) for v in losses]


def _logging_cost(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, train: object, logger: object, rounds: int, chunk: int
) -> dict:
    """The logger's share of a step, in one process: ``chunk`` bare steps, then ``chunk`` steps
    each followed by the logger's ``on_step`` (pictures at its own ``image_every``), ``rounds``
    times in turns, so that the machine's drift (rows in separate processes differ by up to ~15%
    here) falls on both alike."""
    step_fn = compiled_step(model, optimizer, train.crops)
    step_fn(train.inputs, train.targets)
    logger.pictures(0, model)  # both traced before the clock runs
    seconds = {"bare": 0.0, "logged": 0.0}
    logged_steps = 0
    for _ in range(rounds):
        for mode in seconds:
            start = time.perf_counter()
            for _ in range(chunk):
                loss, grad_norm, _ = step_fn(train.inputs, train.targets)
                scalars = {"loss": float(loss), "grad_norm": float(grad_norm)}
                if mode == "logged":
                    logger.on_step(logged_steps, {**scalars, "learning_rate": current_lr(optimizer)}, model)
                    logged_steps += 1
            seconds[mode] += time.perf_counter() - start
    bare, logged = rounds * chunk / seconds["bare"], rounds * chunk / seconds["logged"]
    return {"rounds": rounds, "steps_per_round": chunk, "bare_steps_per_sec": bare, "logged_steps_per_sec": logged,
            "overhead": 1 - logged / bare}


def run_isolated(spec: dict, isolated: bool) -> dict:
    """``run_row`` in a fresh Python process (its own memory and thread pools), or here."""
    if not isolated:
        # A bf16 row must not leave its dtype policy to the rows after it in this process.
        policy = keras.config.dtype_policy()
        try:
            return run_row(spec)
        finally:
            keras.config.set_dtype_policy(policy)
    done = subprocess.run(
        [sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark: row {spec['name']!r} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def steady_rate(times: Sequence[float]) -> float:
    """Steps per second after the first steps (which trace and compile; a fifth, at most 10)."""
    warmup = max(1, min(10, len(times) // 5))
    if len(times) <= warmup:
        return len(times) / times[-1]
    return (len(times) - warmup) / (times[-1] - times[warmup - 1])


def summarise(name: str, result: dict, notebook: dict | None, matmul: float) -> dict:
    """One table row from a loop's losses and times, measured against the notebook loop's."""
    rate = steady_rate(result["times"])
    rel_mse = [q / result["target_variance"] for q in result["quality"]]
    reference = notebook or {"rate": rate, "rel_mse": rel_mse[-1]}
    reached = next((t for q, t in zip(rel_mse, result["times"]) if q <= reference["rel_mse"]), None)
    gflops = result["flops_per_step"] * rate / 1e9
    return {
        "name": name,
        "steps": len(result["times"]),
        "steps_per_sec": rate,
        "ratio_vs_notebook": rate / reference["rate"],
        "seconds_to_notebook_quality": reached,
        "total_seconds": result["times"][-1],
        "first_step_seconds": result["times"][0],
        "final_rel_mse": rel_mse[-1],
        "peak_mem_mb": result["peak_mem_mb"],
        "flops_per_step": result["flops_per_step"],
        "gflops_per_sec": gflops,
        "fraction_of_matmul": gflops / matmul,
    }


def main_rows(
    data: list[str], steps: int, bf16: bool, quick: bool, only: Sequence[str] | None = None
) -> list[tuple[str, dict]]:
    """The loops compared; bf16 rows only where the CPU computes in bfloat16; with ``only``, just
    those and the notebook loop they are measured against. The preset keeps its own number of
    steps, except in a quick run."""
    run = [*data, f"trainer.steps={steps}", "trainer.progress=false"]
    fast = [*data, "experiment=fast", "trainer.progress=false", *([f"trainer.steps={steps}"] if quick else [])]
    rows = [
        (NOTEBOOK, {"kind": "notebook", "overrides": run}),
        ("keras fit", {"kind": "keras_fit", "overrides": run}),
        ("convlearn", {"kind": "trainer", "overrides": run}),
        ("convlearn bare step", {"kind": "bare", "overrides": run}),
        ("convlearn XLA", {"kind": "trainer", "overrides": [*run, "trainer.jit_compile=true"]}),
        ("convlearn bf16", {"kind": "trainer", "overrides": [*run, "trainer.precision=bf16"]}),
        ("experiment=fast", {"kind": "trainer", "overrides": fast}),
        ("experiment=fast bf16", {"kind": "trainer", "overrides": [*fast, "trainer.precision=bf16"]}),
    ]
    rows = [(name, spec) for name, spec in rows if bf16 or "bf16" not in name]
    if only:
        unknown = sorted(set(only) - {name for name, _ in rows})
        if unknown:
            known = ", ".join(name for name, _ in rows)
            raise SystemExit(f"benchmark: no row {', '.join(map(repr, unknown))} here; the rows are: {known}")
        rows = [(name, spec) for name, spec in rows if name == NOTEBOOK or name in only]
    return rows


def thread_settings(cores: int, quick: bool) -> list[list[int]]:
    """[intra, inter] pool sizes to try; [0, 0] is TensorFlow's default."""
    if quick:
        return [[1, 1]]
    intra = sorted({1, max(1, cores // 2), cores})
    return [[0, 0], *[[i, j] for i in intra for j in (1, 2)]]


def scaling_rows(sizes: Sequence[int], large: int, steps: int, folder: Path) -> list[tuple[dict, dict]]:
    """Full-frame and patch training on generated square images; patches also on a ``large`` one."""
    rows = []
    for size in [*sizes, large]:
        path = folder / f"shapes_{size}.npy"
        # The notebook's picture scaled up: as many shapes, as large relative to the image.
        np.save(path, shapes(size, size, min_size=max(2, size // 50), max_size=max(4, size // 10)))
        common = [f"trainer.steps={steps}", "trainer.progress=false", "data=file", f"data.path={path}"]
        patch = min(PATCH, size // 2)
        if size != large:
            rows.append(({"size": size, "mode": "full frame"}, {"kind": "bare", "overrides": common}))
        rows.append((
            {"size": size, "mode": f"patches {PATCH_BATCH}x{patch}x{patch}"},
            {"kind": "bare", "overrides": [*common, f"data.patch_size={patch}", f"data.batch_size={PATCH_BATCH}"]},
        ))
    return rows


def machine() -> dict:
    names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    return {
        "cpu": names[0] if names else platform.processor(),
        "cores": os.cpu_count(),
        "bf16": perf.bf16_supported(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def benchmark(args: argparse.Namespace) -> dict:
    isolated = not args.quick
    if args.image:
        data = ["data=file", f"data.path={Path(args.image).resolve()}"]
    else:
        data = QUICK_DATA if args.quick else []
    steps = args.steps or (QUICK_STEPS if args.quick else 500)
    info = machine()
    loops = main_rows(data, steps, info["bf16"], args.quick, args.rows)
    matmul = perf.matmul_gflops(256 if args.quick else 1024)
    report: dict = {
        "machine": {**info, "matmul_gflops_float32": matmul}, "image": args.image or "generated", "steps": steps
    }
    if info["bf16"]:
        report["machine"]["matmul_gflops_bf16"] = perf.matmul_gflops(256 if args.quick else 1024, dtype=tf.bfloat16)

    rows, notebook = [], None
    for name, spec in loops:
        row = summarise(name, run_isolated({"name": name, **spec}, isolated), notebook, matmul)
        if notebook is None:
            notebook = {"rate": row["steps_per_sec"], "rel_mse": row["final_rel_mse"]}
            report["notebook_final_rel_mse"] = row["final_rel_mse"]
        rows.append(row)
        print(_line(row), flush=True)
    report["rows"] = rows
    if not args.rows:  # a partial run (--rows) leaves the thread sweep and the logging cost out
        report["threads"] = thread_sweep(data, steps, args.quick)
        report["logging"] = logging_cost(data, args.quick, isolated)
    if args.scaling:
        report["scaling"] = scaling(args.quick, isolated, matmul)
    return report


def thread_sweep(data: list[str], steps: int, quick: bool) -> dict:
    """The bare step's rate for each [intra, inter] pool size, each in a fresh process, and the best."""
    sweep = []
    for threads in thread_settings(os.cpu_count() or 1, quick):
        spec = {"name": f"threads {threads}", "kind": "bare", "threads": threads,
                "overrides": [*data, f"trainer.steps={min(steps, THREAD_SWEEP_STEPS)}", "trainer.progress=false"]}
        result = run_isolated(spec, isolated=True)
        sweep.append({"threads": threads, "applied": result["threads"], "steps_per_sec": steady_rate(result["times"])})
    best = max(sweep, key=lambda entry: entry["steps_per_sec"])
    print(f"threads [intra, inter]: best {best['threads']} at {best['steps_per_sec']:.1f} steps/s", flush=True)
    return {"results": sweep, "best": best["threads"]}


def logging_cost(data: list[str], quick: bool, isolated: bool) -> dict:
    """The default logger's cost next to the bare step, interleaved in one process (see :func:`_logging_cost`)."""
    rounds, chunk = (2, QUICK_STEPS // 2) if quick else (LOGGING_ROUNDS, LOGGING_CHUNK)
    spec = {"name": "logging cost", "kind": "logging", "rounds": rounds, "chunk": chunk,
            "overrides": [*data, "trainer.progress=false"]}
    cost = run_isolated(spec, isolated)
    print(f"logging: {100 * cost['overhead']:.1f}% below the bare step ({cost['logged_steps_per_sec']:.2f} against "
          f"{cost['bare_steps_per_sec']:.2f} steps/s, {rounds} rounds of {chunk} steps each, in turns)", flush=True)
    return cost


def scaling(quick: bool, isolated: bool, matmul: float) -> list[dict]:
    table = []
    with tempfile.TemporaryDirectory() as folder:
        sizes, large = (QUICK_SCALING_SIZES, QUICK_LARGE_SIZE) if quick else (SCALING_SIZES, LARGE_SIZE)
        for labels, spec in scaling_rows(sizes, large, QUICK_STEPS if quick else 20, Path(folder)):
            result = run_isolated({"name": f"{labels}", **spec}, isolated)
            rate = steady_rate(result["times"])
            table.append({
                **labels,
                "steps_per_sec": rate,
                "ns_per_pixel": 1e9 / (rate * result["pixels_per_step"]),
                "gflops_per_sec": result["flops_per_step"] * rate / 1e9,
                "fraction_of_matmul": result["flops_per_step"] * rate / 1e9 / matmul,
                "peak_mem_mb": result["peak_mem_mb"],
            })
            row = table[-1]
            print(f"{row['size']:>5} {row['mode']:<22} {rate:8.2f} steps/s {row['ns_per_pixel']:8.1f} ns/pixel "
                  f"{row['peak_mem_mb']:8.0f} MB", flush=True)
    return table


def _line(row: dict) -> str:
    reached = row["seconds_to_notebook_quality"]
    return (f"{row['name']:<22} {row['steps_per_sec']:8.2f} steps/s {row['ratio_vs_notebook']:6.2f}x "
            f"{'never' if reached is None else f'{reached:.1f} s':>9} to quality {row['peak_mem_mb']:7.0f} MB "
            f"{row['gflops_per_sec']:7.2f} GFLOP/s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="train on this image (.npy or PNG/JPEG) instead of the generated one")
    parser.add_argument(
        "--steps", type=int, help="steps per loop (default 500, --quick 6); experiment=fast keeps its own"
    )
    parser.add_argument("--quick", action="store_true", help="a tiny image, a few steps, rows in this process")
    parser.add_argument(
        "--scaling", action="store_true", help="also time square images 128..2048, full frame and patches"
    )
    parser.add_argument(
        "--rows", type=lambda text: text.split(","),
        help="only these rows, comma-separated (e.g. 'experiment=fast'), next to the notebook loop; no thread sweep",
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row, print its JSON
    args = parser.parse_args(argv)
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))))
        return 0
    report = benchmark(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
