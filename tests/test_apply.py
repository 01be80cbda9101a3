"""scripts/apply.py: a finished run's model applied to new images, prepared as its training images were."""

from __future__ import annotations

import subprocess
import sys

import imagecodecs
import numpy as np
import pytest
import scipy.ndimage
from omegaconf import OmegaConf

from conftest import ROOT, TINY, load_script, tiny_cfg
from convlearn.pipeline import run_experiment


@pytest.fixture(scope="module")
def apply_script():
    return load_script("apply")


def finished_run(run_dir, *overrides):
    """A short run into ``run_dir`` with its config saved where Hydra saves it."""
    cfg = tiny_cfg(*overrides, "trainer.steps=3", "logger.image_every=0")
    run_experiment(cfg, run_dir)
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    return run_dir


@pytest.fixture(scope="module")
def standardised_run(tmp_path_factory):
    """A linear model (one 5x5 kernel) trained on a .npy image with data.normalize=standard."""
    folder = tmp_path_factory.mktemp("standardised")
    image = np.random.default_rng(0).normal(3.0, 2.0, size=(30, 34))
    np.save(folder / "train.npy", image)
    return finished_run(folder / "run", "data=file", f"data.path={folder / 'train.npy'}", "data.normalize=standard",
                        "model=deep_linear", "target=gaussian", "target.size=5")


def test_the_output_is_the_exported_kernel_on_the_normalised_image(apply_script, standardised_run, tmp_path):
    image = np.random.default_rng(1).normal(-4.0, 0.5, size=(17, 41))  # another size and scale than training
    np.save(tmp_path / "new.npy", image)
    (written,) = apply_script.apply_all(standardised_run, [tmp_path / "new.npy"], tmp_path / "out")
    output = np.load(written, allow_pickle=False)
    kernel = np.load(standardised_run / "effective_kernel.npy", allow_pickle=False)
    normalised = (image - image.mean()) / image.std()  # data.normalize=standard, as in training
    expected = scipy.ndimage.correlate(normalised, kernel)[2:-2, 2:-2]  # VALID: 4 pixels smaller
    assert output.shape == (13, 37) and output.dtype == np.float32
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-4)
    picture = imagecodecs.png_decode((tmp_path / "out" / "new.png").read_bytes())
    assert picture.dtype == np.uint16 and picture.shape == output.shape
    assert picture.min() == 0 and picture.max() == 65535
    assert np.argmax(picture) == np.argmax(output) and np.argmin(picture) == np.argmin(output)


def test_a_16_bit_colour_picture_gets_each_channel_filtered_by_the_shared_kernels(apply_script, tmp_path):
    rng = np.random.default_rng(2)
    colour = rng.integers(0, 65536, size=(28, 30, 3), dtype=np.uint16)
    (tmp_path / "train.png").write_bytes(imagecodecs.png_encode(colour))
    run = finished_run(tmp_path / "run", "data=file", f"data.path={tmp_path / 'train.png'}", "data.channels=rgb",
                       "model=linear", "model.kernel_size=3", "target=gaussian", "target.size=3")
    new = rng.integers(0, 65536, size=(9, 12, 3), dtype=np.uint16)
    (tmp_path / "new.png").write_bytes(imagecodecs.png_encode(new))
    (written,) = apply_script.apply_all(run, [tmp_path / "new.png"])
    assert written.parent == run / "applied"
    output = np.load(written, allow_pickle=False)
    kernel = np.load(run / "effective_kernel.npy", allow_pickle=False)
    assert output.shape == (7, 10, 3)
    for channel in range(3):  # 16-bit levels, not 8-bit ones, went in
        expected = scipy.ndimage.correlate(new[..., channel] / 65535, kernel)[1:-1, 1:-1]
        np.testing.assert_allclose(output[..., channel], expected, rtol=1e-4, atol=1e-5)


def test_mistakes_are_one_line(apply_script, standardised_run, tmp_path, capsys):
    np.save(tmp_path / "tiny.npy", np.zeros((3, 40)))
    assert apply_script.main([str(standardised_run), str(tmp_path / "tiny.npy")]) == 1
    assert capsys.readouterr().err.strip().endswith("is 3x40, smaller than the model's receptive field 5x5")
    assert apply_script.main([str(tmp_path), str(tmp_path / "tiny.npy")]) == 1
    assert "model.keras does not exist; give the directory of a finished run" in capsys.readouterr().err
    (tmp_path / "a").mkdir()
    np.save(tmp_path / "a" / "tiny.npy", np.zeros((3, 40)))
    twice = [str(standardised_run), str(tmp_path / "tiny.npy"), str(tmp_path / "a" / "tiny.npy")]
    assert apply_script.main(twice) == 1
    assert "several images named tiny" in capsys.readouterr().err


@pytest.mark.slow
def test_train_then_apply_from_the_command_line(tmp_path):
    run_dir = tmp_path / "run"
    trained = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *TINY, "trainer.steps=3", "model=linear", "target=laplacian",
         f"hydra.run.dir={run_dir}"], capture_output=True, text=True, timeout=300,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    image = np.random.default_rng(3).random((20, 25))
    np.save(tmp_path / "photo.npy", image)
    applied = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "apply.py"), str(run_dir), str(tmp_path / "photo.npy")],
        capture_output=True, text=True, timeout=300,
    )
    assert applied.returncode == 0, applied.stderr[-2000:]
    output = np.load(run_dir / "applied" / "photo.npy", allow_pickle=False)
    kernel = np.load(run_dir / "effective_kernel.npy", allow_pickle=False)
    np.testing.assert_allclose(output, scipy.ndimage.correlate(image, kernel)[1:-1, 1:-1], rtol=1e-4, atol=1e-5)
    assert (run_dir / "applied" / "photo.png").is_file() and applied.stdout.strip().endswith(".npy, .png (18x23)")
