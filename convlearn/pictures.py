"""Arrays as pictures a person can read: colour maps, side-by-side panels, kernel grids.

Shared by the TensorBoard logger, the run's ``report.png`` and ``scripts/inspect_run.py``.
Kernels are tiny (2x2, 3x3), so they are enlarged with nearest-neighbour and drawn on a diverging
map centred on zero: red is positive, blue negative, white zero.

Every function takes any float array a run can produce (values near the float32 limits, NaN,
infinities, constant arrays, one pixel, a hundred channels): colour scales are taken over the
finite values only, NaN is drawn black, +inf and -inf in the top and bottom colours.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from matplotlib import colormaps

IMAGE_CMAP = "viridis"
KERNEL_CMAP = "RdBu_r"


def colorize(array: np.ndarray, vmin: float, vmax: float, cmap: str = IMAGE_CMAP) -> np.ndarray:
    """An array as uint8 RGB (one more axis of 3), mapped linearly from [vmin, vmax]; NaN is black.

    The same colours as calling the matplotlib colour map, which computes float RGBA for every
    pixel; looking them up in its uint8 table takes half the time, and a picture event colours
    over a million pixels."""
    table = _colour_table(cmap)
    top = len(table) - 2  # the last entry is NaN's
    # Halved so that the difference of two float64 values near the float64 limit cannot overflow;
    # over/underflow below only drives values to the ends of the scale, where they are clipped.
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        span = vmax / 2 - vmin / 2
        scale = (np.asarray(array, np.float64) / 2 - vmin / 2) / (span if span > 0 else 0.5)
        # matplotlib's binning: entry floor(scale * N), the top edge falling in the last one.
        index = np.clip(scale * (top + 1), 0, top)
    return table[np.where(np.isnan(index), top + 1, index).astype(np.intp)]


def finite_range(array: np.ndarray) -> tuple[float, float]:
    """(min, max) of the finite values of ``array``; (0, 0) when it has none, so that a colour
    scale is always finite even for a diverged layer."""
    values = np.asarray(array, np.float64)
    finite = values[np.isfinite(values)]
    return (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)


def finite_limit(arrays: list[np.ndarray]) -> float:
    """The largest finite magnitude over ``arrays`` (1.0 when there is none or it is 0): the half
    width of a symmetric diverging scale."""
    limit = max(max(abs(low), abs(high)) for low, high in map(finite_range, arrays))
    return limit or 1.0


@functools.cache
def _colour_table(cmap: str) -> np.ndarray:
    """The colour map's N entries as uint8 RGB, then black for NaN (matplotlib's 'bad' colour)."""
    colours = colormaps[cmap](np.arange(colormaps[cmap].N))[:, :3]
    return np.concatenate([(colours * 255).round().astype(np.uint8), np.zeros((1, 3), np.uint8)])


def panel(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Equal-height RGB images side by side, separated by white gaps."""
    height = max(image.shape[0] for image in images)
    spacer = np.full((height, gap, 3), 255, np.uint8)
    parts = []
    for image in images:
        pad = height - image.shape[0]
        parts += [np.pad(image, ((0, pad), (0, 0), (0, 0)), constant_values=255), spacer]
    return np.concatenate(parts[:-1], axis=1)


def comparison(inputs: np.ndarray, target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """input | target | prediction | |error|, target and prediction on one colour scale."""
    low, high = finite_range(np.stack([target, prediction]))
    error = absolute_error(target, prediction)
    return panel(
        [
            colorize(inputs, *finite_range(inputs), "gray"),
            colorize(target, low, high),
            colorize(prediction, low, high),
            colorize(error, 0.0, max(finite_range(error)[1], 1e-12), "magma"),
        ]
    )


def absolute_error(target: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """|prediction - target| in float64, where the difference of two float32 values near the
    limits stays finite; inf - inf is NaN (drawn as missing), without NumPy's warning on a diverged run."""
    with np.errstate(invalid="ignore"):
        return np.abs(np.asarray(prediction, np.float64) - np.asarray(target, np.float64))


def enlarge(array: np.ndarray, factor: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Nearest-neighbour upscaling of two axes (the first two by default)."""
    return np.repeat(np.repeat(array, factor, axis=axes[0]), factor, axis=axes[1])


def kernel_grid(kernel: np.ndarray, cell: int = 48, gap: int = 2) -> np.ndarray:
    """A Conv2D kernel ``(kh, kw, in, out)`` as an RGB grid: one row per input channel, one column
    per output channel, on a symmetric diverging scale so that zero is white."""
    kh, kw = kernel.shape[:2]
    limit = finite_limit([kernel])
    # (in, out, kh, kw) tiles, coloured in one call: wide layers have hundreds of them.
    tiles = colorize(np.transpose(kernel, (2, 3, 0, 1)), -limit, limit, KERNEL_CMAP)
    return tile_grid(enlarge(tiles, max(1, cell // max(kh, kw)), axes=(2, 3)), gap)


def kernel_row(kernels: list[np.ndarray], cell: int = 192, gap: int = 8) -> np.ndarray:
    """2-D kernels side by side on one symmetric diverging scale and one enlargement factor, so
    that their sizes and values compare directly (a model's effective kernel next to the target's)."""
    factor = max(1, cell // max(max(k.shape) for k in kernels))
    limit = finite_limit(kernels)
    return panel([enlarge(colorize(k, -limit, limit, KERNEL_CMAP), factor) for k in kernels], gap)


def channel_grid(maps: np.ndarray, max_side: int = 1024, gap: int = 2) -> np.ndarray:
    """Feature maps ``(H, W, C)`` as a near-square RGB grid of channels on one shared colour scale.

    Large layers (100 channels of a 300x400 image) would make pictures of many megapixels, so each
    map is subsampled by a whole stride until the grid fits in ``max_side`` pixels.
    """
    height, width, channels = maps.shape
    cols = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / cols)
    stride = max(1, math.ceil(max(rows * height, cols * width) / max_side))
    maps = np.moveaxis(maps[::stride, ::stride], 2, 0)
    tiles = colorize(maps, *finite_range(maps))
    # Pad the last row of the grid with white tiles.
    blank = np.full((rows * cols - channels, *tiles.shape[1:]), 255, np.uint8)
    return tile_grid(np.concatenate([tiles, blank]).reshape(rows, cols, *tiles.shape[1:]), gap)


def tile_grid(tiles: np.ndarray, gap: int = 2) -> np.ndarray:
    """RGB tiles ``(rows, cols, h, w, 3)`` as one picture with white gaps between them."""
    rows, cols, height, width, _ = tiles.shape
    padded = np.pad(tiles, ((0, 0), (0, 0), (0, gap), (0, gap), (0, 0)), constant_values=255)
    grid = padded.transpose(0, 2, 1, 3, 4).reshape(rows * (height + gap), cols * (width + gap), 3)
    return grid[: rows * (height + gap) - gap, : cols * (width + gap) - gap]
