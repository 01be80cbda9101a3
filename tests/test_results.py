"""What a run leaves: the exported kernels as plain arrays, and the provenance in metrics.json."""

from __future__ import annotations

import json
import platform
import subprocess

import hydra
import keras
import numpy as np
import pytest
import scipy.ndimage
import tensorflow as tf

import convlearn
from convlearn.pipeline import run_experiment
from convlearn.provenance import CHECKOUT, git_state
from convlearn.targets import footprint_of


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    """A finished run of a two-layer linear model (one 5x5 effective kernel) on a linear target."""
    from conftest import tiny_cfg

    run_dir = tmp_path_factory.mktemp("linear_run")
    cfg = tiny_cfg("model=deep_linear", "target=gaussian", "target.size=5", "logger.image_every=0")
    return run_dir, run_experiment(cfg, run_dir).metrics


def test_the_exported_kernel_reproduces_the_linear_model_on_any_image(linear_run):
    run_dir, _ = linear_run
    kernel = np.load(run_dir / "effective_kernel.npy", allow_pickle=False)
    assert kernel.shape == (5, 5) and kernel.dtype == np.float64
    model = keras.models.load_model(run_dir / "model.keras", safe_mode=True)
    image = np.random.default_rng(3).normal(size=(19, 26))  # not the training size
    output = model(image[None, ..., None].astype(np.float32)).numpy()[0, ..., 0]
    # The model's convs are VALID: its pixel (i, j) is the correlation centred on (i + 2, j + 2).
    expected = scipy.ndimage.correlate(image, kernel)[2:-2, 2:-2]
    np.testing.assert_allclose(output, expected, rtol=1e-4, atol=1e-5)


def test_the_linear_target_kernel_is_exported_as_the_target_applies_it(linear_run):
    run_dir, _ = linear_run
    kernel = np.load(run_dir / "target_kernel.npy", allow_pickle=False)
    from conftest import tiny_cfg
    from convlearn.config import build

    target = build(tiny_cfg("target=gaussian", "target.size=5"), "target")
    assert footprint_of(target).extent == kernel.shape == (5, 5)
    image = np.random.default_rng(4).normal(size=(12, 15)).astype(np.float32)
    expected = scipy.ndimage.correlate(image.astype(np.float64), kernel)[2:-2, 2:-2]
    np.testing.assert_allclose(target.apply(image), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_non_linear_target_exports_no_target_kernel(make_cfg, tmp_path):
    run_experiment(make_cfg("trainer.steps=2", "logger.image_every=0"), tmp_path)  # edge_blur: has a ReLU
    assert not (tmp_path / "target_kernel.npy").exists()
    assert np.load(tmp_path / "effective_kernel.npy", allow_pickle=False).ndim == 2  # linearised


def test_metrics_record_versions_commit_and_device(linear_run):
    run_dir, summary = linear_run
    recorded = json.loads((run_dir / "metrics.json").read_text())["provenance"]
    assert recorded == summary["provenance"]
    assert recorded["convlearn"] == convlearn.__version__
    assert recorded["tensorflow"] == tf.__version__ and recorded["keras"] == keras.__version__
    assert recorded["hydra"] == hydra.__version__ and recorded["python"] == platform.python_version()
    assert recorded["device"]["kind"] == ("GPU" if tf.config.list_physical_devices("GPU") else "CPU")
    assert recorded["device"]["name"]
    # The tests run from a checkout: its commit is recorded.
    head = subprocess.run(["git", "-C", str(CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert recorded["git_commit"] == head.strip() and isinstance(recorded["git_dirty"], bool)


def test_git_state_names_the_commit_and_whether_tracked_files_changed(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert git_state(tmp_path) == {"git_commit": head.strip(), "git_dirty": False}
    (tmp_path / "untracked.txt").write_text("new")  # an untracked file is not a change of the code
    assert git_state(tmp_path)["git_dirty"] is False
    (tmp_path / "a.txt").write_text("two")
    assert git_state(tmp_path)["git_dirty"] is True
    (tmp_path / "inner").mkdir()
    assert git_state(tmp_path / "inner") == {}  # a folder inside a checkout is not one
    assert git_state(tmp_path / "missing") == {}
