"""Keras conv models to fit to a target, built from config.

Every model is a ``keras.Sequential`` of stride-1 ``Conv2D`` layers (plus, where an architecture
needs one, a :class:`Magnitude` layer) on ``(height, width, channels)`` images of any size. Conv
layers get stable names (``conv_00``, ``conv_01``...) so that saved kernels and TensorBoard tags
line up across runs. :func:`footprint` derives the receptive field and output shrink from the
layers themselves, so the alignment crop is never written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

from convlearn import geometry
from convlearn.errors import ConvlearnError
from convlearn.geometry import Footprint


@keras.saving.register_keras_serializable(package="convlearn")
class Magnitude(keras.layers.Layer):
    """Euclidean norm over channels, ``sqrt(sum(x^2) + eps)``: the notebook's edge strength.

    ``eps`` keeps the gradient finite where every channel is zero.
    """

    def __init__(self, eps: float = 1e-12, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return keras.ops.sqrt(keras.ops.sum(keras.ops.square(inputs), axis=-1, keepdims=True) + self.eps)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "eps": self.eps}


@keras.saving.register_keras_serializable(package="convlearn")
class Delta(keras.initializers.Initializer):
    """A conv kernel that passes channel ``i`` to channel ``i`` through one tap, plus Gaussian
    noise of ``stddev``: a deep linear stack starts near the identity map (or a shift of it),
    where gradient descent splits a kernel across layers far more reliably than from random
    kernels. ``tap``: the (row, col) of that tap; None: the centre."""

    def __init__(self, stddev: float = 0.01, seed: int | None = None, tap: Sequence[int] | None = None) -> None:
        self.stddev = stddev
        self.seed = seed
        self.tap = None if tap is None else tuple(tap)
        self.noise = keras.initializers.RandomNormal(stddev=stddev, seed=seed)

    def __call__(self, shape: tuple, dtype: str | None = None) -> tf.Tensor:
        rows, cols, inputs, outputs = shape
        row, col = self.tap if self.tap is not None else ((rows - 1) // 2, (cols - 1) // 2)
        delta = np.zeros(shape)
        for channel in range(min(inputs, outputs)):
            delta[row, col, channel, channel] = 1.0
        return self.noise(shape, dtype) + keras.ops.convert_to_tensor(delta, dtype=dtype)

    def get_config(self) -> dict:
        return {"stddev": self.stddev, "seed": self.seed, "tap": self.tap}


@keras.saving.register_keras_serializable(package="convlearn")
class ZeroMean(keras.initializers.Initializer):
    """Glorot-uniform conv kernels with each filter's mean taken out, so every filter sums to zero.

    A filter that sums to zero gives nothing on a flat region and answers only changes: an edge
    detector from the first step. The notebook's 2x2 edge layer from plain Glorot kernels can start
    with a filter of one sign (a smoothing filter that answers every bright region); the model
    then spends tens of steps unlearning it, and on some seeds never reaches the notebook's quality.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self.base = keras.initializers.GlorotUniform(seed=seed)

    def __call__(self, shape: tuple, dtype: str | None = None) -> tf.Tensor:
        kernel = self.base(shape, dtype)
        return kernel - keras.ops.mean(kernel, axis=(0, 1, 2), keepdims=True)

    def get_config(self) -> dict:
        return {"seed": self.seed}


# Layer types a YAML layer list may name with ``type``; conv is the default.
LAYER_TYPES = ("conv", "magnitude")

# A kernel size: one number, [rows, cols], or "auto": the size that lines the model's output up
# with the target's (see :func:`sequential` and :func:`linear`).
Size = int | Sequence[int] | Literal["auto"]


def _auto_sized(layers: list[dict], target: Footprint | None, name: str) -> list[dict]:
    """Give the layer whose ``kernel_size`` is ``auto`` 2 or 3 per axis, whichever makes the
    model's output centres fall on the target's (whole or half pixels, see geometry.align)."""
    autos = [index for index, spec in enumerate(layers) if spec.get("kernel_size") == "auto"]
    if not autos:
        return layers
    if len(autos) > 1:
        raise ConvlearnError(f"model '{name}': at most one layer may have kernel_size auto, got layers {autos}")
    if target is None:
        raise ConvlearnError(f"model '{name}': kernel_size auto needs the target's footprint to line up with")
    (index,) = autos
    layers = [dict(spec) for spec in layers]
    layers[index]["kernel_size"] = 1
    rest = geometry.chain([_conv_footprint(spec) for spec in layers if spec.get("type", "conv") == "conv"])
    dilation = _pair(layers[index].get("dilation_rate", 1))
    size = []
    for axis in (0, 1):
        odd_span = (target.shift2[axis] - rest.shift2[axis]) % 2
        if odd_span and dilation[axis] % 2 == 0:
            raise ConvlearnError(
                f"model '{name}': layer {index} has kernel_size auto but an even dilation_rate "
                f"{dilation[axis]}, which cannot move its output by half a pixel to meet the target"
            )
        size.append(2 if odd_span else 3)
    layers[index]["kernel_size"] = tuple(size)
    return layers


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _conv_footprint(spec: Mapping) -> Footprint:
    return geometry.conv(_pair(spec["kernel_size"]), spec.get("padding", "valid"), _pair(spec.get("dilation_rate", 1)))


def sequential(
    layers: Sequence[Mapping], channels: int = 1, name: str = "sequential", target: Footprint | None = None
) -> keras.Sequential:
    """A stack of layers, each given as a mapping; written in YAML as a list.

    A conv layer (the default) takes the keyword arguments of ``keras.layers.Conv2D``, e.g.
    ``{filters: 4, kernel_size: 3, dilation_rate: 2, activation: elu, padding: same,
    kernel_initializer: he_normal, use_bias: false}``; unspecified ones take Keras' defaults (VALID
    padding, Glorot-uniform kernels, zero bias). ``{type: magnitude}`` is the channel norm layer.
    One layer may have ``kernel_size: auto``: 2 or 3 per axis, whichever lines the output up with
    ``target`` (the target transform's footprint, which ``train.py`` passes to every model).
    """
    if not layers:
        raise ConvlearnError(f"model '{name}': needs at least one layer")
    layers = _auto_sized([dict(spec) for spec in layers], target, name)
    stack = [keras.Input(shape=(None, None, channels))]
    convs = 0
    for index, spec in enumerate(layers):
        spec = dict(spec)
        kind = spec.pop("type", "conv")
        if kind not in LAYER_TYPES:
            raise ConvlearnError(f"model '{name}': layer {index} type must be one of {list(LAYER_TYPES)}, got '{kind}'")
        if kind == "conv" and ("filters" not in spec or "kernel_size" not in spec):
            raise ConvlearnError(f"model '{name}': layer {index} needs 'filters' and 'kernel_size', got {spec}")
        try:
            if kind == "conv":
                stack.append(keras.layers.Conv2D(name=f"conv_{convs:02d}", **spec))
                convs += 1
            else:
                stack.append(Magnitude(name=f"magnitude_{index:02d}", **spec))
        except (TypeError, ValueError) as err:
            raise ConvlearnError(f"model '{name}': layer {index} {spec}: {err}") from None
    return keras.Sequential(stack, name=name)


def notebook(
    activation: str = "elu",
    edge_filters: int = 2,
    edge_size: Size = 2,
    width: int = 100,
    blur_layers: int = 9,
    blur_filters: int = 4,
    edge_init: Literal["glorot_uniform", "zero_mean"] = "glorot_uniform",
    channels: int = 1,
    target: Footprint | None = None,
) -> keras.Sequential:
    """The notebook's 13-layer model, with its sizes as parameters.

    A 2x2 "edge" layer, a 1x1 mixing block (``width`` filters, then 1), ``blur_layers`` 3x3
    layers of ``blur_filters`` and a final 3x3 layer to one channel; every layer uses
    ``activation``. The defaults are the notebook's (1672 weights). ``edge_size: auto`` (the
    config's default) keeps the 2x2 edge layer where it lines up with the target and makes it 3x3
    for targets with a centred odd kernel (sobel, gaussian...), which a 2x2 layer is half a pixel
    away from. ``edge_init: zero_mean`` starts the edge filters with zero sum (:class:`ZeroMean`).
    """
    edge = ZeroMean() if edge_init == "zero_mean" else edge_init
    layers = [
        dict(filters=edge_filters, kernel_size=edge_size, kernel_initializer=edge),
        dict(filters=width, kernel_size=1),
        dict(filters=1, kernel_size=1),
        *[dict(filters=blur_filters, kernel_size=3) for _ in range(blur_layers)],
        dict(filters=channels, kernel_size=3),
    ]
    return sequential([dict(spec, activation=activation) for spec in layers], channels, "notebook", target)


def linear(
    kernel_size: Size = 3, use_bias: bool = False, channels: int = 1, target: Footprint | None = None
) -> keras.Sequential:
    """One Conv2D without activation: the model that can learn exactly one linear kernel.

    ``kernel_size: auto`` takes the target's receptive field, so a linear target's own kernel is
    within reach (and the outputs line up).
    """
    if kernel_size == "auto":
        if target is None or target.extent == (1, 1):
            raise ConvlearnError(
                "model.kernel_size: auto takes the target transform's size, but there is none "
                "(data=pairs); give a size, e.g. model.kernel_size=5"
            )
        kernel_size = target.extent
    layer = dict(filters=channels, kernel_size=kernel_size, use_bias=use_bias)
    return sequential([layer], channels, "linear", target)


def deep_linear(
    depth: int = 3,
    width: int = 1,
    kernel_size: int = 3,
    use_bias: bool = False,
    kernel_initializer: str = "delta",
    channels: int = 1,
    target: Footprint | None = None,
) -> keras.Sequential:
    """``depth`` linear convs of ``width`` filters (the last back to ``channels``).

    Its end-to-end map is still one kernel, of size ``depth * (kernel_size - 1) + 1``: the point
    is to watch how gradient descent splits that kernel across layers. ``kernel_initializer``:
    ``delta`` (:class:`Delta` at the centre: every layer near the identity), ``split_delta`` (the
    identity split into opposite shifts, see :func:`_split_taps`) or any Keras initializer name.
    """
    if depth < 1 or width < 1:
        raise ConvlearnError(f"model 'deep_linear': depth and width must be >= 1, got depth={depth}, width={width}")
    if kernel_initializer == "delta":
        initializers = [Delta()] * depth
    elif kernel_initializer == "split_delta":
        initializers = [Delta(tap=(tap, tap)) for tap in _split_taps(depth, kernel_size)]
    else:
        initializers = [kernel_initializer] * depth
    layers = [
        dict(filters=width if index < depth - 1 else channels, kernel_size=kernel_size, use_bias=use_bias,
             kernel_initializer=initializer)
        for index, initializer in enumerate(initializers)
    ]
    return sequential(layers, channels, "deep_linear", target)


def _split_taps(depth: int, kernel_size: int) -> list[int]:
    """Per layer, the tap (on both axes) of a ``split_delta`` start: the first half of the layers
    at the first corner, the second half at the opposite one, an odd middle layer at the centre,
    so that the stack still composes to the identity (centred for odd kernel sizes).

    Why: in one dimension a kernel is a polynomial and a stack of layers computes their product,
    so a stack fits a target by sharing the target's roots out among its layers. A centred delta
    has one root inside the unit circle (0) and one outside (infinity); the sampled 5x5 Gaussian
    (per axis) has a complex-conjugate pair outside and one inside, which real 3-tap layers must
    each take as a pair: from centred deltas a root would have to cross the circle, and gradient
    descent stops in a local minimum at 1.5% kernel error instead. From opposite corners one layer
    starts with both roots outside and the other with both inside, and nothing needs to cross.
    """
    last = kernel_size - 1
    return [0] * (depth // 2) + [last // 2] * (depth % 2) + [last] * (depth // 2)


def edge_blur_structured(
    edge_size: Size = 2,
    blur_layers: int = 5,
    blur_size: int = 5,
    eps: float = 1e-12,
    channels: int = 1,
    target: Footprint | None = None,
) -> keras.Sequential:
    """The edge_blur target's own structure with learnable kernels, so it can match it exactly.

    Two ``edge_size`` edge kernels, their :class:`Magnitude`, then ``blur_layers`` linear
    ``blur_size`` convolutions. The blurs start as box filters (all weights equal, summing to 1):
    a positive, smoothing start from which the blur is a short walk, where random signs would
    leave the magnitude's output to be undone first.
    """
    box = keras.initializers.Constant(1.0 / blur_size**2)
    layers = [
        dict(filters=2, kernel_size=edge_size, use_bias=False),
        dict(type="magnitude", eps=eps),
        *[dict(filters=channels, kernel_size=blur_size, use_bias=False, kernel_initializer=box)] * blur_layers,
    ]
    return sequential(layers, channels, "edge_blur_structured", target)


def can(
    depth: int = 5,
    width: int = 16,
    head_kernel_size: Size = 1,
    activation: str = "leaky_relu",
    padding: str = "valid",
    channels: int = 1,
    target: Footprint | None = None,
) -> keras.Sequential:
    """A context aggregation network (Chen, Xu & Koltun, ICCV 2017) without its normalisation.

    ``depth - 1`` 3x3 convs of ``width`` filters with dilations 1, 2, 4, ... (the receptive field
    grows exponentially with depth), one more 3x3 at dilation 1, then a linear
    ``head_kernel_size`` projection to ``channels``; a head of 2 makes the total shrink odd, as
    for edge_blur (``auto`` picks 2 or 3, whichever lines up with the target).
    """
    if depth < 2:
        raise ConvlearnError(f"model 'can': depth must be >= 2, got {depth}")
    conv = dict(filters=width, kernel_size=3, activation=activation, padding=padding)
    layers = [
        *[dict(conv, dilation_rate=2**i) for i in range(depth - 1)],
        conv,
        dict(filters=channels, kernel_size=head_kernel_size, padding=padding),
    ]
    return sequential(layers, channels, "can", target)


def conv_layers(model: keras.Model) -> list[keras.layers.Conv2D]:
    """The model's Conv2D layers, in order."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def footprint(model: keras.Model) -> Footprint:
    """Receptive field and output shrink of a stack of stride-1 convolutions.

    Layers other than convolutions act pixel by pixel, so they add nothing.
    """
    parts = []
    for layer in conv_layers(model):
        if tuple(layer.strides) != (1, 1):
            raise ConvlearnError(f"model: layer {layer.name} has strides {layer.strides}; only stride 1 is supported")
        parts.append(geometry.conv(tuple(layer.kernel_size), layer.padding, tuple(layer.dilation_rate)))
    return geometry.chain(parts)
