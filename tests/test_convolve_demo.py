"""scripts/convolve_demo.py on a tiny image: the notebook's arrays, its figures, its errors."""


import numpy as np
from PIL import Image

from conftest import load_script
from convlearn.data import shapes
from test_targets import reference_edge_blur, reference_valid

demo = load_script("convolve_demo")


def test_demo_writes_the_notebooks_arrays_and_figures(tmp_path):
    image = shapes(40, 48, n_circles=3, n_squares=3, min_size=4, max_size=10, seed=2)
    np.save(tmp_path / "img.npy", image)
    assert demo.main(["--image", str(tmp_path / "img.npy"), "--out", str(tmp_path / "out")]) == 0

    with np.load(tmp_path / "out" / "arrays.npz", allow_pickle=False) as saved:
        arrays = {key: saved[key] for key in saved.files}
    assert sorted(arrays) == sorted(["vertical_edges", "horizontal_edges", "edges", "edges_blurred", "match"])
    image = image.astype(np.float64)
    assert np.allclose(arrays["vertical_edges"], reference_valid(image, np.array([[1.0, -1.0], [1.0, -1.0]])), atol=1e-6)
    assert np.allclose(arrays["horizontal_edges"], reference_valid(image, np.array([[1.0, 1.0], [-1.0, -1.0]])), atol=1e-6)
    assert np.allclose(arrays["edges"], reference_edge_blur(image, repeats=0), atol=1e-5)
    blurred = reference_edge_blur(image, repeats=5)
    assert np.allclose(arrays["edges_blurred"], blurred, atol=1e-5)
    # The notebook's slices scaled from its 279x379 blurred map to this 19x27 one: rows 14:17, cols 18:20.
    assert np.allclose(arrays["match"], reference_valid(blurred, blurred[14:17, 18:20]), atol=1e-4)

    for name in ["edges_vertical_horizontal", "edges_magnitude", "edges_blurred", "template", "match"]:
        with Image.open(tmp_path / "out" / f"{name}.png") as picture:
            assert picture.width > 200 and np.asarray(picture).std() > 0, name


def test_demo_slices_in_pixels_and_fewer_blurs(tmp_path):
    image = shapes(40, 48, seed=3)
    Image.fromarray((image * 255).round().astype(np.uint8)).save(tmp_path / "img.png")
    args = ["--image", str(tmp_path / "img.png"), "--out", str(tmp_path / "out"), "--repeats", "2", "--pixels",
            "--rows", "5", "9", "--cols", "10", "12"]
    assert demo.main(args) == 0
    with np.load(tmp_path / "out" / "arrays.npz", allow_pickle=False) as saved:
        blurred, match = saved["edges_blurred"], saved["match"]
    assert blurred.shape == (40 - 9, 48 - 9)
    assert np.allclose(match, reference_valid(blurred.astype(np.float64), blurred[5:9, 10:12]), atol=1e-4)


def test_demo_errors_are_one_line(tmp_path, capsys):
    assert demo.main(["--image", str(tmp_path / "missing.npy"), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("convolve_demo: error: --image: no such file") and "\n" not in err
    np.save(tmp_path / "img.npy", shapes(40, 48, seed=1))
    assert demo.main(["--image", str(tmp_path / "img.npy"), "--out", str(tmp_path), "--pixels",
                      "--rows", "0", "99"]) == 1
    assert "target.rows: need [start, stop] with 0 <= start < stop <= 19, got [0, 99]" in capsys.readouterr().err
