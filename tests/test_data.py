import numpy as np
import pytest
from PIL import Image

from convlearn.data import load_image, shapes
from convlearn.errors import ConvlearnError


def test_shapes_is_a_bright_on_dark_image_in_unit_range():
    image = shapes(height=60, width=80, n_circles=3, n_squares=3, min_size=5, max_size=12, seed=1)
    assert image.shape == (60, 80) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    # Mostly dark background with a faint noise floor, and some bright shapes.
    assert np.median(image) < 0.1
    assert (image > 0.5).mean() > 0.05


def test_shapes_is_reproducible_from_its_seed():
    assert np.array_equal(shapes(32, 32, seed=3), shapes(32, 32, seed=3))
    assert not np.array_equal(shapes(32, 32, seed=3), shapes(32, 32, seed=4))


def test_shapes_counts_change_the_picture():
    empty = shapes(40, 40, n_circles=0, n_squares=0, seed=0)
    assert empty.max() < 0.3  # only the noise floor


def test_load_npy_and_png_roundtrip(tmp_path):
    array = np.linspace(0, 1, 12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "a.npy", array)
    assert np.allclose(load_image(tmp_path / "a.npy"), array)

    pixels = (array * 255).round().astype(np.uint8)
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.shape == (3, 4) and loaded.dtype == np.float32
    assert np.allclose(loaded, pixels / 255.0, atol=1 / 255)


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), r"holds pickled Python objects"),
        (lambda p: np.save(p, np.zeros(5)), r"expected a 2-D \(height, width\) array .* got shape \(5,\)"),
        (lambda p: np.save(p, np.zeros((2, 3, 4))), r"expected a 2-D .* got shape \(2, 3, 4\)"),
        (lambda p: np.save(p, np.array([[0.0, np.nan]])), r"contains NaN or infinite pixels"),
        (lambda p: p.write_bytes(b"not a numpy file"), r"cannot read .* as \.npy"),
    ],
)
def test_bad_npy_files_fail_with_one_clear_line(tmp_path, write, message):
    path = tmp_path / "bad.npy"
    write(path)
    with pytest.raises(ConvlearnError, match=message) as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ConvlearnError, match="no such file"):
        load_image(tmp_path / "missing.npy")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConvlearnError, match=r"unsupported file type '\.txt'"):
        load_image(tmp_path / "x.txt")
