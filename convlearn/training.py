"""The trainer: fit a model's kernels to a target with a compiled GradientTape step.

This is the notebook's loop (forward, MSE, gradients, optimizer step) with the step compiled by
``tf.function`` and the bookkeeping around it: seeding, progress, per-step losses, hooks for
the logger, a guard against non-finite losses, checkpoints, resuming, and Ctrl-C. The loss
compares only the pixels the model and the target both cover (see :mod:`convlearn.geometry`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm  # a widget in a notebook, text in a terminal

from convlearn import distribute, step_cache
from convlearn.checkpoints import Checkpoints
from convlearn.data import Batch, compared
from convlearn.errors import ConvlearnError
from convlearn.geometry import Crops
from convlearn.initialization import unit_variance
from convlearn.optim import apply_if_finite, current_lr
from convlearn.perf import fastest_step, loss_scaled

log = logging.getLogger("convlearn")

STEP_NAMES = {True: "XLA", False: "the graph"}  # the compiled steps, by whether XLA compiles them


@dataclass
class History:
    """What happened during training: one loss and gradient norm per step, and how it ended."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (steps done, loss)
    wall_seconds: float = 0.0
    status: str = "completed"  # or "failed" (non-finite loss) or "interrupted" (Ctrl-C)
    stopped_step: int | None = None
    reason: str | None = None
    skipped_steps: list[int] = field(default_factory=list)
    checkpoint: str | None = None
    jit_compile: bool | None = None  # whether XLA compiled the steps (what trainer.jit_compile=auto picked)
    start_step: int = 0  # steps already done when this process started training (a resumed run)

    def stop(self, status: str, step: int, reason: str) -> None:
        self.status, self.stopped_step, self.reason = status, step, reason

    def outcome(self) -> dict:
        """How the run ended, for ``metrics.json``: the status, and where and why it stopped."""
        outcome: dict = {"status": self.status}
        if self.status != "completed":
            outcome.update(stopped_step=self.stopped_step, reason=self.reason)
        if self.skipped_steps:
            outcome["skipped_steps"] = self.skipped_steps
        if self.checkpoint:
            outcome["checkpoint"] = self.checkpoint
        return outcome

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def steps_per_sec(self) -> float:
        """Steps trained in this process over their time (a resumed run's earlier steps took
        other time); NaN (null in metrics.json) when this process trained none."""
        trained = self.steps - self.start_step
        return trained / self.wall_seconds if trained > 0 and self.wall_seconds > 0 else math.nan


class StepLogger(Protocol):
    """What the trainer tells a logger; the logger decides what to record and when."""

    def on_step(self, step: int, scalars: dict[str, float], model: keras.Model) -> None: ...

    def scalars(self, step: int, values: dict[str, float]) -> None: ...


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic`` pick deterministic kernels."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


@dataclass
class Run:
    """One :meth:`Trainer.fit` in progress: what it trains, the step it runs, where its batches
    come from, and where each step's results go."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    step_fn: Callable
    feed: Iterator[tuple[tf.Tensor, tf.Tensor]]
    history: History
    logger: StepLogger | None
    validation: Sequence[Batch]
    checkpoints: Checkpoints | None


class Trainer:
    """Runs ``steps`` optimizer steps of MSE on one batch (the notebook's full-frame training).

    With a checkpoint folder it saves every ``checkpoint_every`` steps (0: only when it stops),
    when it stops, and at the end; ``resume`` continues from the newest checkpoint there. A
    non-finite loss or gradient never reaches the weights: ``on_nonfinite='stop'`` ends the run
    with the weights that step started from, ``'skip'`` records the step and goes on.

    With ``strategy="mirrored"`` every step runs data-parallel on all GPUs (or, without GPUs, all
    logical CPU devices); the model and optimizer must then be built inside :meth:`scope`.
    ``jit_compile`` compiles the single-device step with XLA, which fuses the elementwise work
    around the convolutions; whether that is faster depends on the CPU, the model and the batch,
    so ``"auto"`` (the config's default) trains with the step that was faster for this workload on
    this machine: timed on the first batch of its first run (:func:`convlearn.perf.fastest_step`),
    then remembered (:mod:`convlearn.step_cache`), so that every run of one seed gives one result.
    ``init="lsuv"`` rescales the model's kernels on the first training batch before the first
    step (:func:`convlearn.initialization.unit_variance`); ``"keras"`` keeps the layers' own.
    ``steps_per_call`` runs that many steps in one compiled call (:func:`compiled_chunk`), so the
    host waits for the device once per call instead of after every step; a call ends early at a
    step the logger draws pictures after, validation, or a checkpoint, so they see that step's model.
    ``precision`` and ``threads`` are settings of the whole process, fixed before anything is
    built: :func:`convlearn.perf.configure_tensorflow` applies them (the pipeline does, first).
    """

    def __init__(
        self,
        steps: int = 500,
        seed: int = 0,
        progress: bool = True,
        deterministic: bool = True,
        val_every: int = 50,
        on_nonfinite: Literal["stop", "skip"] = "stop",
        checkpoint_every: int = 100,
        keep_checkpoints: int = 2,
        resume: bool = False,
        strategy: str | None = None,
        precision: Literal["float32", "bf16", "fp16"] = "float32",
        threads: tuple[int, int] | None = None,
        jit_compile: bool | Literal["auto"] = False,
        init: Literal["keras", "lsuv"] = "keras",
        steps_per_call: int = 1,
    ) -> None:
        self.steps = steps
        self.val_every = max(1, val_every)
        self.seed = seed
        self.progress = progress
        self.deterministic = deterministic
        self.on_nonfinite = on_nonfinite
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.resume = resume
        self.jit_compile = jit_compile
        self.init = init
        self.steps_per_call = steps_per_call
        self.precision, self.threads = precision, threads
        # For data pipelines that draw at random: checkpointed with the model, so a resumed run
        # draws what the uninterrupted run would have drawn.
        self.rng = tf.random.Generator.from_seed(seed)

        self.distribution = distribute.make_strategy(strategy)
        if jit_compile is True and self.distribution is not None:
            raise ConvlearnError(
                "trainer.jit_compile: XLA compiles the single-device step only; drop trainer.strategy or jit_compile"
            )
        if steps_per_call < 1 or (steps_per_call > 1 and self.distribution is not None):
            raise ConvlearnError(
                f"trainer.steps_per_call: must be >= 1, and 1 with trainer.strategy, got {steps_per_call}"
            )
        if precision == "fp16" and self.distribution is not None:
            raise ConvlearnError(
                "trainer.precision: fp16's loss scaling runs in the single-device step only; drop trainer.strategy "
                "or use bf16"
            )

    def scope(self) -> contextlib.AbstractContextManager:
        """Where model and optimizer variables must be created for this trainer's devices."""
        return self.distribution.scope() if self.distribution is not None else contextlib.nullcontext()

    def fit(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        batch: Batch | Iterable,
        logger: StepLogger | None = None,
        validation: Sequence[Batch] = (),
        checkpoint_dir: Path | None = None,
    ) -> History:
        """``batch``: a :class:`Batch` (full frame) or anything with ``crops`` that iterates over
        ``(inputs, targets)`` batches (random patches). With ``validation`` batches, their mean MSE
        is recorded every ``val_every`` steps and at the end, and logged as ``val_loss``. With
        ``checkpoint_dir``, checkpoints go there and ``resume`` starts from the newest one."""
        run = self._start(model, optimizer, batch, logger, validation, checkpoint_dir)
        history = run.history
        chunk = compiled_chunk(
            run.step_fn, optimizer, self.steps_per_call, isinstance(batch, Batch),
            stop_on_nonfinite=self.on_nonfinite == "stop", jit_compile=bool(history.jit_compile),
        )
        bar = tqdm(
            range(history.steps, self.steps), initial=history.steps, total=self.steps,
            desc="training", disable=not self.progress, mininterval=0.5, leave=False,
        )
        stops = self._stops(bool(validation), checkpoint_dir is not None, getattr(logger, "image_every", 0))
        start = time.perf_counter()
        calls = _until_signal(self._calls(history.steps, stops), history)
        for first_step, count in calls:
            if not self._run_call(run, chunk, first_step, count):
                break
            bar.update(count)
            bar.set_postfix(loss=f"{history.losses[-1]:.3e}", refresh=False)
        calls.close()
        history.wall_seconds = time.perf_counter() - start
        bar.close()
        self._checkpoint(run.checkpoints, history, every=1)
        return history

    def _start(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        batch: Batch | Iterable,
        logger: StepLogger | None,
        validation: Sequence[Batch],
        checkpoint_dir: Path | None,
    ) -> Run:
        """Everything before the first step: the history (restored from the newest checkpoint when
        resuming), the feed from the step it goes on at, LSUV on the first batch of a new run, and
        the compiled step (with ``jit_compile="auto"`` the faster of XLA and the graph)."""
        optimizer = loss_scaled(optimizer, self.precision)
        candidates = self._steps(model, optimizer, batch.crops)  # built first: they build the optimizer
        # Full-frame training shows the model the same batch at every step.
        feed = itertools.repeat((batch.inputs, batch.targets)) if isinstance(batch, Batch) else iter(batch)
        checkpoints = None
        if checkpoint_dir is not None:
            checkpoints = Checkpoints(checkpoint_dir, model, optimizer, self.rng, self.keep_checkpoints)
        history = History(*checkpoints.restore()) if checkpoints and self.resume else History()
        history.start_step = history.steps
        # A seeded stream replays its draws up to the resumed step, so it goes on where it was.
        feed = itertools.islice(feed, history.steps, None)
        lsuv = self.init == "lsuv" and history.steps == 0  # a resumed run has its trained weights
        if lsuv or len(candidates) > 1:
            first = next(feed)
            feed = itertools.chain([first], feed)
        if lsuv:
            unit_variance(model, *first)
        if len(candidates) > 1:
            recorded = checkpoints.recorded_step() if checkpoints and self.resume else None
            history.jit_compile = self._pick_step(candidates, model, optimizer, *first, recorded=recorded)
        else:
            (history.jit_compile,) = candidates
        if checkpoints is not None:
            checkpoints.record_step(history.jit_compile)
        return Run(model, optimizer, candidates[history.jit_compile], feed, history, logger, validation, checkpoints)

    def uses_xla(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, batch: Batch | Iterable) -> bool:
        """Whether this trainer trains ``model`` on ``batch`` (as :meth:`fit` takes it) with the step
        XLA compiles: ``jit_compile`` as pinned, or ``"auto"``'s pick for this workload (remembered,
        else timed now, on the batch or a stream's next one, and remembered, as a first run does)."""
        optimizer = loss_scaled(optimizer, self.precision)
        candidates = self._steps(model, optimizer, batch.crops)
        if len(candidates) == 1:
            (pick,) = candidates
            return pick
        inputs, targets = (batch.inputs, batch.targets) if isinstance(batch, Batch) else next(iter(batch))
        return self._pick_step(candidates, model, optimizer, inputs, targets)

    def _pick_step(
        self, candidates: dict[bool, Callable], model: keras.Model, optimizer: keras.optimizers.Optimizer,
        inputs: tf.Tensor, targets: tf.Tensor, recorded: bool | None = None,
    ) -> bool:
        """``jit_compile="auto"``: the step a resumed run ``recorded`` it trained with (so that it goes
        on bit for bit), else the step remembered for this workload on this machine, else the faster
        on this batch (then remembered): True for XLA. See :mod:`convlearn.step_cache`."""
        if recorded is not None:
            log.info("trainer.jit_compile=auto: resuming with %s, the step this run trained with", STEP_NAMES[recorded])
            return recorded
        described = step_cache.workload(model, optimizer, inputs, targets)
        pick = step_cache.recall(described)
        if pick is not None:
            log.info("trainer.jit_compile=auto: training with %s, the faster step for this model and batch on this "
                     "machine when first measured (%s)", STEP_NAMES[pick], step_cache.cache_file())
            return pick
        state = [*model.variables, *optimizer.variables]
        measured, rates = fastest_step(candidates, inputs, targets, state=state)
        pick = step_cache.remember(described, measured, rates)
        log.info("trainer.jit_compile=auto: XLA %.1f, graph %.1f steps/s on the first batch; training with %s%s",
                 rates[True], rates[False], STEP_NAMES[pick], "" if pick == measured else ", which a run started at the "
                 "same time measured first")
        return pick

    def after_step(
        self, run: Run, step: int, loss: float, grad_norm: float, finite: bool, learning_rate: float | None = None
    ) -> bool:
        """The bookkeeping of one finished step (0-based ``step``): the non-finite guard, the
        history, the logger, validation and checkpoints. False when the run must stop.
        ``learning_rate``: the rate after that step (default: the optimizer's now)."""
        history = run.history
        if not self._guard(step, finite, loss, grad_norm, history):
            return False
        history.losses.append(loss)
        history.grad_norms.append(grad_norm)
        if run.logger is not None:
            rate = current_lr(run.optimizer) if learning_rate is None else learning_rate
            scalars = {"loss": loss, "grad_norm": grad_norm, "learning_rate": rate}
            run.logger.on_step(step, scalars, run.model)
        if run.validation and ((step + 1) % self.val_every == 0 or step + 1 == self.steps):
            val_loss = validation_loss(run.model, run.validation)
            history.val_losses.append((step + 1, val_loss))
            if run.logger is not None:
                run.logger.scalars(step + 1, {"val_loss": val_loss})
        self._checkpoint(run.checkpoints, history, every=self.checkpoint_every)
        return True

    def _stops(self, validation: bool, checkpoints: bool, image_every: int) -> Callable[[int], bool]:
        """Whether a call must end after ``done`` steps: the host then needs that step's model
        (pictures after step 0 and every ``image_every``, validation, a checkpoint)."""

        def stop(done: int) -> bool:
            return (
                done == 1
                or (image_every > 0 and (done - 1) % image_every == 0)
                or (validation and done % self.val_every == 0)
                or (checkpoints and self.checkpoint_every > 0 and done % self.checkpoint_every == 0)
            )

        return stop

    def _calls(self, done: int, stop: Callable[[int], bool]) -> Iterator[tuple[int, int]]:
        """``(first step, steps)`` of each compiled call: ``steps_per_call`` steps, fewer before a stop."""
        while done < self.steps:
            count = 1
            while count < self.steps_per_call and done + count < self.steps and not stop(done + count):
                count += 1
            yield done, count
            done += count

    def _run_call(self, run: Run, chunk: Callable, first_step: int, count: int) -> bool:
        """Run ``count`` steps in one call and record each as :meth:`after_step` does; False when
        the run must stop."""
        batches = [next(run.feed) for _ in range(count)]
        losses, grad_norms, finite, rates = (values.numpy() for values in chunk(batches))
        for index, (loss, grad_norm, ok, rate) in enumerate(zip(losses, grad_norms, finite, rates)):
            if not self.after_step(run, first_step + index, float(loss), float(grad_norm), bool(ok), float(rate)):
                return False
        return True

    def _steps(
        self, model: keras.Model, optimizer: keras.optimizers.Optimizer, crops: Crops
    ) -> dict[bool, Callable]:
        """The training steps to choose from, keyed by whether XLA compiles them: one, or with
        ``jit_compile="auto"`` both. A distributed step is never compiled by XLA."""
        if self.distribution is not None:
            return {False: distribute.distributed_step(self.distribution, model, optimizer, crops)}
        if self.jit_compile != "auto":
            return {bool(self.jit_compile): compiled_step(model, optimizer, crops, bool(self.jit_compile))}
        graph = compiled_step(model, optimizer, crops, jit_compile=False)
        # XLA compiles the graph step's own trace, which the timing traces first, instead of
        # tracing the model a second time (a second or more of start-up on the notebook's model).
        xla = tf.function(lambda inputs, targets: graph(inputs, targets), jit_compile=True)
        return {False: graph, True: xla}

    def _guard(self, step: int, finite: bool, loss: float, grad_norm: float, history: History) -> bool:
        """Record a non-finite step (its update was not applied); False when the run must stop."""
        if finite:
            return True
        if self.on_nonfinite == "skip":
            history.skipped_steps.append(step)
            return True
        if math.isfinite(loss) and math.isfinite(grad_norm):
            reason = f"the update would make the weights non-finite (loss {loss}, gradient norm {grad_norm})"
        else:
            reason = f"non-finite loss or gradient (loss {loss}, gradient norm {grad_norm})"
        history.stop("failed", step, reason)
        return False

    def _checkpoint(self, checkpoints: Checkpoints | None, history: History, every: int) -> None:
        if checkpoints is not None and every > 0 and history.steps % every == 0:
            history.checkpoint = checkpoints.save(history.losses, history.grad_norms)


def compiled_step(
    model: keras.Model, optimizer: keras.optimizers.Optimizer, crops: Crops, jit_compile: bool = False
):
    """One training step as a ``tf.function`` (compiled by XLA with ``jit_compile``): returns the
    loss before the update, the gradient norm, and whether the step was applied. A step whose
    loss or gradient is not finite, or whose update would make a weight non-finite (a finite
    gradient times ``lr=inf``, or a huge one that overflows), leaves the weights and the optimizer
    untouched, so the model always holds its last finite state.

    With a ``LossScaleOptimizer`` (``fp16``) the gradients are of the scaled loss: one that
    overflowed is the scaler's to handle (it skips that update and lowers the scale), so only a
    non-finite loss counts as non-finite, and the gradient norm is reported unscaled."""
    variables = model.trainable_variables
    optimizer.build(variables)
    scaler = optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None

    @tf.function(jit_compile=jit_compile)
    def step(inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            prediction = compared(model(inputs, training=True), crops)
            loss = tf.reduce_mean(tf.square(prediction - targets))
            scaled = loss if scaler is None else scaler.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        scale = tf.constant(1.0) if scaler is None else tf.identity(scaler.dynamic_scale)  # before the update
        checked = [loss] if scaler is not None else [loss, *grads]
        return loss, tf.linalg.global_norm(grads) / scale, apply_if_finite(optimizer, grads, variables, checked)

    return step


def compiled_chunk(
    step: Callable, optimizer: object, size: int, same_batch: bool, stop_on_nonfinite: bool, jit_compile: bool = False
) -> Callable[[list[tuple[tf.Tensor, tf.Tensor]]], tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]]:
    """Up to ``size`` training ``step``s in one compiled call: takes the steps' ``(inputs, targets)``
    batches and returns per step the loss, gradient norm, whether both were finite, and the
    learning rate after it (what the logger shows). With ``stop_on_nonfinite`` the call ends at
    the first non-finite step (whose update the step did not apply). ``same_batch``: full-frame
    training, the one batch is passed once instead of stacked per step. One step per call is
    ``step`` itself, with the learning rate read after it."""
    if size == 1:

        def single(batches: list[tuple[tf.Tensor, tf.Tensor]]) -> tuple[tf.Tensor, ...]:
            loss, grad_norm, finite = step(*batches[0])
            rate = tf.constant([current_lr(optimizer)])
            return tf.reshape(loss, [1]), tf.reshape(grad_norm, [1]), tf.reshape(finite, [1]), rate

        return single

    @tf.function(jit_compile=jit_compile)
    def run(inputs: tf.Tensor, targets: tf.Tensor, count: tf.Tensor) -> tuple[tf.Tensor, ...]:
        results = [tf.TensorArray(dtype, size=0, dynamic_size=True) for dtype in (tf.float32, tf.float32, tf.bool,
                                                                                   tf.float32)]
        for i in tf.range(count):
            loss, grad_norm, finite = step(inputs if same_batch else inputs[i], targets if same_batch else targets[i])
            rate = tf.cast(optimizer.learning_rate, tf.float32)
            results = [array.write(i, value) for array, value in zip(results, (loss, grad_norm, finite, rate))]
            if stop_on_nonfinite and not finite:
                break
        return tuple(array.stack() for array in results)

    def chunk(batches: list[tuple[tf.Tensor, tf.Tensor]]) -> tuple[tf.Tensor, ...]:
        count = tf.constant(len(batches))
        if same_batch:
            return run(*batches[0], count)
        # Padded to ``size`` with the last batch (never trained on), so every call has one shape.
        padded = batches + batches[-1:] * (size - len(batches))
        return run(tf.stack([b[0] for b in padded]), tf.stack([b[1] for b in padded]), count)

    return chunk


def _until_signal(calls: Iterable[tuple[int, int]], history: History) -> Iterator[tuple[int, int]]:
    """Yield ``(first step, steps)`` calls until Ctrl-C (or SIGTERM) arrives, then mark ``history``
    interrupted at the next call's first step.

    The signal only sets a flag that is read between calls, so the checkpoint saved next is
    consistent; a second Ctrl-C interrupts at once (``train.py`` still records the run as
    interrupted). A repeated SIGTERM changes nothing: schedulers and ``kill`` send several, and the
    run is already stopping at the next step; after a SIGTERM, further ones are only logged while
    the process saves its results and ends. Handlers can only be installed from the main thread;
    elsewhere the steps are passed through.
    """
    received: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def request(signum: int, frame: object) -> None:
        received.append(signum)
        if signum == signal.SIGINT:
            signal.signal(signum, previous[signum])

    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:
        for sig in previous:
            signal.signal(sig, request)
    try:
        for call in calls:
            if received:
                history.stop("interrupted", call[0], "interrupted by a signal (Ctrl-C)")
                return
            yield call
    finally:
        if main_thread:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if signal.SIGTERM in received:  # the process is ending: let it save and record first
                signal.signal(signal.SIGTERM, lambda signum, frame: log.warning("already stopping (SIGTERM)"))


def mse(model: keras.Model, batch: Batch) -> float:
    """Mean squared error of the model on the batch, over the compared pixels."""
    return float(batch.loss(model))


def validation_loss(model: keras.Model, validation: Sequence[Batch]) -> float:
    """Mean MSE over the validation batches."""
    return float(np.mean([mse(model, batch) for batch in validation]))
