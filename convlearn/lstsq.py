"""The least-squares trainer: solves a one-layer linear model in closed form instead of training it.

A linear model of one VALID conv is a linear regression of each output pixel on the input window
under it, so :func:`convlearn.analysis.lstsq_kernel` gives its best weights exactly, in seconds,
where gradient descent needs thousands of steps (``trainer=lstsq``). It sits beside
:class:`convlearn.training.Trainer` and takes the same arguments, so the run pipeline uses either.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import keras
import numpy as np

from convlearn.analysis import is_linear_stack, lstsq_kernel, windows_at
from convlearn.data import Batch
from convlearn.errors import ConvlearnError
from convlearn.models import conv_layers
from convlearn.training import History, StepLogger, mse, validation_loss


class LeastSquares:
    """A trainer that solves a one-layer linear model in closed form instead of training it.

    Same interface as :class:`convlearn.training.Trainer`; the history holds one step, the loss
    of the model before it was solved. The optimizer is not used.
    """

    def __init__(self, steps: int = 1, seed: int = 0, deterministic: bool = True) -> None:
        # ``steps`` is there so that every trainer config has one (the HPARAMS table reads it).
        if steps != 1:
            raise ConvlearnError(f"trainer.steps: trainer=lstsq solves in exactly 1 step, got {steps}")
        self.steps = steps
        self.seed = seed
        self.deterministic = deterministic
        self.resume = False  # a one-step solve has nothing to resume

    def scope(self) -> contextlib.AbstractContextManager:
        """The solve runs on one device: no distribution scope."""
        return contextlib.nullcontext()

    def fit(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        batch: Batch | Iterable,
        logger: StepLogger | None = None,
        validation: Sequence[Batch] = (),
        checkpoint_dir: Path | None = None,
    ) -> History:
        """Solve on the full-frame ``batch`` (all its images at once); ``validation`` batches get
        their MSE recorded after the solve, as the trainer does at its last step. A solve takes
        seconds, so nothing is written to ``checkpoint_dir``."""
        if not isinstance(batch, Batch):
            raise ConvlearnError(
                "trainer=lstsq: solves on whole images only, but the data come as random patches; "
                "unset data.patch_size"
            )
        convs = conv_layers(model)
        if not (is_linear_stack(model) and len(convs) == 1 and convs[0].padding == "valid"):
            raise ConvlearnError(
                f"trainer=lstsq: model '{model.name}' must be a single VALID conv without activation "
                "(model=linear); train other models with trainer=default"
            )
        (layer,) = convs
        if layer.kernel.shape[2:] != (1, 1) or tuple(layer.dilation_rate) != (1, 1):
            raise ConvlearnError(
                f"trainer=lstsq: model '{model.name}' must map 1 channel to 1 without dilation, got kernel "
                f"{tuple(layer.kernel.shape)} dilation {tuple(layer.dilation_rate)}"
            )
        start = time.perf_counter()
        history = History(losses=[mse(model, batch)], jit_compile=False)  # solved in NumPy: nothing compiled
        if logger is not None:
            logger.on_step(0, {"loss": history.losses[0]}, model)
        size = tuple(layer.kernel_size)
        window = windows_at(batch.inputs.numpy()[..., 0], batch.crops.inputs, size)
        kernel, bias, _ = lstsq_kernel(window, batch.targets.numpy()[..., 0], size, layer.use_bias)
        layer.kernel.assign(kernel[:, :, None, None].astype(layer.kernel.dtype))
        if layer.use_bias:
            layer.bias.assign(np.array([bias], layer.bias.dtype))
        history.wall_seconds = time.perf_counter() - start
        if validation:
            history.val_losses.append((1, validation_loss(model, validation)))
        return history
