"""How fast does convlearn train, next to the notebook's own loop and to Keras ``fit``?

    python scripts/benchmark.py --out bench.json           # the notebook's experiment, 500 steps
    python scripts/benchmark.py --image img.npy --steps 300
    python scripts/benchmark.py --scaling                   # also square images 128..2048, full frame and patches
    python scripts/benchmark.py --quick                     # a tiny image and a few steps: checks that it runs
    python scripts/benchmark.py --threads                   # also sweep TensorFlow's thread pool sizes

Every row trains the notebook's experiment (its 13-layer model, edge_blur, the generated 300x400
image or ``--image``) and runs in a process of its own, so that its peak memory (resident set
size, which is what TensorFlow on a CPU really uses) is its own and its thread pools can be sized
freshly. ``--quick`` runs the rows in this process to stay fast: its memory column is then the
shared process's peak. Per row: steady steps/s (after the first steps, which trace and compile),
the ratio to the notebook loop, the wall time from the first step until the model is as good as
the notebook's after all its steps (its final MSE), peak memory, and the achieved GFLOP/s next to
a plain matmul's, measured in the same run. Keras ``fit`` is called as a user would for many steps
on one image: a repeated dataset with ``steps_per_epoch``, with and without ``steps_per_execution``.

Rows in separate processes drift by up to ~30% on a busy machine, so a full run also measures the
loops in turns in one process (the notebook's cell, both fits, convlearn's bare and logged step):
the ratios between them, each with its spread over the rounds, and the logger's cost come from
there. Every preset (``experiment=fast``, and on a machine that computes in bfloat16 also with
``trainer.precision=bf16``) also trains with seeds 0-4: its seconds to the notebook's quality per
seed, and that as a fraction of the notebook loop's time.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere, without installing

import convlearn  # noqa: E402, F401  (first: it quiets TensorFlow's start-up lines before Keras loads it)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from convlearn import perf  # noqa: E402
from convlearn.config import build  # noqa: E402
from convlearn.data import Stream, make_batch, shapes  # noqa: E402
from convlearn.logs import hparams_from_config  # noqa: E402
from convlearn.optim import current_lr  # noqa: E402
from convlearn.pipeline import build_experiment, build_model, train_experiment  # noqa: E402
from convlearn.training import compiled_chunk, compiled_step, mse  # noqa: E402

QUICK_DATA = ["debug=tiny"]  # configs/debug/tiny.yaml: the tests' tiny image
QUICK_STEPS = 10  # a whole number of Keras fit executions (steps_per_execution=10)
SCALING_SIZES = [128, 256, 512, 1024, 2048]
QUICK_SCALING_SIZES = [48, 64]
# The quick scaling rows train on files, which debug=tiny's image settings do not apply to; its
# pinned step stays, so that a check of the scaling code does not time XLA at every size.
QUICK_SCALING_TRAINER = ["trainer.jit_compile=false"]
PATCH, PATCH_BATCH = 128, 8
# The memory goal: patch training on an image this large stays under 2 GB.
LARGE_SIZE, QUICK_LARGE_SIZE = 4096, 96
THREAD_SWEEP_STEPS = 100
# The loops measured in turns in one process: rounds of this many steps of each.
IN_TURN_ROUNDS, IN_TURN_CHUNK = 5, 30
FIT_EXECUTION = 10  # steps_per_execution of the second Keras fit loop
# Progress: a row reports every this many steps, on stderr, each line starting with PROGRESS; a
# row's own process writes them there and the parent passes them on as they come.
PROGRESS, PROGRESS_EVERY = "benchmark: ", 100
PER_CALL = f"convlearn bare step, steps_per_call={FIT_EXECUTION}"  # the in-turn loops of K steps per compiled call
LOGGED_PER_CALL = f"convlearn, steps_per_call={FIT_EXECUTION}"
FIT_PER_EXECUTION = f"keras fit steps_per_execution={FIT_EXECUTION}"
FIT_XLA = "keras fit XLA"  # the in-turn fit with jit_compile=True
BF16_BARE = "convlearn bare step bf16"  # the in-turn bare step of the model in bfloat16, where the CPU has it
STEP_KINDS = {True: "XLA", False: "graph"}  # a compiled step by whether XLA compiles it
SEEDS = 5  # seeds 0..4 of every preset, for its time to the notebook's quality
PARTS = ("rows", "turns", "seeds")
PRESETS = {"experiment=fast": ["experiment=fast"]}
BF16 = " bf16"  # a row's name with this added: the same loop with trainer.precision=bf16
NOTEBOOK = "notebook loop"  # the reference every other row is measured against
ROW_FIELDS = ("name", "steps_per_sec", "ratio_vs_notebook", "seconds_to_notebook_quality", "peak_mem_mb")


class StepClock:
    """Seconds from ``start()`` to the end of every step. Passed to the trainer as its logger, it
    times each step and hands the call on to the real logger, if any (whose work is then counted
    in the next step, as a user would see it). With a ``label`` it reports its progress.

    With ``evaluate`` (a run on patches, whose losses are of its patches) it also measures the
    whole image's loss after every step, with the clock stopped: the measurement is the
    benchmark's, not the run's."""

    def __init__(
        self, logger: object | None = None, evaluate: Callable[[], float] | None = None, label: str = ""
    ) -> None:
        self.logger, self.evaluate, self.label = logger, evaluate, label
        self.times: list[float] = []
        self.evaluated: list[float] = []
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
        if self.label and len(self.times) % PROGRESS_EVERY == 0:
            progress(f"{self.label}: {len(self.times)} steps in {self.times[-1]:.1f} s")

    def on_step(self, step: int, scalars: dict[str, float], model: keras.Model) -> None:
        self.tick()
        if self.evaluate is not None:
            paused = time.perf_counter()
            self.evaluated.append(self.evaluate())
            self._start += time.perf_counter() - paused
        if self.logger is not None:
            self.logger.on_step(step, scalars, model)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.logger is not None:
            self.logger.scalars(step, values)


def progress(message: str) -> None:
    """One line on how far a long part has got, on stderr, so that the results on stdout stay clean."""
    print(PROGRESS + message, file=sys.stderr, flush=True)


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
    step = notebook_step(model, img, edges_blurred)
    loss_values = []
    clock.start()
    for _ in range(steps):
        loss_values.append(step())
        clock.tick()
    return [float(v) for v in loss_values]


def notebook_step(model: keras.Model, img: np.ndarray, edges_blurred: np.ndarray) -> Callable[[], np.ndarray]:
    """One step of the notebook's training cell (its own Adam), as a function returning the loss."""
    opt = tf.optimizers.Adam()

    def step() -> np.ndarray:
        with tf.GradientTape() as t:
            prediction = model(img[None, ..., None].astype("float32"))
            loss = tf.reduce_mean((prediction - edges_blurred[None, ..., None]) ** 2)
        grads = t.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss.numpy()

    return step


class _FitClock(keras.callbacks.Callback):
    """Times Keras ``fit``'s steps and keeps their losses, from its batch-end calls.

    ``fit`` reports the epoch's running mean loss, so a step's own loss is the change of the
    running total. With ``steps_per_execution`` K the callback runs once per K steps: each of
    them gets the call's time and the mean loss of the K (for a falling loss, no lower than the
    last one's: its time to a quality is never early)."""

    def __init__(self, clock: StepClock) -> None:
        super().__init__()
        self.clock, self.losses = clock, []
        self._total, self._done = 0.0, 0

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.clock.start()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        total = float(logs["loss"]) * (batch + 1)
        count = batch + 1 - self._done
        self.clock.tick()
        self.clock.times.extend([self.clock.times[-1]] * (count - 1))
        self.losses.extend([(total - self._total) / count] * count)
        self._total, self._done = total, batch + 1


class _LastStep(keras.callbacks.Callback):
    """When ``fit``'s last step ended. A ``fit`` call on a ``tf.data`` dataset can return seconds
    after that: ending the epoch's iterator waits for tf.data's autotuning thread, whose wake-up
    period doubles from 10 ms (calls returned 5.12 and 10.24 s after they began, whatever their
    steps took; with autotuning off, at once). A user pays that once per ``fit`` call, for a whole
    training; the turns call ``fit`` once per round, so they time a round to its last step."""

    at = 0.0

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.at = time.perf_counter()


def compile_for_fit(
    model: keras.Model, inputs: tf.Tensor, targets: tf.Tensor, steps_per_execution: int,
    jit_compile: bool | str = "auto",
) -> tf.data.Dataset:
    """Compile the notebook's ``model`` for ``fit`` (Adam with Keras' defaults, MSE) and return the
    repeated one-image dataset a Keras user would train it on for many steps. ``fit`` is called
    with ``shuffle=False``: it shuffles no dataset anyway and only warns that it does not."""
    model.compile(optimizer=keras.optimizers.Adam(), loss="mse", steps_per_execution=steps_per_execution,
                  jit_compile=jit_compile)
    return tf.data.Dataset.from_tensors((inputs, targets)).repeat()


def compose_config(overrides: Sequence[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def run_row(spec: dict) -> dict:
    """Train one row's loop and return its per-step losses and times (the parent summarises).

    ``quality[k]``: the training MSE after ``k + 1`` updates (the next step's loss, and after the
    last step a final evaluation), so it can be compared with the notebook's final MSE; for a
    preset on patches, the whole image's (the preview's) MSE after each step. Kind
    ``in_turn`` returns :func:`_in_turns`'s numbers instead."""
    perf.set_threads(spec.get("threads"))
    experiment = build_experiment(compose_config(spec["overrides"]))
    trainer, images, target = experiment.trainer, experiment.images, experiment.target
    patches = spec["kind"] == "trainer" and isinstance(experiment.feed.train, Stream)
    clock = StepClock(evaluate=_whole_image_loss(experiment) if patches else None, label=spec["name"])
    if spec["kind"] == "in_turn":
        return _in_turns(experiment, spec["rounds"], spec["chunk"], spec.get("bf16", False))
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
            dataset = compile_for_fit(model, batch.inputs, batch.targets, spec.get("steps_per_execution", 1))
            timer = _FitClock(clock)
            model.fit(dataset, epochs=1, steps_per_epoch=trainer.steps, verbose=0, callbacks=[timer], shuffle=False)
            losses = timer.losses
        train, preview = batch, batch
    else:
        model, optimizer = experiment.model, experiment.optimizer
        train, preview = experiment.feed.train, experiment.feed.preview
        if spec["kind"] == "bare":
            jit_compile = trainer.uses_xla(model, optimizer, train)
            losses = _bare_loop(model, optimizer, train, trainer.steps, clock, jit_compile)
        else:
            with tempfile.TemporaryDirectory() as run_dir:
                history = train_experiment(experiment, Path(run_dir), watch=clock.watch).history
            losses, jit_compile = history.losses, history.jit_compile
    final = mse(model, preview)
    inputs = train.inputs if hasattr(train, "inputs") else next(iter(train))[0]
    return {
        "quality": clock.evaluated if patches else [*losses[1:], final],
        "times": list(clock.times),
        "target_variance": float(np.var(preview.targets.numpy(), dtype=np.float64)),
        "flops_per_step": perf.training_flops(model, tuple(inputs.shape)),
        "pixels_per_step": int(np.prod(inputs.shape[:3])),
        "peak_mem_mb": perf.peak_rss_mb(),
        **({"jit_compile": jit_compile} if spec["kind"] in ("bare", "trainer") else {}),
        "threads": [
            tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads(),
        ],
    }


def _whole_image_loss(experiment: object) -> Callable[[], float]:
    """The model's MSE on the preview (the whole image, up to 512x512), compiled once."""
    loss = tf.function(lambda: experiment.feed.preview.loss(experiment.model))
    return lambda: float(loss())


def _bare_loop(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, train: object, steps: int, clock: StepClock,
    jit_compile: bool,
) -> list[float]:
    """Only the trainer's compiled step, back to back: the practical limit for this model here."""
    step_fn = compiled_step(model, optimizer, train.crops, jit_compile)
    feed = iter(train) if not hasattr(train, "inputs") else None
    losses = []
    clock.start()
    for _ in range(steps):
        inputs, targets = next(feed) if feed is not None else (train.inputs, train.targets)
        losses.append(step_fn(inputs, targets)[0])
        clock.tick()
    return [float(v) for v in losses]


def _in_turns(experiment: object, rounds: int, chunk: int, bf16: bool = False) -> dict:
    """Every loop's speed in one process, in turns: per round ``chunk`` steps of each loop (in the
    :func:`turn_order` of that round), so that the machine's drift (rows in separate processes
    differ by up to ~30%) falls on all of them alike. The loops: the notebook's cell; Keras ``fit``
    on a repeated dataset, one call of ``chunk`` steps per round (timed to its last step), with one
    step per execution and with ``FIT_EXECUTION``, and compiled with XLA (``jit_compile=True``); the
    trainer's compiled step
    (the one it trains with: ``trainer.jit_compile``, for ``auto`` its pick on this machine) bare,
    bare with ``FIT_EXECUTION`` steps per compiled call (``trainer.steps_per_call``: one host sync
    per call), followed by the logger's ``on_step`` as the trainer calls it (pictures at the
    logger's own ``image_every``), and with both; and the other compiled step (XLA or the graph)
    with the logger; with ``bf16``, the bare step of a twin of the model built under
    ``trainer.precision=bf16`` (its own compiled step, as ``trainer.jit_compile`` picks it). The
    notebook's cell and the fits have their own models, traced before the clock runs. Returns each
    loop's steps/s per round and which step the trainer's is."""
    cfg, train = experiment.cfg, experiment.feed.train
    model, optimizer = experiment.model, experiment.optimizer
    xla = experiment.trainer.uses_xla(model, optimizer, train)
    batch = make_batch(experiment.images.train[0][..., 0], experiment.target, notebook_model())
    image, target_image = experiment.images.train[0][..., 0], batch.targets.numpy()[0, ..., 0]
    step_fn = compiled_step(model, optimizer, train.crops, jit_compile=xla)
    other_step = compiled_step(model, optimizer, train.crops, jit_compile=not xla)
    chunk_fn = compiled_chunk(step_fn, optimizer, FIT_EXECUTION, same_batch=True, stop_on_nonfinite=True,
                              jit_compile=xla)
    twin_step = _bf16_step(experiment) if bf16 else None
    make_logger = build(cfg, "logger")
    with tempfile.TemporaryDirectory() as log_dir, make_logger(
        log_dir=Path(log_dir), batch=experiment.feed.preview, config_text=OmegaConf.to_yaml(cfg),
        hparams=hparams_from_config(cfg), target_kernel=experiment.target.linear_kernel(),
    ) as logger:
        # Each logged loop numbers its own steps, as a run of its own would: every one of them draws
        # pictures at the logger's rate (after its step 0 and every image_every steps).
        logged_steps: dict[str, int] = collections.Counter()

        def log_step(loop: str, loss: float, grad_norm: float, learning_rate: float) -> None:
            """One step of ``loop`` to the logger, numbered on from that loop's last logged step."""
            scalars = {"loss": loss, "grad_norm": grad_norm, "learning_rate": learning_rate}
            logger.on_step(logged_steps[loop], scalars, model)
            logged_steps[loop] += 1

        def convlearn(steps: int, log: str | None, step: Callable = step_fn) -> None:
            for _ in range(steps):
                loss, grad_norm, _ = step(train.inputs, train.targets)
                loss, grad_norm = float(loss), float(grad_norm)  # waits for the step, as the trainer does
                if log:
                    log_step(log, loss, grad_norm, current_lr(optimizer))

        def convlearn_per_call(steps: int, log: str | None) -> None:
            for first in range(0, steps, FIT_EXECUTION):
                count = min(FIT_EXECUTION, steps - first)
                # One sync per call: the call's losses, gradient norms and rates come back together.
                losses, grad_norms, _, lrs = (v.numpy() for v in chunk_fn([(train.inputs, train.targets)] * count))
                if log:
                    for loss, grad_norm, lr in zip(losses, grad_norms, lrs):
                        log_step(log, float(loss), float(grad_norm), float(lr))

        fit_xla: dict[bool | str, bool] = {}  # asked for -> what Keras compiled with (it may refuse XLA)

        def fit(per_execution: int, jit_compile: bool | str = "auto") -> Callable[[int], float]:
            fit_net = notebook_model()
            dataset = compile_for_fit(fit_net, batch.inputs, batch.targets, per_execution, jit_compile)
            fit_xla[jit_compile] = bool(fit_net.jit_compile)
            last_step = _LastStep()

            def run(steps: int) -> float:
                fit_net.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[last_step], shuffle=False)
                return last_step.at

            return run

        def notebook(steps: int) -> None:
            for _ in range(steps):
                notebook_cell()

        keras.utils.set_random_seed(experiment.trainer.seed)
        notebook_cell = notebook_step(notebook_model(), image, target_image)
        loops = {
            NOTEBOOK: notebook,
            "keras fit": fit(1),
            FIT_PER_EXECUTION: fit(FIT_EXECUTION),
            "convlearn bare step": lambda steps: convlearn(steps, log=None),
            PER_CALL: lambda steps: convlearn_per_call(steps, log=None),
            "convlearn": lambda steps: convlearn(steps, log="convlearn"),
            LOGGED_PER_CALL: lambda steps: convlearn_per_call(steps, log=LOGGED_PER_CALL),
            # XLA, asked for explicitly: Keras resolves fit's jit_compile="auto" to no XLA without an
            # accelerator.
            FIT_XLA: fit(1, jit_compile=True),
            other_loop(xla): lambda steps: convlearn(steps, log=other_loop(xla), step=other_step),
            **({BF16_BARE: lambda steps: convlearn(steps, log=None, step=twin_step)} if twin_step else {}),
        }
        logger.pictures(0, model)
        for run in loops.values():
            run(FIT_EXECUTION)  # traced and compiled outside the clock
        rates: dict[str, list[float]] = {name: [] for name in loops}
        for done in range(1, rounds + 1):
            for name in turn_order(list(loops), done - 1):
                run = loops[name]
                start = time.perf_counter()
                finished = run(chunk)  # a fit's round ends at its last step (see _LastStep)
                rates[name].append(chunk / ((finished or time.perf_counter()) - start))
            fastest = fastest_fit(rates)
            progress(f"in turns: round {done}/{rounds}: convlearn {rates['convlearn'][-1]:.2f}, the fastest keras fit "
                     f"so far ({fastest}) {rates[fastest][-1]:.2f}, the notebook loop {rates[NOTEBOOK][-1]:.2f} "
                     "steps/s")
    return {"rounds": rounds, "steps_per_round": chunk, "convlearn_step": STEP_KINDS[xla],
            "keras_fit_xla": fit_xla[True], "steps_per_sec": rates}


def turn_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order the loops run in round ``round_index`` (from 0): ``names`` rotated by one place per
    round, so that over as many rounds as loops each loop runs once in every position. In a fixed
    order a loop would always follow the same one (the fits the notebook's eager loop, say) and
    share whatever that one leaves behind in the caches and the allocator."""
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


def _bf16_step(experiment: object) -> Callable:
    """The compiled step of a twin of ``experiment``'s model and optimizer built as
    ``trainer.precision=bf16`` builds them (bfloat16 layers, the last in float32), for the turns."""
    with dtype_policy_kept():  # the other loops' models stay float32
        perf.set_precision("bf16")
        model = build_model(experiment.cfg, experiment.target, experiment.images)
    optimizer, train = build(experiment.cfg, "optimizer"), experiment.feed.train
    xla = experiment.trainer.uses_xla(model, optimizer, train)
    return compiled_step(model, optimizer, train.crops, jit_compile=xla)


def other_loop(xla: bool) -> str:
    """The in-turn loop of the logged step that the trainer does not train with (``xla``: its own is XLA's)."""
    return f"convlearn, {STEP_KINDS[not xla]} step"


def spread(values: Sequence[float]) -> dict:
    """The median and the range of a measurement over rounds."""
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def fastest_fit(rates: Mapping[str, Sequence[float]], names: Sequence[str] | None = None) -> str:
    """The Keras fit loop (of ``names``, default all) with the highest median steps/s over the
    rounds: one loop that convlearn is held against in every round. The fastest of the fits in each
    round instead would be the best of several noisy draws: where two fits run alike (``fit`` with
    and without ``steps_per_execution`` on a CPU), it picks the noise upward, by several percent."""
    fits = names or [name for name in rates if name.startswith("keras fit")]
    return max(fits, key=lambda name: float(np.median(rates[name])))


def turns_png(out: Path) -> Path:
    """Where the picture of the turns goes: beside the JSON ``out``, ``bench.json`` -> ``bench.turns.png``."""
    return out.with_name(f"{out.stem}.turns.png")


def write_turns_png(in_turn: dict, path: Path) -> None:
    """The turns as a picture, so that the spread behind each median is seen at a glance: every
    loop's steps/s round by round, and convlearn (with logging) against the fastest fit in each
    round, with parity and the median marked."""
    rates = {name: np.asarray(values) for name, values in in_turn["steps_per_sec_per_round"].items()}
    rounds = np.arange(1, in_turn["rounds"] + 1)
    figure = Figure(figsize=(13, 5.5), layout="constrained")
    speeds, against = figure.subplots(1, 2, width_ratios=[3, 2])
    colours = {}
    for name, values in rates.items():
        (line,) = speeds.plot(rounds, values, marker="o", label=name, linewidth=2.5 if name == "convlearn" else 1)
        colours[name] = line.get_color()
    colour = colours["convlearn"]  # the same colour in the ratio panel
    speeds.set(title=f"loops in turns: steps/s in each round of {in_turn['steps_per_round']} steps", xlabel="round",
               ylabel="steps/s", xticks=rounds)
    speeds.legend(fontsize="small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    ratio = in_turn["ratios"]["convlearn vs the fastest keras fit"]
    against.plot(rounds, rates["convlearn"] / rates[in_turn["fastest_fit"]], marker="o", linewidth=2.5, color=colour)
    against.axhline(1.0, color="gray", linestyle="--", label="parity")
    against.axhline(ratio["median"], color=colour, linestyle=":", label=f"median {ratio['median']:.3f}x")
    against.set(title=f"convlearn with logging / the fastest keras fit\n({in_turn['fastest_fit']})", xlabel="round",
                ylabel="ratio", xticks=rounds)
    against.legend(fontsize="small")
    figure.savefig(path, dpi=100)


def in_turn_ratios(measured: dict) -> dict:
    """Ratios between loops, one per round (both measured in that round), as median and range;
    the logger's cost (its share of the logged step's time) likewise."""
    rates = {name: np.array(values) for name, values in measured["steps_per_sec"].items()}
    fastest_name = fastest_fit(rates)
    fastest = rates[fastest_name]
    ratios = {f"{name} vs {NOTEBOOK}": spread(values / rates[NOTEBOOK]) for name, values in rates.items()
              if name != NOTEBOOK}
    xla = measured["convlearn_step"] == STEP_KINDS[True]
    other = other_loop(xla)
    ratios["convlearn vs the fastest keras fit"] = spread(rates["convlearn"] / fastest)
    ratios[f"{LOGGED_PER_CALL} vs the fastest keras fit"] = spread(rates[LOGGED_PER_CALL] / fastest)
    ratios[f"{other} vs the fastest keras fit"] = spread(rates[other] / fastest)
    # The compiled steps alone: convlearn's bare step against the faster fit that compiles its kind of step.
    same_kind = rates[fastest_fit(rates, [FIT_XLA] if xla else ["keras fit", FIT_PER_EXECUTION])]
    ratios["convlearn bare step vs the keras fit of its kind"] = spread(rates["convlearn bare step"] / same_kind)
    ratios[f"{PER_CALL} vs one step per call"] = spread(rates[PER_CALL] / rates["convlearn bare step"])
    ratios[f"{LOGGED_PER_CALL} vs one step per call"] = spread(rates[LOGGED_PER_CALL] / rates["convlearn"])
    if BF16_BARE in rates:
        ratios[f"{BF16_BARE} vs float32"] = spread(rates[BF16_BARE] / rates["convlearn bare step"])
    bare, logged = rates["convlearn bare step"], rates["convlearn"]
    logging = {"rounds": measured["rounds"], "steps_per_round": measured["steps_per_round"],
               "bare_steps_per_sec": float(np.mean(bare)), "logged_steps_per_sec": float(np.mean(logged)),
               "overhead": float(1 - np.mean(logged) / np.mean(bare)), "overhead_per_round": spread(1 - logged / bare)}
    return {**measured, "steps_per_sec": {name: spread(values) for name, values in rates.items()},
            "steps_per_sec_per_round": {name: values.tolist() for name, values in rates.items()}, "ratios": ratios,
            "fastest_fit": fastest_name, "logging": logging}


@contextlib.contextmanager
def dtype_policy_kept() -> Iterator[None]:
    """Keras' global dtype policy as it was before, whatever the block sets (bf16 sets it process-wide)."""
    policy = keras.config.dtype_policy()
    try:
        yield
    finally:
        keras.config.set_dtype_policy(policy)


def run_isolated(spec: dict, isolated: bool) -> dict:
    """``run_row`` in a fresh Python process (its own memory and thread pools), or here."""
    if not isolated:
        with dtype_policy_kept():  # a bf16 row must not leave its policy to the rows after it here
            return run_row(spec)
    returncode, stdout, stderr = run_child([sys.executable, __file__, "--row", json.dumps(spec)])
    if returncode != 0:
        raise SystemExit(f"benchmark: row {spec['name']!r} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def run_child(command: Sequence[str]) -> tuple[int, str, str]:
    """Run ``command`` and return its exit status, stdout and stderr; its progress lines (those
    starting with ``PROGRESS``) go on to this process's stderr as they come, the rest of its stderr
    (TensorFlow's start-up lines) only into the returned text."""
    with tempfile.TemporaryFile("w+") as out:
        child = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True)
        errors = []
        for line in child.stderr:
            if line.startswith(PROGRESS):
                print(line, end="", file=sys.stderr, flush=True)
            else:
                errors.append(line)
        child.wait()
        out.seek(0)
        return child.returncode, out.read(), "".join(errors)


def steady_rate(times: Sequence[float]) -> float:
    """Steps per second after the first steps (which trace and compile; a fifth, at most 10, and
    the rest of a group of steps timed together)."""
    warmup = max(1, min(10, len(times) // 5))
    while warmup < len(times) and times[warmup] == times[warmup - 1]:
        warmup += 1  # steps timed together (fit's steps_per_execution) end together
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
        **({"jit_compile": result["jit_compile"]} if "jit_compile" in result else {}),
    }


def main_rows(
    data: list[str], steps: int, bf16: bool, quick: bool, only: Sequence[str] | None = None
) -> list[tuple[str, dict]]:
    """The loops compared; bf16 rows only where the CPU computes in bfloat16; with ``only``, just
    those and the notebook loop they are measured against. The preset keeps its own number of
    steps, except in a quick run."""
    run = [*data, f"trainer.steps={steps}", "trainer.progress=false"]
    trainer = {"kind": "trainer", "overrides": run}
    presets = [(name, {"kind": "trainer", "overrides": [*data, *preset, "trainer.progress=false",
                                                         *([f"trainer.steps={steps}"] if quick else [])]})
               for name, preset in PRESETS.items()]
    rows = [
        (NOTEBOOK, {"kind": "notebook", "overrides": run}),
        ("keras fit", {"kind": "keras_fit", "overrides": run}),
        (FIT_PER_EXECUTION,
         {"kind": "keras_fit", "steps_per_execution": FIT_EXECUTION, "overrides": run}),
        ("convlearn", trainer),
        ("convlearn bare step", {"kind": "bare", "overrides": run}),
        ("convlearn XLA", {"kind": "trainer", "overrides": [*run, "trainer.jit_compile=true"]}),
        (f"convlearn{BF16}", bf16_twin(trainer)),
        *presets,
        *[(name + BF16, bf16_twin(spec)) for name, spec in presets],
    ]
    rows = [(name, spec) for name, spec in rows if bf16 or not name.endswith(BF16)]
    if only:
        unknown = sorted(set(only) - {name for name, _ in rows})
        if unknown:
            known = ", ".join(name for name, _ in rows)
            raise SystemExit(f"benchmark: no row {', '.join(map(repr, unknown))} here; the rows are: {known}")
        rows = [(name, spec) for name, spec in rows if name == NOTEBOOK or name in only]
    return rows


def bf16_twin(spec: dict) -> dict:
    """A row's spec trained with ``trainer.precision=bf16``."""
    return {**spec, "overrides": [*spec["overrides"], "trainer.precision=bf16"]}


def seeded(rows: Sequence[tuple[str, dict]]) -> list[str]:
    """The rows whose seeds the seeds part times: every preset, and its bf16 twin where there is one."""
    return [name for name, _ in rows if name.removesuffix(BF16) in PRESETS]


def thread_settings(cores: int, quick: bool) -> list[list[int]]:
    """[intra, inter] pool sizes to try; [0, 0] is TensorFlow's default."""
    if quick:
        return [[1, 1]]
    intra = sorted({1, max(1, cores // 2), cores})
    return [[0, 0], *[[i, j] for i in intra for j in (1, 2)]]


def scaling_rows(
    sizes: Sequence[int], large: int, steps: int, folder: Path, settings: Sequence[str] = ()
) -> list[tuple[dict, dict]]:
    """Full-frame and patch training on generated square images; patches also on a ``large`` one.
    ``settings``: more overrides for every row."""
    rows = []
    for size in [*sizes, large]:
        path = folder / f"shapes_{size}.npy"
        # The notebook's picture scaled up: as many shapes, as large relative to the image.
        np.save(path, shapes(size, size, min_size=max(2, size // 50), max_size=max(4, size // 10)))
        common = [f"trainer.steps={steps}", "trainer.progress=false", "data=file", f"data.path={path}", *settings]
        patch = min(PATCH, size // 2)
        if size != large:
            rows.append(({"size": size, "mode": "full frame"}, {"kind": "bare", "overrides": common}))
        rows.append((
            {"size": size, "mode": f"patches {PATCH_BATCH}x{patch}x{patch}"},
            {"kind": "bare", "overrides": [*common, f"data.patch_size={patch}", f"data.batch_size={PATCH_BATCH}"]},
        ))
    return rows


def machine() -> dict:
    device = perf.training_device()
    return {
        "cpu": perf.cpu_name(),
        "device": device.describe(),
        "cores": os.cpu_count(),
        "bf16": perf.precision_refusal("bf16", device) is None,  # a GPU from Ampere on, or a CPU with bf16
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        # Every loop here, the notebook's and fit's too, runs with the CPU allocator convlearn sets up.
        "tf_cpu_allocator_use_bfc": os.environ.get("TF_CPU_ALLOCATOR_USE_BFC"),
    }


def benchmark(args: argparse.Namespace) -> dict:
    isolated = not args.quick
    if args.image:
        data = ["data=file", f"data.path={Path(args.image).resolve()}"]
    else:
        data = QUICK_DATA if args.quick else []
    steps = args.steps or (QUICK_STEPS if args.quick else 500)
    args.seeds = args.seeds or (1 if args.quick else SEEDS)
    info = machine()
    parts = set(args.parts or (["rows"] if args.rows else PARTS))
    every = main_rows(data, steps, info["bf16"], args.quick)
    # The notebook loop is every row's reference; the seeds part also needs its presets' rows.
    wanted = set()
    if "rows" in parts:
        wanted |= {name for name, _ in main_rows(data, steps, info["bf16"], args.quick, args.rows)}
    wanted |= {NOTEBOOK, *seeded(every)} if "seeds" in parts else set()
    loops = [(name, spec) for name, spec in every if name in wanted]
    matmul = perf.matmul_gflops(256 if args.quick else 1024)
    report: dict = {
        "machine": {**info, "matmul_gflops_float32": matmul}, "image": args.image or "generated", "steps": steps
    }
    if info["bf16"]:
        report["machine"]["matmul_gflops_bf16"] = perf.matmul_gflops(256 if args.quick else 1024, dtype=tf.bfloat16)

    if "turns" in parts:
        # First: in one process (--quick) the trainer's rows turn TensorFlow's op determinism on for
        # good, and under it Keras quietly runs the turns' XLA fit without XLA.
        report["in_turn"] = in_turns(data, args.quick, isolated, args.rounds, info["bf16"])
        report["logging"] = report["in_turn"].pop("logging")
    rows, notebook = [], None
    for name, spec in loops:
        row = summarise(name, run_isolated({"name": name, **spec}, isolated), notebook, matmul)
        if notebook is None:
            notebook = {"rate": row["steps_per_sec"], "rel_mse": row["final_rel_mse"],
                        "total_seconds": row["total_seconds"]}
            report["notebook_final_rel_mse"] = row["final_rel_mse"]
        rows.append(row)
        print(_line(row), flush=True)
    report["rows"] = rows
    if "seeds" in parts:
        report["presets"] = {
            name: preset_seeds(name, dict(loops)[name], rows, notebook, args.seeds, isolated, matmul)
            for name in seeded(loops)
        }
    if args.threads:
        report["threads"] = thread_sweep(data, steps, args.quick)
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


def in_turns(data: list[str], quick: bool, isolated: bool, rounds: int | None = None, bf16: bool = False) -> dict:
    """The loops' speeds measured in turns in one process (see :func:`_in_turns`), and their ratios."""
    default_rounds, chunk = (2, QUICK_STEPS // 2) if quick else (IN_TURN_ROUNDS, IN_TURN_CHUNK)
    rounds = rounds or default_rounds
    # Without TensorFlow's op determinism (the trainer's default): while it is on, Keras quietly runs
    # fit asked for jit_compile=True without XLA. The turns measure speed, not reproducibility.
    spec = {"name": "in turns", "kind": "in_turn", "rounds": rounds, "chunk": chunk, "bf16": bf16,
            "overrides": [*data, "trainer.progress=false", "trainer.deterministic=false"]}
    measured = in_turn_ratios(run_isolated(spec, isolated))
    print(f"in turns: convlearn trains with the {measured['convlearn_step']} step here", flush=True)
    if not measured["keras_fit_xla"]:
        print(f"in turns: Keras compiled '{FIT_XLA}' without XLA here (TensorFlow's op determinism was on in "
              "this process)", flush=True)
    for name, ratio in measured["ratios"].items():
        print(f"in turns: {name} {ratio['median']:.2f}x (rounds {ratio['min']:.2f}-{ratio['max']:.2f}x)", flush=True)
    cost = measured["logging"]
    print(f"logging: {100 * cost['overhead']:.1f}% below the bare step ({cost['logged_steps_per_sec']:.2f} against "
          f"{cost['bare_steps_per_sec']:.2f} steps/s, {rounds} rounds of {chunk} steps each, in turns)", flush=True)
    return measured


def preset_seeds(
    name: str, spec: dict, rows: list[dict], notebook: dict, seeds: int, isolated: bool, matmul: float
) -> dict:
    """A preset's seconds to the notebook's quality (the notebook loop's final rel_mse, seed 0) for
    seeds 0..``seeds - 1``, each in its own process, and as a fraction of the notebook loop's
    time for all its steps. Seed 0 is the preset's row, when the run has it."""
    found = {0: row for row in rows if row["name"] == name}
    for seed in range(seeds):
        if seed not in found:
            result = run_isolated({**spec, "name": name, "overrides": [*spec["overrides"], f"trainer.seed={seed}"]},
                                  isolated)
            found[seed] = summarise(f"{name} seed {seed}", result, notebook, matmul)
    reached = [found[seed]["seconds_to_notebook_quality"] for seed in range(seeds)]
    fractions = [None if r is None else r / notebook["total_seconds"] for r in reached]
    print(f"{name}: to the notebook's quality in " + ", ".join(
        "never" if f is None else f"{100 * f:.1f}%" for f in fractions) + " of the notebook loop's time, seeds 0-"
        f"{seeds - 1}", flush=True)
    return {"seeds": list(range(seeds)), "seconds_to_notebook_quality": reached,
            "fraction_of_notebook_time": fractions,
            "final_rel_mse": [found[seed]["final_rel_mse"] for seed in range(seeds)]}


def scaling(quick: bool, isolated: bool, matmul: float) -> list[dict]:
    table = []
    with tempfile.TemporaryDirectory() as folder:
        sizes, large = (QUICK_SCALING_SIZES, QUICK_LARGE_SIZE) if quick else (SCALING_SIZES, LARGE_SIZE)
        settings = QUICK_SCALING_TRAINER if quick else []
        for labels, spec in scaling_rows(sizes, large, QUICK_STEPS if quick else 20, Path(folder), settings):
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
        help="only these rows, comma-separated (e.g. 'experiment=fast'), next to the notebook loop",
    )
    parser.add_argument(
        "--seeds", type=int, help=f"seeds per preset for its time to quality (default {SEEDS}, --quick 1)"
    )
    parser.add_argument("--threads", action="store_true", help="also sweep TensorFlow's thread pool sizes")
    parser.add_argument(
        "--parts", type=lambda text: text.split(","),
        help="what to run, comma-separated: rows, turns (the loops in turns in one process), seeds (the presets' "
             "seeds, with the notebook loop); default all three, or rows with --rows",
    )
    parser.add_argument("--rounds", type=int, help=f"rounds of the loops in turns (default {IN_TURN_ROUNDS})")
    parser.add_argument(
        "--out", type=Path, help="write the results as JSON here (and the turns drawn in <name>.turns.png beside it)"
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row, print its JSON
    args = parser.parse_args(argv)
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))))
        return 0
    report = benchmark(args)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))
        if "in_turn" in report:
            picture = turns_png(args.out)
            write_turns_png(report["in_turn"], picture)
            print(f"in turns: drawn in {picture}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
