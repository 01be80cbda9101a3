"""Non-linear image operators as target steps: rank filters, the bilateral filter, tone curves
and local contrast.

The question "can a conv net learn this transform?" gets interesting where the transform is not
a convolution, so these are the operators people use that no kernel computes. Each is a step of a
:class:`convlearn.targets.Pipeline` like the linear ones (a callable on ``(batch, height, width,
channels)`` tensors with a :class:`~convlearn.geometry.Footprint`), written in TensorFlow so that
it runs on every batch of random patches inside the ``tf.data`` pipeline. Windowed operators take
``padding``: ``valid`` shrinks the image by the window size - 1 (the model lines up with the
centre), ``same`` keeps its size and fills the border by ``border`` (zero, reflect, symmetric,
edge), as ``scipy.ndimage`` does with ``constant``, ``mirror``, ``reflect`` and ``nearest``.
Every channel is filtered on its own.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from convlearn import geometry
from convlearn.errors import ConvlearnError
from convlearn.geometry import Footprint
from convlearn.kernels import gaussian
from convlearn.targets import check_border, pad

SHAPES = ("square", "disk")
RANKS = ("median", "min", "max")


def window(size: int, shape: str = "square") -> np.ndarray:
    """The boolean ``size x size`` footprint of a rank filter: every pixel (``square``) or those
    within ``size // 2`` of the centre (``disk``, like ``skimage.morphology.disk``)."""
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ConvlearnError(f"target.size: a window needs a positive odd size (a centre pixel), got {size!r}")
    if shape not in SHAPES:
        raise ConvlearnError(f"target.shape: must be one of {', '.join(SHAPES)}, got '{shape}'")
    if shape == "square":
        return np.ones((size, size), bool)
    offsets = np.arange(size) - size // 2
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= (size // 2) ** 2


class Windowed:
    """What every windowed operator shares: its footprint and the stack of pixels it looks at."""

    def __init__(self, mask: np.ndarray, padding: str, border: str) -> None:
        check_border(border)
        self.mask = mask
        self.padding = padding
        self.border = border
        self.footprint: Footprint = geometry.conv(mask.shape, padding)

    def neighbours(self, images: tf.Tensor) -> tf.Tensor:
        """``(batch, rows, cols, channels, n)``: the ``n`` pixels of the window around each output
        pixel, in row-major order of the window."""
        if self.padding == "same":
            images = pad(images, self.mask.shape, self.border)
        rows = tf.shape(images)[1] - self.mask.shape[0] + 1
        cols = tf.shape(images)[2] - self.mask.shape[1] + 1
        return tf.stack([images[:, i : i + rows, j : j + cols, :] for i, j in zip(*np.nonzero(self.mask))], axis=-1)

    def linear_kernel(self) -> None:
        """No kernel computes a non-linear operator."""
        return None


class Rank(Windowed):
    """A rank filter over a ``size`` square or disk: ``median``, ``min`` (grey erosion) or ``max``
    (grey dilation). An opening is ``min`` then ``max``, a closing ``max`` then ``min``. Windows
    have odd sizes, so a window holds an odd number of pixels and its median is one of them.
    """

    def __init__(
        self, op: str = "median", size: int = 3, shape: str = "square", padding: str = "valid", border: str = "zero"
    ) -> None:
        if op not in RANKS:
            raise ConvlearnError(f"target.op: a rank filter is one of {', '.join(RANKS)}, got '{op}'")
        super().__init__(window(size, shape), padding, border)
        self.op = op

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        # TensorFlow's CPU reductions flush subnormal floats (below 1.2e-38) to zero on some paths
        # and not on others, so min, median and max of the same subnormal window could disagree;
        # flushed here first, they are ordered on every image.
        tiny = np.finfo(np.float32).tiny
        values = self.neighbours(tf.where(tf.abs(images) < tiny, tf.zeros_like(images), images))
        if self.op == "min":
            return tf.reduce_min(values, axis=-1)
        if self.op == "max":
            return tf.reduce_max(values, axis=-1)
        # The middle of an odd count is the (count // 2 + 1)-th largest.
        return tf.math.top_k(values, k=values.shape[-1] // 2 + 1, sorted=True).values[..., -1]


class Bilateral(Windowed):
    """The bilateral filter (Tomasi & Manduchi 1998): a Gaussian blur whose weights also fall with
    the difference from the centre pixel, so edges larger than ``sigma_range`` stay sharp.

    ``out(p) = sum_q w(q) x(q) / sum_q w(q)``, ``w(q) = exp(-|q - p|^2 / (2 sigma_spatial^2)
    - (x(q) - x(p))^2 / (2 sigma_range^2))`` over a square window of ``size`` (default
    ``max(5, 2 * ceil(3 * sigma_spatial) + 1)``, scikit-image's). In ``same`` mode the filled
    border pixels take part like any other, as in ``skimage.restoration.denoise_bilateral``.
    """

    def __init__(
        self,
        sigma_spatial: float = 1.0,
        sigma_range: float = 0.1,
        size: int | None = None,
        padding: str = "valid",
        border: str = "zero",
    ) -> None:
        if not (sigma_spatial > 0 and sigma_range > 0):
            raise ConvlearnError(
                f"target: bilateral sigmas must be > 0, got sigma_spatial={sigma_spatial}, sigma_range={sigma_range}"
            )
        size = max(5, 2 * math.ceil(3 * sigma_spatial) + 1) if size is None else size
        super().__init__(window(size), padding, border)
        self.sigma_spatial, self.sigma_range = sigma_spatial, sigma_range
        offsets = np.arange(size) - size // 2
        distance2 = offsets[:, None] ** 2 + offsets[None, :] ** 2
        self.spatial = np.exp(-distance2 / (2 * sigma_spatial**2)).ravel()

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        values = self.neighbours(images)
        centre = values[..., values.shape[-1] // 2 : values.shape[-1] // 2 + 1]
        range_weight = tf.exp(-tf.square(values - centre) / (2 * self.sigma_range**2))
        weights = tf.constant(self.spatial, values.dtype) * range_weight
        # The centre's own weight is 1, so the sum is never zero.
        return tf.reduce_sum(weights * values, axis=-1) / tf.reduce_sum(weights, axis=-1)


class Curve:
    """A tone curve, pixel by pixel: ``gamma`` (``gain * x ** gamma``, negative pixels as 0, like
    ``skimage.exposure.adjust_gamma``) or ``sigmoid`` (``1 / (1 + exp(gain * (cutoff - x)))``, a
    contrast S-curve around ``cutoff``, like ``skimage.exposure.adjust_sigmoid``)."""

    KINDS = ("gamma", "sigmoid")

    def __init__(self, kind: str = "gamma", gamma: float = 0.5, gain: float = 1.0, cutoff: float = 0.5) -> None:
        if kind not in self.KINDS:
            raise ConvlearnError(f"target.kind: a tone curve is one of {', '.join(self.KINDS)}, got '{kind}'")
        if kind == "gamma" and not gamma > 0:
            raise ConvlearnError(f"target.gamma: must be > 0, got {gamma}")
        self.kind, self.gamma, self.gain, self.cutoff = kind, gamma, gain, cutoff
        self.footprint = Footprint()

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        if self.kind == "gamma":
            return self.gain * tf.pow(tf.maximum(images, 0.0), self.gamma)
        return tf.sigmoid(self.gain * (images - self.cutoff))

    def linear_kernel(self) -> None:
        """A curve other than the identity is not a kernel."""
        return None


class LocalContrast(Windowed):
    """Local contrast: the image plus ``amount`` times its difference from a Gaussian blur of
    ``sigma`` (an unsharp mask), clipped to ``[low, high]``; the clipping makes it non-linear.

    The blur's window is ``size`` (default ``2 * ceil(3 * sigma) + 1``), so ``valid`` shrinks the
    image by ``size - 1``.
    """

    def __init__(
        self,
        sigma: float = 2.0,
        amount: float = 1.0,
        size: int | None = None,
        low: float = 0.0,
        high: float = 1.0,
        padding: str = "valid",
        border: str = "zero",
    ) -> None:
        kernel = gaussian(sigma, size)
        super().__init__(window(kernel.shape[0]), padding, border)
        self.kernel, self.amount, self.low, self.high = kernel, amount, low, high

    def __call__(self, images: tf.Tensor) -> tf.Tensor:
        channels = images.shape[-1]
        weights = tf.constant(np.repeat(self.kernel[:, :, None, None], channels, axis=2), images.dtype)
        padded = pad(images, self.kernel.shape, self.border) if self.padding == "same" else images
        blurred = tf.nn.depthwise_conv2d(padded, weights, strides=[1, 1, 1, 1], padding="VALID")
        if self.padding == "valid":
            margin = self.kernel.shape[0] // 2
            images = images[:, margin : margin + tf.shape(blurred)[1], margin : margin + tf.shape(blurred)[2], :]
        return tf.clip_by_value(images + self.amount * (images - blurred), self.low, self.high)


def difference_of_gaussians(sigma: float = 1.0, ratio: float = 1.6, size: int | None = None) -> np.ndarray:
    """The kernel of a difference of Gaussians, ``G(sigma) - G(ratio * sigma)``: a band-pass that
    approximates the Laplacian of Gaussian (up to scale) for ``ratio`` near 1.6. Both Gaussians on
    one window of ``size`` (default the wider one's ``2 * ceil(3 * ratio * sigma) + 1``); linear, so
    it is a kernel for :class:`convlearn.targets.Convolve`."""
    if not ratio > 1:
        raise ConvlearnError(f"target.ratio: the second Gaussian must be wider (ratio > 1), got {ratio}")
    wide = gaussian(ratio * sigma, size)
    return gaussian(sigma, wide.shape[0]) - wide
