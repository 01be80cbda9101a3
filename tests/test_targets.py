"""Target pipelines against NumPy/SciPy references, and every preset in configs/target/ training."""

import json

import keras
import numpy as np
import pytest
from conftest import ROOT
from scipy.ndimage import correlate

from convlearn import kernels
from convlearn.config import build
from convlearn.data import shapes
from convlearn.errors import ConvlearnError
from convlearn.pipeline import build_experiment, run_experiment
from convlearn.targets import Combine, Convolve, Pipeline, Pointwise, Repeat, compose_kernels, template
from convlearn.training import mse

PRESETS = sorted(p.stem for p in (ROOT / "configs" / "target").glob("*.yaml"))

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


def test_template_is_the_notebooks_patch_on_a_notebook_sized_image():
    image = shapes(300, 400, seed=1)
    prepared = edge_blur().apply(image)
    assert prepared.shape == (279, 379)
    assert np.array_equal(template(image, edge_blur()), prepared[210:243, 246:282])


def test_template_slices_scale_to_a_small_image_and_can_be_taken_as_pixels():
    image = shapes(40, 48, seed=1)
    prepared = edge_blur().apply(image)  # 19x27
    patch = template(image, edge_blur())
    # 210/279 .. 243/279 of 19 rows -> 14..17; 246/379 .. 282/379 of 27 cols -> 18..20
    assert np.array_equal(patch, prepared[14:17, 18:20])
    exact = template(image, edge_blur(), rows=[2, 5], cols=[3, 4], reference_shape=None)
    assert np.array_equal(exact, prepared[2:5, 3:4])
    # One range as pixels, the other left to the notebook's, scaled.
    assert np.array_equal(template(image, edge_blur(), rows=[2, 5], reference_shape=None), prepared[2:5, 18:20])
    with pytest.raises(ConvlearnError, match=r"target.cols: need \[start, stop\] .* got \[5, 40\]"):
        template(image, edge_blur(), rows=[2, 5], cols=[5, 40], reference_shape=None)


def test_template_match_at_the_patch_origin_is_the_patch_energy():
    image = shapes(120, 160, n_circles=4, n_squares=4, min_size=5, max_size=12, seed=3)
    prepared = edge_blur().apply(image)
    rows, cols = slice(40, 60), slice(60, 80)
    kernel = template(image, edge_blur(), rows=[40, 60], cols=[60, 80], reference_shape=None)
    match = Pipeline([Convolve(kernel)]).apply(prepared)
    assert np.allclose(match, reference_valid(prepared, kernel), atol=1e-3 * np.abs(match).max())
    # Where the patch was cut, it is correlated with itself: the sum of its squares.
    assert np.isclose(match[rows.start, cols.start], np.sum(kernel**2), rtol=1e-4)


def test_padded_pipeline_keeps_the_shape_through_every_step():
    image = np.random.default_rng(9).random((17, 21))
    steps = [Convolve(kernels.sobel("x"), "same", "reflect"), Pointwise("abs"), Repeat(Convolve(kernels.box(3), "same", "edge"), 2)]
    out = Pipeline(steps).apply(image)
    assert out.shape == image.shape
    expected = np.abs(correlate(image, kernels.sobel("x"), mode="mirror"))
    for _ in range(2):
        expected = correlate(expected, kernels.box(3), mode="nearest")
    assert np.allclose(out, expected, atol=1e-5)
    assert Pipeline(steps).footprint.shrink == (0, 0)


def test_pointwise_ops_match_numpy():
    x = np.linspace(-2, 2, 20).reshape(4, 5)
    cases = {
        Pointwise("abs"): np.abs(x),
        Pointwise("square"): x**2,
        Pointwise("sqrt"): np.sqrt(np.maximum(x, 0)),
        Pointwise("relu"): np.maximum(x, 0),
        Pointwise("clip", low=-0.5, high=0.5): np.clip(x, -0.5, 0.5),
        Pointwise("threshold", level=0.3): (x > 0.3).astype(float),
        Pointwise("affine", gain=3.0, offset=-1.0): 3 * x - 1,
    }
    for step, expected in cases.items():
        assert np.allclose(Pipeline([step]).apply(x), expected, atol=1e-6), step.op


def test_combine_sum_and_max_equal_the_steps_done_by_hand():
    image = np.random.default_rng(10).random((12, 14))
    a, b = kernels.sobel("x"), kernels.laplacian(8)
    by_hand = [reference_valid(image, a), reference_valid(image, b)]
    assert np.allclose(Pipeline([Combine([a, b], how="sum")]).apply(image), by_hand[0] + by_hand[1], atol=1e-5)
    assert np.allclose(Pipeline([Combine([a, b], how="max")]).apply(image), np.maximum(*by_hand), atol=1e-5)
    assert np.allclose(Pipeline([Combine([a, b], how="sum")]).linear_kernel(), a + b)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_lines_up_with_the_default_model(make_cfg, preset):
    # `python train.py target=<preset>`: the notebook model's `edge_size: auto` lines it up with any
    # preset; everything a run builds before its first step, and the loss on the first batch.
    experiment = build_experiment(make_cfg(f"target={preset}"))
    assert experiment.target.name == preset
    first_layer = experiment.model.get_layer("conv_00").kernel
    assert tuple(first_layer.shape[:2]) == tuple(2 if s % 2 else 3 for s in experiment.target.footprint.shift2)
    assert np.isfinite(mse(experiment.model, experiment.feed.preview)) and mse(experiment.model, experiment.feed.preview) > 0


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["edge_blur", "median", "bilateral"])  # linear, rank, edge-preserving
def test_presets_train_with_the_default_model(make_cfg, tmp_path, preset):
    summary = run_experiment(make_cfg(f"target={preset}", "trainer.steps=2"), tmp_path).metrics
    assert summary["steps"] == 2 and all(np.isfinite(summary["losses"])) and summary["losses"][0] > 0
    assert json.loads((tmp_path / "metrics.json").read_text())["final_loss"] == summary["final_loss"]


def test_presets_include_the_issue_list():
    assert {"edge_blur", "sobel_magnitude", "gaussian", "laplacian", "sharpen", "emboss", "motion_blur", "custom",
            "template_match"} <= set(PRESETS)


def test_preset_knobs_reach_the_kernels(make_cfg):
    gaussian = build(make_cfg("target=gaussian", "target.sigma=2.0", "target.padding=same", "target.border=reflect"), "target")
    assert np.allclose(gaussian.steps[0].kernel, kernels.gaussian(2.0)) and gaussian.linear_kernel() is None
    assert gaussian.footprint.shrink == (0, 0)
    custom = build(make_cfg("target=custom", "target.values=[[0,1,0],[1,-4,1],[0,1,0]]"), "target")
    assert np.array_equal(custom.linear_kernel(), kernels.laplacian(4))
