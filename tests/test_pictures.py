"""Pictures: colour scales, kernel grids and channel grids read the way a person expects."""

import math

import numpy as np
import pytest
from matplotlib import colormaps

from convlearn import pictures

WHITE = np.array([255, 255, 255])


def test_kernel_grid_is_enlarged_and_centred_on_zero():
    kernel = np.zeros((2, 2, 1, 2), np.float32)
    kernel[0, 0, 0, 0], kernel[1, 1, 0, 0], kernel[0, 1, 0, 1] = 1.0, -1.0, 0.5
    grid = pictures.kernel_grid(kernel, cell=48, gap=2)

    assert grid.shape == (48, 2 * 48 + 2, 3)
    tile = grid[:, :48]
    # Each 2x2 tap is a uniform 24x24 block (nearest-neighbour, no blending).
    assert (tile[:24, :24] == tile[0, 0]).all() and (tile[24:, 24:] == tile[-1, -1]).all()
    positive, negative, zero = tile[0, 0].astype(int), tile[-1, -1].astype(int), tile[0, -1].astype(int)
    assert positive[0] > positive[2] and negative[2] > negative[0]  # red positive, blue negative
    assert np.abs(zero - WHITE).max() < 12  # zero is (nearly) white on the diverging map
    assert (grid[:, 48:50] == 255).all()  # white gap between output channels


def test_kernel_row_shares_one_scale_and_one_enlargement():
    small, large = np.array([[1.0]]), np.array([[0.5, 0.0], [0.0, -0.5]])
    row = pictures.kernel_row([small, large], cell=40, gap=4)
    factor = 40 // 2
    assert row.shape == (2 * factor, factor + 4 + 2 * factor, 3)
    # One scale for both: the 0.5 tap is a paler red than the 1.0 tap.
    assert not np.array_equal(row[0, 0], row[0, factor + 4])
    assert row[0, factor + 4, 1] > row[0, 0, 1]


def test_channel_grid_subsamples_large_layers_and_shares_the_scale():
    maps = np.zeros((300, 400, 100), np.float32)
    maps[..., 7] = 1.0
    grid = pictures.channel_grid(maps, max_side=1024, gap=2)

    assert max(grid.shape[:2]) <= 1024
    stride = int(np.ceil(10 * 400 / 1024))
    tile_h, tile_w = -(-300 // stride), -(-400 // stride)
    assert grid.shape[:2] == (10 * (tile_h + 2) - 2, 10 * (tile_w + 2) - 2)
    bright = grid[0, 7 * (tile_w + 2)]
    dark = grid[0, 0]
    assert not np.array_equal(bright, dark)  # channel 7 stands out on the shared scale


def test_comparison_uses_one_scale_for_target_and_prediction():
    target = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
    picture = pictures.comparison(np.zeros((4, 5)), target, target.copy())
    assert picture.shape == (4, 4 * 5 + 3 * 4, 3)
    target_part, prediction_part = picture[:, 9:14], picture[:, 18:23]
    assert np.array_equal(target_part, prediction_part)
    assert len({tuple(px) for px in target_part.reshape(-1, 3)}) > 10  # a colour map, not one grey


@pytest.mark.parametrize("cmap", ["viridis", "gray", "magma", "RdBu_r"])
def test_colorize_gives_the_colour_maps_own_colours(cmap):
    values = np.random.default_rng(0).normal(size=(6, 40, 50)).astype(np.float32)
    values[0, 0, :6] = [np.nan, np.inf, -np.inf, -1.0, 1.0, 0.0]  # out of range, the edges, NaN
    for low, high in [(-1.0, 1.0), (0.0, 0.0), (-3.0, 0.5)]:
        # matplotlib's colour map on the clipped scale: float RGBA per pixel, rounded to uint8.
        scale = np.clip((values.astype(np.float64) - low) / (high - low if high > low else 1.0), 0.0, 1.0)
        expected = (colormaps[cmap](scale)[..., :3] * 255).round().astype(np.uint8)
        assert np.array_equal(pictures.colorize(values, low, high, cmap), expected)
    assert (pictures.colorize(values, -1.0, 1.0, cmap)[0, 0, 0] == 0).all()  # NaN is black


# Property-based tests: what holds for every array a run can produce, not only for the ones above.
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from convlearn.logs import histogram_buckets  # noqa: E402
from convlearn.results import json_safe, psnr_db  # noqa: E402

PROPERTIES = settings(max_examples=60, deadline=None)

# Any float32, across the whole range: the limits (+-3.4e38), denormals, NaN and both infinities.
ANY_FLOAT = st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)
SIDE = st.integers(1, 9)  # 1x1 and 1xN included


def float_arrays(shape):
    return hnp.arrays(np.float32, shape, elements=ANY_FLOAT)


@st.composite
def constant_or_any(draw, shape):
    """Arrays of any values, or of one value repeated (a flat layer, a dead kernel)."""
    if draw(st.booleans()):
        return np.full(draw(shape), draw(ANY_FLOAT), np.float32)
    return draw(float_arrays(shape))


def table_colours(cmap):
    return {tuple(c) for c in pictures._colour_table(cmap)}


@PROPERTIES
@given(constant_or_any(hnp.array_shapes(min_dims=1, max_dims=3, max_side=7)), ANY_FLOAT, ANY_FLOAT)
def test_colorize_gives_one_map_colour_per_value_and_black_only_for_nan(array, low, high):
    low, high = pictures.finite_range(np.array([low, high]))  # a scale as callers make it
    rgb = pictures.colorize(array, low, high, "viridis")
    assert rgb.shape == (*array.shape, 3) and rgb.dtype == np.uint8
    assert {tuple(c) for c in rgb.reshape(-1, 3)} <= table_colours("viridis")
    assert np.array_equal(np.all(rgb == 0, axis=-1), np.isnan(array))  # viridis has no black of its own
    # Order is kept: on the gray map a larger value is never darker.
    gray = pictures.colorize(array, low, high, "gray")[..., 0].astype(int).ravel()
    values = array.ravel()
    keep = ~np.isnan(values)
    order = np.argsort(values[keep], kind="stable")
    assert np.all(np.diff(gray[keep][order]) >= 0)


@PROPERTIES
@given(constant_or_any(hnp.array_shapes(min_dims=1, max_dims=3, max_side=7)))
def test_finite_range_brackets_exactly_the_finite_values(array):
    low, high = pictures.finite_range(array)
    assert math.isfinite(low) and math.isfinite(high) and low <= high
    finite = array[np.isfinite(array)]
    if finite.size:
        assert (low, high) == (float(finite.min()), float(finite.max()))
    else:
        assert (low, high) == (0.0, 0.0)


@PROPERTIES
@given(st.data(), SIDE, SIDE)
def test_comparison_is_four_panels_of_the_images_size(data, height, width):
    inputs, target, prediction = (data.draw(constant_or_any(st.just((height, width)))) for _ in range(3))
    picture = pictures.comparison(inputs, target, prediction)
    assert picture.shape == (height, 4 * width + 3 * 4, 3) and picture.dtype == np.uint8
    error_panel = picture[:, 3 * (width + 4):]
    nan_error = np.isnan(pictures.absolute_error(target, prediction))
    assert np.array_equal(np.all(error_panel == 0, axis=-1), nan_error)  # black exactly where the error is NaN


@PROPERTIES
@given(st.data(), st.integers(1, 5), st.integers(1, 5), st.integers(1, 4), st.integers(1, 6))
def test_kernel_grid_has_a_tile_per_channel_pair_and_draws_zero_in_the_middle_colour(data, kh, kw, n_in, n_out):
    kernel = data.draw(constant_or_any(st.just((kh, kw, n_in, n_out))))
    grid = pictures.kernel_grid(kernel, cell=12, gap=2)
    side = max(1, 12 // max(kh, kw))
    assert grid.shape == (n_in * (kh * side + 2) - 2, n_out * (kw * side + 2) - 2, 3) and grid.dtype == np.uint8
    assert {tuple(c) for c in grid.reshape(-1, 3)} <= table_colours(pictures.KERNEL_CMAP) | {(255, 255, 255)}
    tiles = grid.reshape(-1, 3)
    middle = pictures.colorize(np.zeros(1), -1.0, 1.0, pictures.KERNEL_CMAP)[0]
    if np.any(kernel == 0):
        assert np.any(np.all(tiles == middle, axis=-1))  # a zero tap is the scale's centre, whatever the others


@PROPERTIES
@given(st.data(), st.lists(st.tuples(SIDE, SIDE), min_size=1, max_size=3))
def test_kernel_row_puts_kernels_side_by_side_on_one_enlargement(data, shapes):
    kernels = [data.draw(constant_or_any(st.just(shape))) for shape in shapes]
    row = pictures.kernel_row(kernels, cell=36, gap=3)
    factor = max(1, 36 // max(max(shape) for shape in shapes))
    assert row.shape == (factor * max(h for h, _ in shapes), sum(factor * w for _, w in shapes) + 3 * (len(shapes) - 1), 3)
    assert row.dtype == np.uint8


@PROPERTIES
@given(st.data(), SIDE, SIDE, st.integers(1, 128), st.integers(8, 64))
def test_channel_grid_shows_every_channel_within_its_size_limit(data, height, width, channels, max_side):
    maps = data.draw(constant_or_any(st.just((height, width, channels))))
    grid = pictures.channel_grid(maps, max_side=max_side, gap=1)
    cols = math.ceil(math.sqrt(channels))
    rows = math.ceil(channels / cols)
    stride = max(1, math.ceil(max(rows * height, cols * width) / max_side))
    tile_h, tile_w = -(-height // stride), -(-width // stride)
    assert grid.shape == (rows * (tile_h + 1) - 1, cols * (tile_w + 1) - 1, 3) and grid.dtype == np.uint8
    # Within the limit, but for at most one pixel a tile that whole strides cannot take off.
    assert rows * tile_h <= max_side + rows and cols * tile_w <= max_side + cols


@PROPERTIES
@given(constant_or_any(hnp.array_shapes(min_dims=1, max_dims=2, max_side=40)), st.integers(1, 40))
def test_histogram_buckets_count_every_finite_value_once_between_finite_edges(values, bins):
    buckets = histogram_buckets(values, bins)
    assert buckets.shape == (bins, 3) and np.all(np.isfinite(buckets))
    finite = values[np.isfinite(values)].astype(np.float64)
    assert buckets[:, 2].sum() == finite.size and np.all(buckets[:, 2] >= 0)
    assert np.all(buckets[:, 0] <= buckets[:, 1]) and np.array_equal(buckets[:-1, 1], buckets[1:, 0])
    if finite.size:
        assert buckets[0, 0] <= finite.min() and finite.max() <= buckets[-1, 1]
    if finite.size and finite.min() < finite.max():  # the extremes fall in the end buckets
        assert buckets[0, 2] >= np.count_nonzero(finite == finite.min())
        assert buckets[-1, 2] >= np.count_nonzero(finite == finite.max())


@PROPERTIES
@given(st.floats(min_value=1e-30, max_value=3e38), ANY_FLOAT, ANY_FLOAT)
def test_psnr_is_finite_for_a_finite_positive_mse_and_falls_as_the_mse_grows(peak, mse, other):
    value = psnr_db(peak, mse)
    if math.isfinite(mse) and mse > 0:
        assert math.isfinite(value)
        if math.isfinite(other) and other > mse:
            assert psnr_db(peak, other) <= value
    elif not math.isfinite(mse):
        assert math.isnan(value)


@PROPERTIES
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3),
    max_leaves=12,
))
def test_json_safe_data_always_serialises_as_strict_json_and_keeps_finite_values(data):
    import json

    text = json.dumps(json_safe(data), allow_nan=False)  # raises on any NaN/Infinity left

    def expected(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: expected(v) for k, v in value.items()}
        if isinstance(value, list):
            return [expected(v) for v in value]
        return value

    assert json.loads(text) == expected(data)
