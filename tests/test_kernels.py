"""The kernel library against SciPy's filters and hand-computed cases."""

import numpy as np
import pytest
from scipy import ndimage, signal

from convlearn import kernels
from convlearn.errors import ConvlearnError

RNG = np.random.default_rng(7)
IMAGE = RNG.random((24, 30))


def interior(full: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Crop a same-size filter output to the pixels a VALID correlation with ``kernel`` covers."""
    kh, kw = kernel.shape
    return full[kh // 2 : full.shape[0] - (kh - 1) // 2, kw // 2 : full.shape[1] - (kw - 1) // 2]


def correlate(kernel: np.ndarray) -> np.ndarray:
    return signal.correlate2d(IMAGE, kernel, mode="valid")


@pytest.mark.parametrize(
    ("kernel", "reference"),
    [
        (kernels.sobel("x"), lambda im: ndimage.sobel(im, axis=1)),
        (kernels.sobel("y"), lambda im: ndimage.sobel(im, axis=0)),
        (kernels.prewitt("x"), lambda im: ndimage.prewitt(im, axis=1)),
        (kernels.prewitt("y"), lambda im: ndimage.prewitt(im, axis=0)),
        (kernels.laplacian(4), ndimage.laplace),
        (kernels.box(3), lambda im: ndimage.uniform_filter(im, 3)),
        (kernels.gaussian(1.5), lambda im: ndimage.gaussian_filter(im, 1.5, truncate=5 / 1.5)),
        (kernels.gaussian(0.8, size=7), lambda im: ndimage.gaussian_filter(im, 0.8, truncate=3 / 0.8)),
    ],
    ids=["sobel_x", "sobel_y", "prewitt_x", "prewitt_y", "laplacian4", "box3", "gaussian1.5", "gaussian0.8x7"],
)
def test_kernels_match_scipy_filters(kernel: np.ndarray, reference) -> None:
    np.testing.assert_allclose(correlate(kernel), interior(reference(IMAGE), kernel), atol=1e-12)


def test_scharr_is_sobel_with_3_10_3_smoothing() -> None:
    expected = np.array([[-3, 0, 3], [-10, 0, 10], [-3, 0, 3]], dtype=float)
    np.testing.assert_array_equal(kernels.scharr("x"), expected)
    np.testing.assert_array_equal(kernels.scharr("y"), expected.T)


def test_derivatives_are_positive_on_a_rising_ramp() -> None:
    ramp = np.add.outer(np.arange(8.0), 2 * np.arange(8.0))  # +1 per row, +2 per column
    for name in ("sobel", "scharr", "prewitt"):
        gx = signal.correlate2d(ramp, kernels.by_name(name, axis="x"), mode="valid")
        gy = signal.correlate2d(ramp, kernels.by_name(name, axis="y"), mode="valid")
        smoothing = kernels.by_name(name, axis="x")[:, 2].sum()
        np.testing.assert_allclose(gx, 2 * 2 * smoothing)
        np.testing.assert_allclose(gy, 1 * 2 * smoothing)


def test_laplacian_8_neighbours_and_zero_on_planes() -> None:
    expected = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], dtype=float)
    np.testing.assert_array_equal(kernels.laplacian(8), expected)
    plane = np.add.outer(3 * np.arange(6.0), np.arange(6.0))
    for n in (4, 8):
        np.testing.assert_allclose(signal.correlate2d(plane, kernels.laplacian(n), mode="valid"), 0, atol=1e-12)


def test_notebook_kernels() -> None:
    np.testing.assert_array_equal(kernels.edge_vertical(), [[1, -1], [1, -1]])
    np.testing.assert_array_equal(kernels.edge_horizontal(), [[1, 1], [-1, -1]])
    g = kernels.gaussian_273()
    assert g.shape == (5, 5) and g[2, 2] == 41 / 273 and np.isclose(g.sum(), 1.0)


def test_gaussian_default_size_and_normalisation() -> None:
    g = kernels.gaussian(2.0)
    assert g.shape == (13, 13)
    assert np.isclose(g.sum(), 1.0)
    assert np.unravel_index(g.argmax(), g.shape) == (6, 6)
    np.testing.assert_allclose(g, g.T)


def test_identity_and_sharpen() -> None:
    np.testing.assert_array_equal(kernels.identity(3), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    s = kernels.sharpen(amount=0.5, sigma=1.0)
    assert np.isclose(s.sum(), 1.0)  # flat regions keep their brightness
    blurred = ndimage.gaussian_filter(IMAGE, 1.0, truncate=3.0)
    by_hand = IMAGE + 0.5 * (IMAGE - blurred)
    np.testing.assert_allclose(correlate(s), interior(by_hand, s), atol=1e-12)


def test_emboss_is_antisymmetric_around_its_centre() -> None:
    e = kernels.emboss()
    assert e.sum() == 1.0 and e[1, 1] == 1.0
    off_centre = e.copy()
    off_centre[1, 1] = 0
    np.testing.assert_array_equal(off_centre, -off_centre[::-1, ::-1])


def test_motion_blur_lines() -> None:
    np.testing.assert_allclose(kernels.motion_blur(5, 0)[2], np.full(5, 0.2))
    np.testing.assert_allclose(kernels.motion_blur(5, 0).sum(axis=1), [0, 0, 1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(kernels.motion_blur(5, 90), kernels.motion_blur(5, 0).T, atol=1e-12)
    diagonal = kernels.motion_blur(7, 45)
    assert np.isclose(diagonal.sum(), 1.0)
    np.testing.assert_allclose(diagonal, diagonal[::-1, ::-1].T, atol=1e-12)  # symmetric about the line
    assert diagonal[1, 5] > 0 and diagonal[5, 5] == 0  # 45 deg runs from bottom left to top right


def test_custom_and_by_name() -> None:
    np.testing.assert_array_equal(kernels.custom([[0, 1], [2, 3]]), [[0.0, 1.0], [2.0, 3.0]])
    np.testing.assert_array_equal(kernels.by_name("box", size=2), np.full((2, 2), 0.25))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: kernels.sobel("z"), "sobel: axis must be one of ['x', 'y'], got 'z'"),
        (lambda: kernels.laplacian(6), "laplacian: neighbours must be 4 or 8, got 6"),
        (lambda: kernels.gaussian(0), "gaussian: sigma must be > 0, got 0"),
        (lambda: kernels.gaussian(1.0, size=4), "gaussian: size must be a positive odd integer, got 4"),
        (lambda: kernels.custom([[1, 2], [3]]), "custom: values must be a rectangular matrix of numbers"),
        (lambda: kernels.custom([1, 2]), "custom: values must be a non-empty 2-D matrix, got shape (2,)"),
        (lambda: kernels.custom([[1, float("nan")]]), "custom: values must be finite numbers"),
        (lambda: kernels.by_name("blur"), "kernel: unknown name 'blur'"),
        (lambda: kernels.by_name("box", sigma=2), "kernel 'box': box() got an unexpected keyword argument"),
    ],
)
def test_bad_parameters_give_one_line_errors(call, message: str) -> None:
    with pytest.raises(ConvlearnError) as info:
        call()
    assert str(info.value).startswith(message)
