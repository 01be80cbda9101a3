"""The trainer: fit a model's kernels to a target with a compiled GradientTape step.

This is the notebook's loop (forward, MSE, gradients, optimizer step) with the step compiled by
``tf.function`` and the bookkeeping around it: seeding, progress, per-step losses, and hooks for
the logger. The loss compares only the pixels the model and the target both cover (see
:mod:`convlearn.geometry`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from convlearn.geometry import Crops, Footprint, align
from convlearn.models import footprint
from convlearn.optim import current_lr
from convlearn.targets import Pipeline


@dataclass
class Batch:
    """Model inputs, and targets already cut to the pixels the model's output is compared on."""

    inputs: tf.Tensor
    targets: tf.Tensor
    crops: Crops

    def predict(self, model: keras.Model) -> tf.Tensor:
        """The model's output on the inputs, cut to the compared region, in float32."""
        rows, cols = self.crops.model
        return tf.cast(model(self.inputs, training=False)[:, rows, cols, :], tf.float32)


@dataclass
class History:
    """What happened during training: one loss and gradient norm per step."""

    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (steps done, loss)
    wall_seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.losses)

    @property
    def steps_per_sec(self) -> float:
        return self.steps / self.wall_seconds if self.wall_seconds > 0 else 0.0


class StepLogger(Protocol):
    """What the trainer tells a logger; the logger decides what to record and when."""

    def on_step(self, step: int, scalars: dict[str, float], model: keras.Model) -> None: ...

    def scalars(self, step: int, values: dict[str, float]) -> None: ...


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and TensorFlow; with ``deterministic`` pick deterministic kernels."""
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


class Trainer:
    """Runs ``steps`` optimizer steps of MSE on one batch (the notebook's full-frame training)."""

    def __init__(
        self, steps: int = 500, seed: int = 0, progress: bool = True, deterministic: bool = True, val_every: int = 50
    ) -> None:
        self.steps = steps
        self.val_every = max(1, val_every)
        self.seed = seed
        self.progress = progress
        self.deterministic = deterministic

    def fit(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        batch: Batch | Iterable,
        logger: StepLogger | None = None,
        validation: Sequence[Batch] = (),
    ) -> History:
        """``batch``: a :class:`Batch` (full frame) or anything with ``crops`` that iterates over
        ``(inputs, targets)`` batches (random patches). With ``validation`` batches, their mean MSE
        is recorded every ``val_every`` steps and at the end, and logged as ``val_loss``."""
        step_fn = compiled_step(model, optimizer, batch.crops)
        # Full-frame training shows the model the same batch at every step.
        feed = itertools.repeat((batch.inputs, batch.targets)) if isinstance(batch, Batch) else iter(batch)
        history = History()
        bar = tqdm(range(self.steps), desc="training", disable=not self.progress, mininterval=0.5, leave=False)
        start = time.perf_counter()
        for step in bar:
            loss, grad_norm = step_fn(*next(feed))
            loss, grad_norm = float(loss), float(grad_norm)
            history.losses.append(loss)
            history.grad_norms.append(grad_norm)
            if logger is not None:
                scalars = {"loss": loss, "grad_norm": grad_norm, "learning_rate": current_lr(optimizer)}
                logger.on_step(step, scalars, model)
            if validation and ((step + 1) % self.val_every == 0 or step + 1 == self.steps):
                val_loss = float(np.mean([mse(model, v) for v in validation]))
                history.val_losses.append((step + 1, val_loss))
                if logger is not None:
                    logger.scalars(step + 1, {"val_loss": val_loss})
            if step % 10 == 0:
                bar.set_postfix(loss=f"{loss:.3e}", refresh=False)
        history.wall_seconds = time.perf_counter() - start
        bar.close()
        return history


def compiled_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, crops: Crops):
    """One training step as a ``tf.function``: returns (loss before the update, gradient norm)."""
    rows, cols = crops.model
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function
    def step(inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        with tf.GradientTape() as tape:
            prediction = tf.cast(model(inputs, training=True)[:, rows, cols, :], tf.float32)
            loss = tf.reduce_mean(tf.square(prediction - targets))
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss, tf.linalg.global_norm(grads)

    return step


def mse(model: keras.Model, batch: Batch) -> float:
    """Mean squared error of the model on the batch, over the compared pixels."""
    return float(tf.reduce_mean(tf.square(batch.predict(model) - batch.targets)))


def make_batch(
    image: np.ndarray, target: Pipeline | None, model: keras.Model, given: np.ndarray | None = None
) -> Batch:
    """The training batch for one ``(H, W)`` image or a stack ``(N, H, W, C)``: the target computed
    once and cropped to the pixels the model's output covers too. With ``target=None`` the
    targets are ``given`` images of the same shape (data=pairs), aligned pixel for pixel."""
    image = np.asarray(image, np.float32)
    inputs = tf.constant(image[None, ..., None] if image.ndim == 2 else image)
    crops = align(footprint(model), Footprint() if target is None else target.footprint, tuple(inputs.shape[1:3]))
    rows, cols = crops.target
    full = target(inputs) if target is not None else tf.constant(np.reshape(np.asarray(given, np.float32), inputs.shape))
    return Batch(inputs=inputs, targets=full[:, rows, cols, :], crops=crops)
