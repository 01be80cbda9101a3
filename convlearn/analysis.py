"""Kernel analysis: what single kernel a model computes, and the best any single kernel can do.

The notebook asks whether the first layers "indeed extract the edges"; this module answers in
numbers. :func:`effective_kernel` turns any model into one kernel (exactly for a stack of linear
convs, the input gradient of one output pixel otherwise); :func:`lstsq_kernel` finds the best
kernel of a given size in closed form; :func:`recovery_metrics` compares a trained model with that
best kernel and with a linear target's true kernel (:mod:`convlearn.lstsq` solves a linear model
with the same least squares). Kernels are in cross-correlation order, like Keras'
``Conv2D``.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from convlearn import geometry
from convlearn.data import Batch
from convlearn.errors import ConvlearnError
from convlearn.models import conv_layers, footprint
from convlearn.targets import Pipeline, compose_kernels

# Rows of the design matrix per QR update: large enough for fast BLAS, small enough to keep
# memory flat on big images and kernels.
CHUNK_ROWS = 8192


def _dilated(kernel: np.ndarray, dilation: tuple[int, int]) -> np.ndarray:
    """The kernel with ``dilation - 1`` zeros between its taps: what a dilated conv applies."""
    rows, cols = kernel.shape[:2]
    out = np.zeros(((rows - 1) * dilation[0] + 1, (cols - 1) * dilation[1] + 1, *kernel.shape[2:]))
    out[:: dilation[0], :: dilation[1]] = kernel
    return out


def is_linear_stack(model: keras.Model) -> bool:
    """Whether the model is only convolutions without activation (so one kernel computes it)."""
    convs = conv_layers(model)
    return len(convs) == len(model.layers) and all(layer.activation is keras.activations.linear for layer in convs)


def composed_kernel(model: keras.Model) -> np.ndarray:
    """The single ``(rows, cols, in, out)`` kernel of a stack of linear convs (biases ignored).

    Correlating with ``a`` then ``b`` is correlating with their full convolution; over several
    channels the compositions are summed over the channels in between.
    """
    if not is_linear_stack(model):
        raise ConvlearnError(f"model '{model.name}': composed_kernel needs convs without activations only")
    total = None
    for layer in conv_layers(model):
        kernel = _dilated(np.asarray(layer.kernel.numpy(), np.float64), tuple(layer.dilation_rate))
        if total is None:
            total = kernel
            continue
        rows, cols = total.shape[0] + kernel.shape[0] - 1, total.shape[1] + kernel.shape[1] - 1
        out = np.zeros((rows, cols, total.shape[2], kernel.shape[3]))
        for a, mid, b in np.ndindex(total.shape[2], total.shape[3], kernel.shape[3]):
            out[:, :, a, b] += compose_kernels([total[:, :, a, mid], kernel[:, :, mid, b]])
        total = out
    return total


def linearised_kernel(model: keras.Model, image: np.ndarray | None = None, channel: int = 0) -> np.ndarray:
    """The gradient of the centre output pixel with respect to its receptive field: the kernel
    the model applies to small changes of ``image`` (``(H, W)`` or ``(H, W, C)``) around that pixel.

    Without an image the model is linearised at a zero input of twice its receptive field. For a
    linear model this is its kernel exactly, whatever the image. Returns ``(rows, cols, in)``.
    """
    fp = footprint(model)
    if image is None:
        image = np.zeros((2 * fp.extent[0], 2 * fp.extent[1], model.input_shape[-1]))
    image = np.asarray(image, np.float32)
    image = image[..., None] if image.ndim == 2 else image
    # The centre output pixel, and the first input pixel of its receptive field (positions are
    # doubled, see geometry.Footprint).
    centre = [(image.shape[axis] - fp.shrink[axis]) // 2 for axis in (0, 1)]
    start = [(fp.shift2[axis] + 2 * centre[axis] - (fp.extent[axis] - 1)) // 2 for axis in (0, 1)]
    if min(centre + start) < 0 or any(start[a] + fp.extent[a] > image.shape[a] for a in (0, 1)):
        raise ConvlearnError(
            f"linearised kernel: image {image.shape[0]}x{image.shape[1]} does not hold the centre pixel's "
            f"receptive field {fp.extent[0]}x{fp.extent[1]}"
        )
    # That pixel depends on its receptive field alone, so the model runs on just that window:
    # the same gradient as on the whole image, at a tiny fraction of the cost.
    window = image[start[0] : start[0] + fp.extent[0], start[1] : start[1] + fp.extent[1]]
    inputs = tf.constant(window[None])
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        pixel = model(inputs, training=False)[0, centre[0] - start[0], centre[1] - start[1], channel]
    return tape.gradient(pixel, inputs)[0].numpy().astype(np.float64)


def effective_kernel(model: keras.Model, image: np.ndarray | None = None) -> np.ndarray:
    """The 2-D kernel from input channel 0 to output channel 0: composed exactly for a linear
    stack, linearised at the centre of ``image`` otherwise."""
    if is_linear_stack(model):
        return composed_kernel(model)[:, :, 0, 0]
    return linearised_kernel(model, image)[:, :, 0]


def kernel_rel_error(learned: np.ndarray, true: np.ndarray) -> float:
    """``||learned - true|| / ||true||`` with both kernels zero-padded, centred, to one size."""
    shape = [max(a, b) for a, b in zip(learned.shape, true.shape)]
    if any((s - a) % 2 or (s - b) % 2 for s, a, b in zip(shape, learned.shape, true.shape)):
        raise ConvlearnError(
            f"kernels {learned.shape} and {true.shape} cannot be centred on each other: their sizes "
            "must differ by an even number"
        )

    def centred(kernel: np.ndarray) -> np.ndarray:
        pad = [((s - k) // 2, (s - k) // 2) for s, k in zip(shape, kernel.shape)]
        return np.pad(np.asarray(kernel, np.float64), pad)

    return float(np.linalg.norm(centred(learned) - centred(true)) / np.linalg.norm(true))


def lstsq_kernel(
    images: np.ndarray, targets: np.ndarray, size: tuple[int, int], use_bias: bool = False
) -> tuple[np.ndarray, float, float]:
    """The ``size`` kernel (and bias) whose VALID correlation with ``images`` best fits ``targets``.

    ``images`` is one ``(H, W)`` image or a stack ``(N, H, W)``, and ``targets`` the
    ``(H - rows + 1, W - cols + 1)`` values wanted at the kernel's VALID outputs (stacked alike).
    Solved in float64 by a chunked QR of ``[patches | targets]`` (im2col + least squares without
    the whole design matrix in memory). Returns (kernel, bias, mean squared residual).
    """
    images = np.asarray(images, np.float64)
    targets = np.asarray(targets, np.float64)
    if images.ndim == 2:
        images, targets = images[None], targets[None]
    windows = np.lib.stride_tricks.sliding_window_view(images, size, axis=(1, 2))
    if windows.shape[:3] != targets.shape:
        raise ConvlearnError(
            f"least squares: a {size[0]}x{size[1]} kernel on {images.shape[1]}x{images.shape[2]} images gives "
            f"{windows.shape[1]}x{windows.shape[2]} outputs, but the targets are {targets.shape[1]}x{targets.shape[2]}"
        )
    unknowns = size[0] * size[1] + int(use_bias)
    rows_per_chunk = max(1, CHUNK_ROWS // windows.shape[2])
    r = np.zeros((0, unknowns + 1))
    for image_windows, image_targets in zip(windows, targets):
        for start in range(0, len(image_targets), rows_per_chunk):
            patches = image_windows[start : start + rows_per_chunk].reshape(-1, size[0] * size[1])
            wanted = image_targets[start : start + rows_per_chunk].reshape(-1, 1)
            ones = [np.ones_like(wanted)] if use_bias else []
            # Only R of [X | y] is needed: X^T X = R^T R, so R of the stacked chunks is R of all rows.
            r = np.linalg.qr(np.vstack([r, np.hstack([patches, *ones, wanted])]), mode="r")
    solution = np.linalg.lstsq(r[:unknowns, :unknowns], r[:unknowns, unknowns], rcond=None)[0]
    residual = r[unknowns, unknowns] ** 2 if r.shape[0] > unknowns else 0.0
    kernel = solution[: size[0] * size[1]].reshape(size)
    bias = float(solution[-1]) if use_bias else 0.0
    return kernel, bias, float(residual / targets.size)


def windows_at(images: np.ndarray, centres: tuple[slice, slice], size: tuple[int, int]) -> np.ndarray:
    """The part of ``images`` (``(..., H, W)``) whose VALID correlation with a ``size`` kernel
    gives the outputs centred on ``centres`` (rows, cols): the input pixels at their centres,
    rounded down where they fall between pixels, as :attr:`geometry.Crops.inputs` gives them.

    The kernel's size must have the parity of the outputs' (odd for whole-pixel centres), which
    holds for any model's receptive field and a target's kernel lined up with it. Pixels beyond
    the image read as zero, as for a ``same`` conv.
    """
    pads, cuts = [(0, 0)] * (images.ndim - 2), []
    for axis, (centre, length) in enumerate(zip(centres, size)):
        start = centre.start - (length - 1) // 2
        stop = centre.stop - (length - 1) // 2 + length - 1
        before, after = max(0, -start), max(0, stop - images.shape[axis - 2])
        pads.append((before, after))
        cuts.append(slice(start + before, stop + before))
    return np.pad(images, pads)[..., cuts[0], cuts[1]]


def _aligned(image: np.ndarray, target: Pipeline, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Input window and target values over the pixels a ``size`` VALID conv and the target both
    cover (the crop training uses)."""
    crops = geometry.align(geometry.conv(size), target.footprint, image.shape)
    return windows_at(image, crops.inputs, size), target.apply(image)[crops.target]


def lstsq_fit(
    image: np.ndarray, target: Pipeline, size: tuple[int, int], use_bias: bool = False
) -> tuple[np.ndarray, float, float]:
    """The best ``size`` kernel for ``target`` on the ``(H, W)`` ``image``, over the pixels the
    kernel and the target both cover. Returns (kernel, bias, MSE)."""
    return lstsq_kernel(*_aligned(np.asarray(image, np.float64), target, size), size, use_bias)


def recovery_metrics(model: keras.Model, batch: Batch, target: Pipeline | None) -> dict[str, float]:
    """How a trained model compares with the best single kernel, on ``batch``'s compared pixels.

    ``lstsq_rel_mse``: the MSE over the targets' variance of the best kernel no larger than the
    model's receptive field, the best any linear model of that size can do, so that a linear
    model's ``rel_mse`` can be read against it; for a linear target and for given targets
    (``target`` None: data=pairs). ``kernel_rel_error``: the model's effective kernel against a
    linear target's own. Empty for a non-linear target or images of several channels.
    """
    true = None if target is None else target.linear_kernel()
    if (target is not None and true is None) or batch.inputs.shape[-1] != 1:
        return {}
    images = batch.inputs.numpy()[..., 0].astype(np.float64)
    targets = batch.targets.numpy()[..., 0]
    size = footprint(model).extent
    if true is not None:
        # A kernel larger than the true one fits no better (both fit exactly), so solve the smaller
        # problem: a 22x22 receptive field would otherwise cost a 484-unknown least squares.
        size = tuple(min(e, t) for e, t in zip(size, true.shape))
    _, _, residual = lstsq_kernel(windows_at(images, batch.crops.inputs, size), targets, size)
    metrics = {"lstsq_rel_mse": residual / float(np.var(targets, dtype=np.float64))}
    if true is not None:
        metrics["kernel_rel_error"] = kernel_rel_error(effective_kernel(model, images[0]), true)
    return metrics
