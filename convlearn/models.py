"""Keras conv models to fit to a target, built from config.

Every model is a ``keras.Sequential`` of stride-1 ``Conv2D`` layers on ``(height, width, channels)``
images of any size. Layers get stable names (``conv_00``, ``conv_01``...) so that saved kernels
and TensorBoard tags line up across runs. :func:`footprint` derives the receptive field and output
shrink from the layers themselves, so the alignment crop is never written by hand.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras

from convlearn import geometry
from convlearn.errors import ConvlearnError
from convlearn.geometry import Footprint


def sequential(layers: Sequence[Mapping], channels: int = 1, name: str = "sequential") -> keras.Sequential:
    """A stack of Conv2D layers, each given as keyword arguments of ``keras.layers.Conv2D``.

    Written in YAML as a list, e.g. ``- {filters: 4, kernel_size: 3, activation: elu}``.
    Unspecified arguments take Keras' defaults (VALID padding, Glorot-uniform kernels, zero bias).
    """
    if not layers:
        raise ConvlearnError(f"model '{name}': needs at least one layer")
    stack = [keras.Input(shape=(None, None, channels))]
    for index, spec in enumerate(layers):
        spec = dict(spec)
        if "filters" not in spec or "kernel_size" not in spec:
            raise ConvlearnError(f"model '{name}': layer {index} needs 'filters' and 'kernel_size', got {spec}")
        try:
            stack.append(keras.layers.Conv2D(name=f"conv_{index:02d}", **spec))
        except (TypeError, ValueError) as err:
            raise ConvlearnError(f"model '{name}': layer {index} {spec}: {err}") from None
    return keras.Sequential(stack, name=name)


def seed(
    activation: str = "elu",
    edge_filters: int = 2,
    width: int = 100,
    blur_layers: int = 9,
    blur_filters: int = 4,
    channels: int = 1,
) -> keras.Sequential:
    """The notebook's 13-layer model, with its sizes as parameters.

    A 2x2 "edge" layer, a 1x1 mixing block (``width`` filters, then 1), ``blur_layers`` 3x3
    layers of ``blur_filters`` and a final 3x3 layer to one channel; every layer uses
    ``activation``. The defaults are the notebook's (1672 weights).
    """
    layers = [
        dict(filters=edge_filters, kernel_size=2),
        dict(filters=width, kernel_size=1),
        dict(filters=1, kernel_size=1),
        *[dict(filters=blur_filters, kernel_size=3) for _ in range(blur_layers)],
        dict(filters=channels, kernel_size=3),
    ]
    return sequential([dict(spec, activation=activation) for spec in layers], channels, name="seed")


def linear(kernel_size: int | Sequence[int] = 3, use_bias: bool = False, channels: int = 1) -> keras.Sequential:
    """One Conv2D without activation: the model that can learn exactly one linear kernel."""
    layer = dict(filters=channels, kernel_size=kernel_size, use_bias=use_bias)
    return sequential([layer], channels, name="linear")


def conv_layers(model: keras.Model) -> list[keras.layers.Conv2D]:
    """The model's Conv2D layers, in order."""
    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def footprint(model: keras.Model) -> Footprint:
    """Receptive field and output shrink of a stack of stride-1 convolutions."""
    parts = []
    for layer in conv_layers(model):
        if tuple(layer.strides) != (1, 1):
            raise ConvlearnError(f"model: layer {layer.name} has strides {layer.strides}; only stride 1 is supported")
        parts.append(geometry.conv(tuple(layer.kernel_size), layer.padding, tuple(layer.dilation_rate)))
    return geometry.chain(parts)
