"""The kernel library: classic image operators that targets are built from.

Every function returns a float64 2-D array. Kernels are applied by cross-correlation
(as ``tf.nn.conv2d`` and the notebook do), not flipped convolution, so a derivative kernel
``[-1, 0, 1]`` is positive where intensity grows to the right (``x``) or downwards (``y``).
"""

from collections.abc import Callable, Sequence

import numpy as np

from convlearn.errors import ConvlearnError

_AXES = ("x", "y")


def edge_vertical() -> np.ndarray:
    """The notebook's vertical-edge kernel ``[[1, -1], [1, -1]]``."""
    return np.array([[1.0, -1.0], [1.0, -1.0]])


def edge_horizontal() -> np.ndarray:
    """The notebook's horizontal-edge kernel ``[[1, 1], [-1, -1]]``."""
    return np.array([[1.0, 1.0], [-1.0, -1.0]])


def _derivative(smoothing: Sequence[float], axis: str, name: str) -> np.ndarray:
    """A 3x3 first-derivative kernel: central difference along ``axis``, ``smoothing`` across it."""
    if axis not in _AXES:
        raise ConvlearnError(f"{name}: axis must be one of {list(_AXES)}, got {axis!r}")
    kernel = np.outer(np.asarray(smoothing, dtype=np.float64), [-1.0, 0.0, 1.0])
    return kernel if axis == "x" else kernel.T


def sobel(axis: str = "x") -> np.ndarray:
    """Sobel derivative: difference ``[-1, 0, 1]`` along ``axis``, smoothing ``[1, 2, 1]`` across."""
    return _derivative([1, 2, 1], axis, "sobel")


def scharr(axis: str = "x") -> np.ndarray:
    """Scharr derivative: like Sobel with smoothing ``[3, 10, 3]`` (better rotational symmetry)."""
    return _derivative([3, 10, 3], axis, "scharr")


def prewitt(axis: str = "x") -> np.ndarray:
    """Prewitt derivative: difference ``[-1, 0, 1]`` along ``axis``, box smoothing across."""
    return _derivative([1, 1, 1], axis, "prewitt")


def laplacian(neighbours: int = 4) -> np.ndarray:
    """Discrete Laplacian over the 4-neighbourhood (cross) or the 8-neighbourhood (full 3x3)."""
    if neighbours == 4:
        return np.array([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
    if neighbours == 8:
        kernel = np.ones((3, 3))
        kernel[1, 1] = -8.0
        return kernel
    raise ConvlearnError(f"laplacian: neighbours must be 4 or 8, got {neighbours!r}")


def _odd_size(size: int | None, default: int, name: str) -> int:
    size = default if size is None else size
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ConvlearnError(f"{name}: size must be a positive odd integer, got {size!r}")
    return size


def gaussian(sigma: float = 1.0, size: int | None = None) -> np.ndarray:
    """Sampled isotropic Gaussian, normalised to sum 1; ``size`` defaults to ``2*ceil(3*sigma)+1``."""
    if not sigma > 0:
        raise ConvlearnError(f"gaussian: sigma must be > 0, got {sigma!r}")
    size = _odd_size(size, 2 * int(np.ceil(3 * sigma)) + 1, "gaussian")
    offsets = np.arange(size) - size // 2
    profile = np.exp(-(offsets**2) / (2 * sigma**2))
    kernel = np.outer(profile, profile)
    return kernel / kernel.sum()


def gaussian_273() -> np.ndarray:
    """The notebook's 5x5 integer Gaussian divided by 273 (sums to 1)."""
    weights = [[1, 4, 7, 4, 1], [4, 16, 26, 16, 4], [7, 26, 41, 26, 7], [4, 16, 26, 16, 4], [1, 4, 7, 4, 1]]
    return np.array(weights, dtype=np.float64) / 273


def box(size: int = 3) -> np.ndarray:
    """Box blur: the mean over a ``size`` x ``size`` window."""
    if not isinstance(size, int) or size < 1:
        raise ConvlearnError(f"box: size must be a positive integer, got {size!r}")
    return np.full((size, size), 1.0 / size**2)


def identity(size: int = 1) -> np.ndarray:
    """A centred delta: leaves the image unchanged (with ``same`` padding)."""
    size = _odd_size(size, 1, "identity")
    kernel = np.zeros((size, size))
    kernel[size // 2, size // 2] = 1.0
    return kernel


def sharpen(amount: float = 1.0, sigma: float = 1.0, size: int | None = None) -> np.ndarray:
    """Unsharp mask: ``image + amount * (image - gaussian_blur(image))`` as one kernel."""
    blur = gaussian(sigma, size)
    delta = identity(blur.shape[0])
    return delta + amount * (delta - blur)


def emboss() -> np.ndarray:
    """Emboss: a diagonal derivative plus the image itself, lit from the top left."""
    return np.array([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])


def motion_blur(length: int = 9, angle: float = 0.0) -> np.ndarray:
    """Average along a centred line of ``length`` pixels at ``angle`` degrees (0 = horizontal,
    counter-clockwise). Pixels are weighted by ``1 - distance`` to the segment (an anti-aliased
    line), so 0 and 90 degrees give an exact row or column."""
    size = _odd_size(length, length, "motion_blur")
    theta = np.deg2rad(angle)
    direction = np.array([np.cos(theta), -np.sin(theta)])  # (x, y), rows grow downwards
    half = (size - 1) / 2
    y, x = np.mgrid[:size, :size] - half
    along = np.clip(x * direction[0] + y * direction[1], -half, half)
    distance = np.hypot(x - along * direction[0], y - along * direction[1])
    kernel = np.clip(1.0 - distance, 0.0, None)
    return kernel / kernel.sum()


def custom(values: Sequence[Sequence[float]]) -> np.ndarray:
    """Any kernel written as a matrix, e.g. ``values: [[0, 1], [1, 0]]`` in YAML."""
    try:
        kernel = np.array(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConvlearnError(f"custom: values must be a rectangular matrix of numbers, got {values!r}") from None
    if kernel.ndim != 2 or kernel.size == 0:
        raise ConvlearnError(f"custom: values must be a non-empty 2-D matrix, got shape {kernel.shape}")
    if not np.isfinite(kernel).all():
        raise ConvlearnError("custom: values must be finite numbers")
    return kernel


LIBRARY: dict[str, Callable[..., np.ndarray]] = {
    fn.__name__: fn
    for fn in (edge_vertical, edge_horizontal, sobel, scharr, prewitt, laplacian, gaussian,
               gaussian_273, box, identity, sharpen, emboss, motion_blur, custom)
}


def by_name(name: str, **params: object) -> np.ndarray:
    """Look a kernel up by its function name, e.g. ``by_name("sobel", axis="y")``."""
    if name not in LIBRARY:
        raise ConvlearnError(f"kernel: unknown name {name!r}; choose from {sorted(LIBRARY)}")
    try:
        return LIBRARY[name](**params)
    except TypeError as err:
        raise ConvlearnError(f"kernel {name!r}: {err}") from None
