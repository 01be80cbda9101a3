"""TensorBoard logging for a run: losses, predictions and learned kernels over time.

The trainer reports every step; this logger decides what to write: scalars every
``scalar_every`` steps, pictures (input | target | prediction | error, and every conv layer's
kernels) at the first step, every ``image_every`` steps and at the end. Writers buffer, so the
logger is a context manager that flushes and closes on every exit path.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from convlearn import pictures
from convlearn.models import conv_layers
from convlearn.training import Batch


class TensorBoardLogger:
    """Writes a run's TensorBoard events under ``log_dir``."""

    def __init__(
        self,
        log_dir: str | Path,
        batch: Batch,
        scalar_every: int = 10,
        image_every: int = 100,
        config_text: str = "",
    ) -> None:
        self.log_dir = Path(log_dir)
        self.batch = batch
        self.scalar_every = max(1, scalar_every)
        self.image_every = image_every
        self.config_text = config_text
        self.writer = tf.summary.create_file_writer(str(self.log_dir))

    def __enter__(self) -> TensorBoardLogger:
        if self.config_text:
            with self.writer.as_default(step=0):
                tf.summary.text("config", f"```\n{self.config_text}\n```", step=0)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.writer.flush()
        self.writer.close()

    def on_step(self, step: int, scalars: dict[str, float], model: keras.Model) -> None:
        if step % self.scalar_every == 0:
            self.scalars(step, scalars)
        if step == 0 or (self.image_every > 0 and step % self.image_every == 0):
            self.pictures(step, model)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def pictures(self, step: int, model: keras.Model) -> None:
        """The model's current prediction next to its target, and its kernels."""
        with self.writer.as_default(step=step):
            tf.summary.image("prediction", self._comparison(model)[None])
            for layer in conv_layers(model):
                kernel = np.asarray(layer.kernel.numpy(), np.float32)
                tf.summary.image(f"kernels/{layer.name}", pictures.kernel_grid(kernel)[None])

    def _comparison(self, model: keras.Model) -> np.ndarray:
        prediction = self.batch.predict(model).numpy()[0, ..., 0]
        target = self.batch.targets.numpy()[0, ..., 0]
        rows, cols = self.batch.crops.inputs
        return pictures.comparison(self.batch.inputs.numpy()[0, rows, cols, 0], target, prediction)
