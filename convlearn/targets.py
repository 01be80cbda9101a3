"""Target transforms: the image operators a model is asked to learn.

A target is a :class:`Pipeline` of steps, each a small callable on ``(batch, height, width,
channels)`` tensors that also knows its :class:`~convlearn.geometry.Footprint`, so the trainer can
line the model's output up with it. Steps are written in YAML with ``_target_`` (see
``configs/target/``); the notebook's edge+blur is one such preset. Kernels are applied by
cross-correlation, like ``tf.nn.conv2d`` and the notebook, to each channel separately.

:func:`template` cuts a patch out of a prepared image to use as a kernel: the notebook's template
matching, where the patch of the blurred edge map lights up where the same shape appears.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from convlearn import geometry
from convlearn.errors import ConvlearnError
from convlearn.geometry import Footprint

BORDERS = {"zero": "CONSTANT", "reflect": "REFLECT", "symmetric": "SYMMETRIC", "edge": None}


class Convolve:
    """Correlate every channel with one 2-D kernel.

    ``padding='valid'`` shrinks the image by ``kernel size - 1`` (the notebook's choice);
    ``'same'`` keeps its size, filling the border by ``border``: zero, reflect, symmetric or edge.
    """

    def __init__(self, kernel: np.ndarray, padding: str = "valid", border: str = "zero") -> None:
        kernel = np.asarray(kernel, dtype=np.float64)
        if kernel.ndim != 2 or kernel.size == 0:
            raise ConvlearnError(f"target: a kernel must be a non-empty 2-D matrix, got shape {kernel.shape}")
        check_border(border)
        self.kernel = kernel
        self.padding = padding
        self.border = border
        self.footprint = geometry.conv(kernel.shape, padding)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        channels = images.shape[-1]
        weights = tf.constant(np.repeat(self.kernel[:, :, None, None], channels, axis=2), images.dtype)
        if self.padding == "same":
            images = pad(images, self.kernel.shape, self.border)
        return tf.nn.depthwise_conv2d(images, weights, strides=[1, 1, 1, 1], padding="VALID")

    def linear_kernel(self) -> np.ndarray | None:
        # A padded border is not part of any kernel, so only VALID steps compose exactly.
        return self.kernel if self.padding == "valid" else None


class Combine:
    """Apply several kernels to the same image and merge the responses pointwise.

    ``how``: ``magnitude`` (sqrt of the sum of squares, the notebook's edge strength), ``sum`` or
    ``max``. All kernels must have the same shape so the responses line up.
    """

    HOW = {
        "magnitude": lambda rs: tf.sqrt(tf.add_n([r * r for r in rs])),
        "sum": tf.add_n,
        "max": lambda rs: tf.reduce_max(tf.stack(rs), axis=0),
    }

    def __init__(
        self, kernels: Sequence[np.ndarray], how: str = "magnitude", padding: str = "valid", border: str = "zero"
    ) -> None:
        if how not in self.HOW:
            raise ConvlearnError(f"target: combine how must be one of {sorted(self.HOW)}, got '{how}'")
        self.convolutions = [Convolve(k, padding, border) for k in kernels]
        shapes = {c.kernel.shape for c in self.convolutions}
        if len(shapes) != 1:
            raise ConvlearnError(f"target: combined kernels must share one shape, got {sorted(shapes)}")
        self.how = how
        self.footprint = self.convolutions[0].footprint

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return self.HOW[self.how]([conv(images) for conv in self.convolutions])

    def linear_kernel(self) -> np.ndarray | None:
        kernels = [c.linear_kernel() for c in self.convolutions]
        if self.how != "sum" or any(k is None for k in kernels):
            return None
        return np.sum(kernels, axis=0)


class Repeat:
    """Apply one step ``n`` times (the notebook blurs five times)."""

    def __init__(self, step: Convolve, n: int) -> None:
        if n < 1:
            raise ConvlearnError(f"target: repeat n must be >= 1, got {n}")
        self.step = step
        self.n = n
        self.footprint = geometry.chain([step.footprint] * n)

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        for _ in range(self.n):
            images = self.step(images)
        return images

    def linear_kernel(self) -> np.ndarray | None:
        kernel = self.step.linear_kernel()
        return None if kernel is None else compose_kernels([kernel] * self.n)


class Pointwise:
    """A pixel-by-pixel function: abs, square, sqrt, relu, clip(low, high), threshold(level),
    or affine (``gain * x + offset``)."""

    def __init__(
        self, op: str, low: float = 0.0, high: float = 1.0, level: float = 0.5, gain: float = 1.0, offset: float = 0.0
    ) -> None:
        ops = {
            "abs": tf.abs,
            "square": tf.square,
            "sqrt": lambda x: tf.sqrt(tf.maximum(x, 0.0)),
            "relu": tf.nn.relu,
            "clip": lambda x: tf.clip_by_value(x, low, high),
            "threshold": lambda x: tf.cast(x > level, x.dtype),
            "affine": lambda x: gain * x + offset,
        }
        if op not in ops:
            raise ConvlearnError(f"target: pointwise op must be one of {sorted(ops)}, got '{op}'")
        self.op = op
        self.fn = ops[op]
        self.gain, self.offset = gain, offset
        self.footprint = Footprint()

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        return self.fn(images)

    def linear_kernel(self) -> np.ndarray | None:
        if self.op == "affine" and self.offset == 0.0:
            return np.full((1, 1), float(self.gain))
        return None


class Pipeline:
    """A target transform: steps applied in order, with their combined footprint.

    ``params`` are a preset's knobs (``repeats: 5``), kept on the target so that the steps can
    refer to them (``n: ${target.repeats}``) and a user can override them (``target.repeats=3``).
    """

    def __init__(self, steps: Sequence, name: str = "target", **params: object) -> None:
        if not steps:
            raise ConvlearnError(f"target '{name}': a pipeline needs at least one step")
        self.steps = list(steps)
        self.name = name
        self.params = params
        self.footprint = geometry.chain([s.footprint for s in self.steps])

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        for step in self.steps:
            images = step(images)
        return images

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Transform one ``(height, width)`` or ``(height, width, channels)`` NumPy image."""
        batch = image[None, ..., None] if image.ndim == 2 else image[None]
        out = self(tf.constant(batch, tf.float32)).numpy()[0]
        return out[..., 0] if image.ndim == 2 else out

    def linear_kernel(self) -> np.ndarray | None:
        """The single kernel equivalent to the whole pipeline, or None if it is not linear."""
        kernels = [step.linear_kernel() for step in self.steps]
        return None if any(k is None for k in kernels) else compose_kernels(kernels)


def footprint_of(target: Pipeline | None) -> Footprint:
    """A target transform's footprint; without one (data=pairs, whose target images are given
    pixel for pixel) the identity."""
    return Footprint() if target is None else target.footprint


def compose_kernels(kernels: Sequence[np.ndarray]) -> np.ndarray:
    """One kernel equal to correlating with each of ``kernels`` in turn (VALID, no border).

    Correlating with a then b equals correlating once with the full *convolution* of a and b.
    """
    total = np.ones((1, 1))
    for kernel in kernels:
        rows = total.shape[0] + kernel.shape[0] - 1
        cols = total.shape[1] + kernel.shape[1] - 1
        out = np.zeros((rows, cols))
        for i, j in np.ndindex(*kernel.shape):
            out[i : i + total.shape[0], j : j + total.shape[1]] += kernel[i, j] * total
        total = out
    return total


# The notebook's template: edges_blurred[210:243, 246:282] on its 300x400 image, whose blurred
# edge map is 279x379. Other images get the same region scaled to their size.
NOTEBOOK_ROWS = (210, 243)
NOTEBOOK_COLS = (246, 282)
NOTEBOOK_SHAPE = (279, 379)


def template(
    image: object,
    prepare: Pipeline,
    rows: Sequence[int] | None = None,
    cols: Sequence[int] | None = None,
    reference_shape: Sequence[int] | None = NOTEBOOK_SHAPE,
) -> np.ndarray:
    """A patch of ``prepare(image)`` to use as a kernel (template matching).

    ``rows`` and ``cols`` are ``[start, stop)`` pixel ranges in an image of ``reference_shape``;
    on a prepared image of another size they are scaled to the same relative region (at least one
    pixel), so the notebook's slices work on any image. ``reference_shape: null`` takes them as
    they are. A range left at None is the notebook's patch, scaled to the image, so either can be
    given alone. ``image`` is a 2-D array or the data group's images (the first training image).
    """
    image = _first_gray(image)
    prepared = prepare.apply(image)
    patch = tuple(
        _scaled_range(name, notebook, size, reference) if span is None
        else _scaled_range(name, span, size, size if reference_shape is None else reference_shape[axis])
        for axis, (name, span, notebook, size, reference) in enumerate(
            zip(("rows", "cols"), (rows, cols), (NOTEBOOK_ROWS, NOTEBOOK_COLS), prepared.shape, NOTEBOOK_SHAPE)
        )
    )
    return prepared[patch[0], patch[1]].astype(np.float64)


def _first_gray(image: object) -> np.ndarray:
    train = getattr(image, "train", None)  # the data group's Images: use the first training image
    array = np.asarray(train[0][..., 0] if train else image, np.float32)
    if array.ndim != 2:
        raise ConvlearnError(f"target.image: template matching needs a 2-D image, got shape {array.shape}")
    return array


def _scaled_range(name: str, span: Sequence[int], size: int, reference: int) -> slice:
    if len(span) != 2 or not 0 <= span[0] < span[1] <= reference:
        raise ConvlearnError(
            f"target.{name}: need [start, stop] with 0 <= start < stop <= {reference}, got {list(span)}"
        )
    start = min(int(round(span[0] * size / reference)), size - 1)
    stop = max(start + 1, min(int(round(span[1] * size / reference)), size))
    return slice(start, stop)


def check_border(border: str) -> None:
    """Refuse a border mode that :func:`pad` does not know, in one line."""
    if border not in BORDERS:
        raise ConvlearnError(f"target: border must be one of {sorted(BORDERS)}, got '{border}'")


def pad(images: tf.Tensor, kernel_shape: tuple[int, int], border: str) -> tf.Tensor:
    """Pad ``images`` so that a VALID ``kernel_shape`` window gives a ``same``-size output centred
    like TensorFlow's (the extra pixel of an even kernel after), the border filled by ``border``."""
    (kh, kw) = kernel_shape
    paddings = [[0, 0], [(kh - 1) // 2, kh // 2], [(kw - 1) // 2, kw // 2], [0, 0]]
    if BORDERS[border] is not None:
        return tf.pad(images, paddings, mode=BORDERS[border])
    # Edge mode: repeat the outermost row/column, which tf.pad cannot do.
    for axis, (before, after) in ((1, paddings[1]), (2, paddings[2])):
        first = tf.gather(images, [0] * before, axis=axis)
        last = tf.gather(images, [images.shape[axis] - 1] * after, axis=axis)
        images = tf.concat([first, images, last], axis=axis)
    return images
