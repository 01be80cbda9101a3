"""Data-parallel training with ``tf.distribute``: the same step, split over several devices.

A batch's images are dealt out to the replicas (image ``i`` to replica ``i % replicas``); each
replica's squared errors are divided by the pixel count of the whole batch, so that the summed
replica losses and gradients equal the single-device MSE and its gradients; the summed update is
applied once, and only when the loss, the gradients and the weights after it are finite.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from convlearn.data import compared
from convlearn.errors import ConvlearnError
from convlearn.geometry import Crops
from convlearn.optim import apply_if_finite

STRATEGIES = ("mirrored",)


def make_strategy(name: str | None) -> tf.distribute.Strategy | None:
    """The ``tf.distribute`` strategy called ``name`` (None: train on one device)."""
    if name is None:
        return None
    if name not in STRATEGIES:
        raise ConvlearnError(f"trainer.strategy: unknown strategy '{name}'; choose null or {', '.join(STRATEGIES)}")
    # MirroredStrategy's own default ignores all CPU devices but the first.
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy(devices=[device.name for device in devices])


def distributed_step(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    crops: Crops,
) -> Callable[[tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]:
    """One data-parallel training step: returns (loss before the update, gradient norm, whether
    the step was applied), like ``training.compiled_step``: a step whose loss or gradients are not
    finite, or whose update would make a weight non-finite, leaves weights and optimizer as they were."""
    variables = model.trainable_variables
    with strategy.scope():
        optimizer.build(variables)

    def replica_gradients(inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        context = tf.distribute.get_replica_context()
        share = slice(context.replica_id_in_sync_group, None, context.num_replicas_in_sync)
        pixels = tf.cast(tf.size(targets), tf.float32)
        with tf.GradientTape() as tape:
            prediction = compared(model(inputs[share], training=True), crops)
            loss = tf.reduce_sum(tf.square(prediction - targets[share])) / pixels
        return loss, tape.gradient(loss, variables)

    @tf.function
    def step(inputs: tf.Tensor, targets: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        # The update is applied outside the replicas, once, with the summed gradients: the
        # finiteness check is a branch, and a branch around the replicas' own all-reduce cannot
        # be traced.
        per_replica = strategy.run(replica_gradients, args=(inputs, targets))
        loss, grads = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
        return loss, tf.linalg.global_norm(grads), apply_if_finite(optimizer, grads, variables, [loss, *grads])

    return step
