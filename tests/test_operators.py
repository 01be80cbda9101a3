"""The non-linear operators against scipy.ndimage / scikit-image on random images, border included,
and what holds for every image (hypothesis)."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import ndimage
from skimage.exposure import adjust_gamma, adjust_sigmoid
from skimage.filters import unsharp_mask
from skimage.morphology import disk

from convlearn.config import build
from convlearn.errors import ConvlearnError
from convlearn.geometry import align
from convlearn.models import footprint, linear
from convlearn.operators import Bilateral, Curve, LocalContrast, Rank, difference_of_gaussians, window
from convlearn.pipeline import run_experiment
from convlearn.targets import Convolve, Pipeline

# convlearn's border names and scipy.ndimage's modes for the same fill.
SCIPY_MODES = {"zero": "constant", "reflect": "mirror", "symmetric": "reflect", "edge": "nearest"}
RANK_FILTERS = {"median": ndimage.median_filter, "min": ndimage.minimum_filter, "max": ndimage.maximum_filter}
BORDERS = sorted(SCIPY_MODES)


def random_image(shape: tuple = (11, 13), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def apply(step: object, image: np.ndarray) -> np.ndarray:
    return Pipeline([step]).apply(image)


def expected(reference: np.ndarray, padding: str, margin: int) -> np.ndarray:
    """A full-size reference as the operator gives it: whole in `same` mode, its centre in `valid`."""
    return reference if padding == "same" else reference[margin:-margin, margin:-margin]


def bilateral_reference(image: np.ndarray, sigma_spatial: float, sigma_range: float, size: int, mode: str) -> np.ndarray:
    """The bilateral sum written out per window, scipy.ndimage doing the windows and the border.

    Not skimage.restoration.denoise_bilateral: in scikit-image 0.26 its response to one bright
    pixel is not symmetric about that pixel, so it cannot be the reference.
    """
    offsets = np.arange(size) - size // 2
    spatial = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * sigma_spatial**2)).ravel()

    def pixel(values: np.ndarray) -> float:
        weights = spatial * np.exp(-((values - values[values.size // 2]) ** 2) / (2 * sigma_range**2))
        return float(np.sum(weights * values) / np.sum(weights))

    return ndimage.generic_filter(image.astype(np.float64), pixel, size=size, mode=mode, cval=0.0)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("border", BORDERS)
@pytest.mark.parametrize("shape", ["square", "disk"])
@pytest.mark.parametrize("op", sorted(RANK_FILTERS))
def test_rank_filters_match_scipy(op, shape, border, padding):
    image = random_image()
    mask = window(5, shape)
    reference = RANK_FILTERS[op](image, footprint=mask, mode=SCIPY_MODES[border], cval=0.0)
    got = apply(Rank(op, 5, shape, padding, border), image)
    # A rank filter picks one of the pixels: exactly, not just to rounding.
    np.testing.assert_array_equal(got, expected(reference, padding, 2))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("border", BORDERS)
def test_opening_and_closing_match_scipy(border, padding):
    image = random_image(seed=1)
    mode = SCIPY_MODES[border]
    for first, then, reference in (("min", "max", ndimage.grey_opening), ("max", "min", ndimage.grey_closing)):
        pipeline = Pipeline([Rank(first, 3, "square", padding, border), Rank(then, 3, "square", padding, border)])
        np.testing.assert_array_equal(
            pipeline.apply(image), expected(reference(image, size=3, mode=mode, cval=0.0), padding, 2)
        )


def test_disk_is_scikit_images():
    for size in (1, 3, 5, 7, 9):
        np.testing.assert_array_equal(window(size, "disk"), disk(size // 2).astype(bool))


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("border", BORDERS)
def test_bilateral_matches_the_written_out_sum(border, padding):
    image = random_image(seed=3)
    reference = bilateral_reference(image, 1.0, 0.2, 5, SCIPY_MODES[border])
    got = apply(Bilateral(1.0, 0.2, 5, padding, border), image)
    np.testing.assert_allclose(got, expected(reference, padding, 2), rtol=2e-6, atol=2e-6)


def test_bilateral_window_defaults_to_scikit_images():
    assert Bilateral(1.0).mask.shape == (7, 7) and Bilateral(0.5).mask.shape == (5, 5)
    assert Bilateral(1.0).footprint.shrink == (6, 6) and Bilateral(1.0, padding="same").footprint.shrink == (0, 0)


def test_tone_curves_match_scikit_image():
    image = random_image(seed=5)
    np.testing.assert_allclose(apply(Curve("gamma", gamma=0.45, gain=1.2), image),
                               adjust_gamma(image, 0.45, gain=1.2), rtol=1e-6)
    np.testing.assert_allclose(apply(Curve("sigmoid", gain=8.0, cutoff=0.4), image),
                               adjust_sigmoid(image, cutoff=0.4, gain=8.0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("border", BORDERS)
def test_local_contrast_matches_scipy(border, padding):
    image = random_image(seed=6)
    blurred = ndimage.gaussian_filter(image.astype(np.float64), 1.0, radius=3, mode=SCIPY_MODES[border], cval=0.0)
    reference = np.clip(image + 1.5 * (image - blurred), 0.0, 1.0)
    got = apply(LocalContrast(sigma=1.0, amount=1.5, padding=padding, border=border), image)
    np.testing.assert_allclose(got, expected(reference, padding, 3), rtol=1e-6, atol=1e-6)


def test_local_contrast_is_scikit_images_unsharp_mask():
    # skimage's unsharp mask: a Gaussian cut at 4 sigma, the border mirrored with its edge pixel, clipped to [0, 1].
    image = random_image((16, 17), seed=7)
    ours = apply(LocalContrast(sigma=1.0, amount=2.0, size=9, padding="same", border="symmetric"), image)
    np.testing.assert_allclose(ours, unsharp_mask(image, radius=1.0, amount=2.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("border", BORDERS)
def test_difference_of_gaussians_matches_scipy(border):
    image = random_image(seed=8)
    kernel = difference_of_gaussians(1.0, 1.6)
    mode, radius = SCIPY_MODES[border], kernel.shape[0] // 2
    reference = (ndimage.gaussian_filter(image.astype(np.float64), 1.0, radius=radius, mode=mode, cval=0.0)
                 - ndimage.gaussian_filter(image.astype(np.float64), 1.6, radius=radius, mode=mode, cval=0.0))
    got = apply(Convolve(kernel, "same", border), image)
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-6)


def test_operators_filter_every_channel_on_its_own():
    image = random_image((9, 10, 3), seed=9)
    for step in (Rank("median"), Bilateral(1.0, 0.2, 5), LocalContrast(1.0)):
        together = apply(step, image)
        for channel in range(3):
            np.testing.assert_allclose(together[..., channel], apply(step, image[..., channel]), rtol=1e-6, atol=1e-7)


def test_a_model_half_a_pixel_off_gets_one_line():
    model = linear(kernel_size=2)  # shrinks by 1; the median 3x3 by 2
    with pytest.raises(ConvlearnError, match="half a pixel apart"):
        align(footprint(model), Rank("median", 3).footprint, (32, 32))


@pytest.mark.parametrize("bad", [dict(op="mean"), dict(size=4), dict(shape="hexagon"), dict(border="wrap")])
def test_rank_mistakes_get_one_line(bad):
    with pytest.raises(ConvlearnError):
        Rank(**bad)


def test_other_mistakes_get_one_line():
    for make in (lambda: Bilateral(0.0), lambda: Curve("log"), lambda: Curve("gamma", gamma=0),
                 lambda: difference_of_gaussians(1.0, 0.5)):
        with pytest.raises(ConvlearnError):
            make()


# Small random images for the properties: 5 to 10 pixels a side, values in [0, 1].
images = st.tuples(st.integers(5, 10), st.integers(5, 10)).flatmap(
    lambda shape: arrays(np.float32, shape, elements=st.floats(0, 1, width=32))
)
FAST = settings(max_examples=25, deadline=None)


@FAST
@given(images)
@example(np.full((5, 5), 1e-45, np.float32))  # subnormal: TensorFlow's reductions once flushed some, not others
def test_rank_filters_are_ordered(image):
    low, middle, high = (apply(Rank(op, 3, "disk"), image) for op in ("min", "median", "max"))
    assert np.all(low <= middle) and np.all(middle <= high)


@FAST
@given(images, st.floats(0.2, 5.0))
def test_rank_filters_commute_with_an_increasing_curve(image, gamma):
    curve = Curve("gamma", gamma=gamma)
    for op in RANK_FILTERS:
        # Equal up to the curve's rounding, which TensorFlow's vectorised pow may do differently per pixel.
        np.testing.assert_allclose(apply(Rank(op), apply(curve, image)), apply(curve, apply(Rank(op), image)), rtol=1e-6)


@FAST
@given(images, st.floats(0.01, 1.0))
def test_bilateral_stays_between_the_window_min_and_max(image, sigma_range):
    smooth = apply(Bilateral(1.0, sigma_range, 5), image)
    assert np.all(smooth >= apply(Rank("min", 5), image) - 1e-6)
    assert np.all(smooth <= apply(Rank("max", 5), image) + 1e-6)


@FAST
@given(images)
def test_bilateral_with_a_wide_range_is_a_gaussian_blur(image):
    step = Bilateral(1.0, 1e4, 5)
    blur = step.spatial.reshape(5, 5) / step.spatial.sum()
    np.testing.assert_allclose(apply(step, image), apply(Convolve(blur), image), rtol=1e-5, atol=1e-6)


@FAST
@given(images, st.sampled_from(BORDERS))
def test_valid_is_the_centre_of_same(image, border):
    for make in (lambda p: Rank("median", 3, "disk", p, border), lambda p: Bilateral(0.5, 0.3, 5, p, border),
                 lambda p: LocalContrast(0.6, 2.0, padding=p, border=border)):
        margin = make("valid").mask.shape[0] // 2
        np.testing.assert_allclose(
            apply(make("valid"), image), apply(make("same"), image)[margin:-margin, margin:-margin], rtol=1e-6, atol=1e-7
        )


PRESET_STEPS = {
    "median": ["median"], "dilation": ["max"], "erosion": ["min"], "opening": ["min", "max"], "closing": ["max", "min"],
}


@pytest.mark.parametrize("preset", sorted(PRESET_STEPS))
def test_rank_presets_and_their_footprints(make_cfg, preset):
    target = build(make_cfg(f"target={preset}", "target.size=5", "target.shape=disk"), "target")
    assert [step.op for step in target.steps] == PRESET_STEPS[preset]
    assert all(np.array_equal(step.mask, disk(2)) for step in target.steps)
    assert target.footprint.shrink == (4 * len(target.steps),) * 2 and target.linear_kernel() is None
    same = build(make_cfg(f"target={preset}", "target.padding=same", "target.border=edge"), "target")
    assert same.footprint.shrink == (0, 0) and same.steps[0].border == "edge"


def test_windowed_presets_know_their_shrink(make_cfg):
    shrinks = {"bilateral": 6, "local_contrast": 12, "dog": 10, "gamma": 0, "sigmoid": 0}
    for preset, shrink in shrinks.items():
        assert build(make_cfg(f"target={preset}"), "target").footprint.shrink == (shrink, shrink), preset


def test_a_model_that_cannot_line_up_with_the_median_stops_in_one_line(make_cfg, tmp_path):
    cfg = make_cfg("target=median", "model=linear", "model.kernel_size=4")
    with pytest.raises(ConvlearnError, match="half a pixel apart"):
        run_experiment(cfg, tmp_path)


def test_the_documented_median_then_gamma_composes():
    # The example of docs/operators.md.
    spec = OmegaConf.create("""
_target_: convlearn.targets.Pipeline
name: median_gamma
steps:
  - {_target_: convlearn.operators.Rank, op: median, size: 3}
  - {_target_: convlearn.operators.Curve, kind: gamma, gamma: 0.5}
""")
    pipeline, image = instantiate(spec), random_image(seed=10)
    assert pipeline.footprint.shrink == (2, 2)
    np.testing.assert_allclose(pipeline.apply(image), np.sqrt(ndimage.median_filter(image, 3)[1:-1, 1:-1]), rtol=1e-6)
