import keras
import numpy as np
import pytest
from scipy.ndimage import correlate

from convlearn import kernels
from convlearn.data import shapes
from convlearn.errors import ConvlearnError
from convlearn.targets import Combine, Convolve, Pipeline, Pointwise, Repeat, compose_kernels



def reference_valid(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """VALID cross-correlation written out as sums of shifted images (independent of TF)."""
    kh, kw = kernel.shape
    rows, cols = image.shape[0] - kh + 1, image.shape[1] - kw + 1
    out = np.zeros((rows, cols))
    for i, j in np.ndindex(kh, kw):
        out += kernel[i, j] * image[i : i + rows, j : j + cols]
    return out


def reference_edge_blur(image: np.ndarray, repeats: int = 5) -> np.ndarray:
    vertical = reference_valid(image, np.array([[1.0, -1.0], [1.0, -1.0]]))
    horizontal = reference_valid(image, np.array([[1.0, 1.0], [-1.0, -1.0]]))
    out = np.sqrt(vertical**2 + horizontal**2)
    blur = np.array([[1, 4, 7, 4, 1], [4, 16, 26, 16, 4], [7, 26, 41, 26, 7], [4, 16, 26, 16, 4], [1, 4, 7, 4, 1]]) / 273
    for _ in range(repeats):
        out = reference_valid(out, blur)
    return out


def edge_blur(repeats: int = 5) -> Pipeline:
    edges = Combine([kernels.edge_vertical(), kernels.edge_horizontal()], how="magnitude")
    return Pipeline([edges, Repeat(Convolve(kernels.gaussian_273()), repeats)], name="edge_blur")


def test_reference_valid_agrees_with_scipy():
    image = np.random.default_rng(0).random((12, 15))
    kernel = np.random.default_rng(1).random((3, 3))
    assert np.allclose(reference_valid(image, kernel), correlate(image, kernel, mode="constant")[1:-1, 1:-1])


@pytest.mark.parametrize("repeats", [1, 5])
def test_edge_blur_matches_the_notebook_reference(repeats):
    image = shapes(50, 60, n_circles=3, n_squares=3, min_size=4, max_size=12, seed=2).astype(np.float64)
    target = edge_blur(repeats)
    out = target.apply(image)
    expected = reference_edge_blur(image, repeats)
    assert out.shape == expected.shape == (50 - 1 - 4 * repeats, 60 - 1 - 4 * repeats)
    assert np.abs(out - expected).max() < 1e-5
    assert target.footprint.shrink == (1 + 4 * repeats,) * 2


def test_conv2d_layer_with_assigned_edge_kernels_reproduces_the_edge_maps():
    """The notebook's point: a Keras Conv2D with the edge kernels assigned is the same operator."""
    image = shapes(30, 40, seed=5)
    layer = keras.layers.Conv2D(filters=2, kernel_size=2, use_bias=False)
    layer.build((None, None, None, 1))
    weights = np.stack([kernels.edge_horizontal(), kernels.edge_vertical()], axis=-1)[:, :, None, :]
    layer.kernel.assign(weights.astype(np.float32))
    result = layer(image[None, ..., None]).numpy()[0]
    assert np.allclose(result[..., 0], reference_valid(image, kernels.edge_horizontal()), atol=1e-6)
    assert np.allclose(result[..., 1], reference_valid(image, kernels.edge_vertical()), atol=1e-6)


def test_same_padding_keeps_the_shape_and_matches_scipy_borders():
    image = np.random.default_rng(3).random((9, 11))
    kernel = np.random.default_rng(4).random((3, 3))
    for border, mode in [("zero", "constant"), ("reflect", "mirror"), ("edge", "nearest"), ("symmetric", "reflect")]:
        out = Pipeline([Convolve(kernel, padding="same", border=border)]).apply(image)
        assert out.shape == image.shape
        assert np.allclose(out, correlate(image, kernel, mode=mode), atol=1e-5), border


def test_linear_pipelines_report_their_composed_kernel():
    image = np.random.default_rng(6).random((20, 20))
    a, b = np.random.default_rng(7).random((3, 3)), np.random.default_rng(8).random((2, 4))
    pipeline = Pipeline([Convolve(a), Repeat(Convolve(b), 2), Pointwise("affine", gain=2.0)])
    kernel = pipeline.linear_kernel()
    assert kernel.shape == (3 + 2 * 1, 3 + 2 * 3)
    assert np.allclose(pipeline.apply(image), reference_valid(image, kernel), atol=1e-5)
    assert edge_blur().linear_kernel() is None
    assert np.allclose(compose_kernels([a]), a)


def test_pipeline_errors_are_one_line():
    with pytest.raises(ConvlearnError, match="combined kernels must share one shape"):
        Combine([np.ones((2, 2)), np.ones((3, 3))])
    with pytest.raises(ConvlearnError, match="pointwise op must be one of"):
        Pointwise("cube")
    with pytest.raises(ConvlearnError, match="repeat n must be >= 1"):
        Repeat(Convolve(np.ones((3, 3))), 0)
