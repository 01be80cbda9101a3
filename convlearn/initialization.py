"""Data-dependent initialisation: conv kernels scaled to the training data before the first step.

Keras' default (Glorot) kernels are sized for signals of unit variance. The notebook's image
gives its 2x2 edge layer a signal of standard deviation ~0.14, and through the 100->1 block and
ten 3x3 layers of 4 channels it fades to ~0.001: the output starts flat, the kernels' gradients
are ~1e-5 against the biases' ~1e-2, and the loss sits on a plateau until they grow. Scaling
every kernel, first to last, so that its layer's output (before the activation) has unit
standard deviation on the training inputs -- and the last layer's that of the targets -- starts
the model with a signal at every depth. This is LSUV (Mishkin & Matas, "All you need is a good
init", 2016) in one pass: a conv is linear in its kernel, so one rescaling is exact.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from convlearn.models import conv_layers


def unit_variance(model: keras.Model, inputs: tf.Tensor, targets: tf.Tensor) -> list[float]:
    """Rescale ``model``'s conv kernels in place, layer by layer on ``inputs``: each conv's output
    before its bias and activation gets unit standard deviation, the last one the standard
    deviation of ``targets``. Returns the factors applied, one per conv (1.0 where a layer's
    output is constant and no factor can help)."""
    convs = conv_layers(model)
    factors = []
    x = inputs
    for layer in model.layers:
        if layer in convs:
            wanted = float(tf.math.reduce_std(tf.cast(targets, tf.float32))) if layer is convs[-1] else 1.0
            kernel = keras.ops.cast(layer.kernel, x.dtype)  # bfloat16 under the mixed bf16 policy
            std = float(tf.math.reduce_std(tf.cast(layer.convolution_op(x, kernel), tf.float32)))
            factor = wanted / std if std > 0 else 1.0
            layer.kernel.assign(layer.kernel * factor)
            factors.append(factor)
        x = layer(x)
    return factors
