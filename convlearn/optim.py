"""Optimizers from config.

Keras 3 optimizers take ``learning_rate``; the config speaks of ``lr`` (``optimizer.lr=3e-3`` on
the command line), and any other argument goes to the Keras class unchanged. ``warmup_cosine``
optionally wraps the rate in Keras' cosine-decay schedule with a linear warm-up.
:func:`apply_if_finite` is how every training step applies an update: only a finite one.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf
from hydra.utils import get_class

from convlearn.errors import ConvlearnError


def make_optimizer(
    cls: str = "keras.optimizers.Adam",
    lr: float = 1e-3,
    decay_steps: int | None = None,
    warmup_steps: int = 0,
    **kwargs: object,
) -> keras.optimizers.Optimizer:
    """Instantiate ``cls`` (any ``keras.optimizers`` class path) with learning rate ``lr``.

    With ``decay_steps`` set, the rate warms up linearly over ``warmup_steps`` and then follows a
    cosine decay to zero at ``decay_steps``.
    """
    if not lr > 0:
        raise ConvlearnError(f"optimizer.lr must be > 0, got {lr}")
    try:
        optimizer_class = get_class(cls)
    except Exception:
        raise ConvlearnError(f"optimizer.cls: no optimizer class '{cls}' (try keras.optimizers.Adam)") from None
    rate: float | keras.optimizers.schedules.LearningRateSchedule = lr
    if decay_steps is not None:
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else lr,
            decay_steps=max(decay_steps - warmup_steps, 1),
            warmup_target=lr if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    try:
        return optimizer_class(learning_rate=rate, **kwargs)
    except (TypeError, ValueError) as err:
        raise ConvlearnError(f"optimizer {cls}: {err}") from None


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the optimizer uses at its current iteration."""
    rate = optimizer.learning_rate
    return float(rate.numpy() if hasattr(rate, "numpy") else rate)


def apply_if_finite(
    optimizer: keras.optimizers.Optimizer, grads: Sequence[tf.Tensor], variables: Sequence, checked: Sequence[tf.Tensor]
) -> tf.Tensor:
    """Apply ``grads`` to ``variables`` when every tensor in ``checked`` (the loss, the gradients) is
    finite, and keep the update only if the weights and the optimizer's state stay finite (Adam's
    second moment overflows first: the square of a gradient near 1e20); otherwise put both back as
    they were. Returns whether the update was kept. The copy costs a few element-wise ops on the
    weights, which are small next to the convolutions of a step."""
    state = [*variables, *optimizer.variables]

    def apply() -> tf.Tensor:
        before = [tf.identity(v) for v in state]
        with tf.control_dependencies(before):
            optimizer.apply_gradients(zip(grads, variables))
        finite = tf.reduce_all([_all_finite(v) for v in state if tf.as_dtype(v.dtype).is_floating])

        def put_back() -> tf.Tensor:
            for variable, value in zip(state, before):
                variable.assign(value)
            return tf.constant(False)

        return tf.cond(finite, lambda: tf.constant(True), put_back)

    return tf.cond(tf.reduce_all([_all_finite(x) for x in checked]), apply, lambda: tf.constant(False))


def _all_finite(tensor: tf.Tensor) -> tf.Tensor:
    return tf.reduce_all(tf.math.is_finite(tensor))
