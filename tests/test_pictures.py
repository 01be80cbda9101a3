"""Pictures: colour scales, kernel grids and channel grids read the way a person expects."""

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
