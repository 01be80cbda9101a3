import json

import keras
import numpy as np
import pytest
from conftest import SMALL_MODEL, tiny_cfg
from test_analysis import GAUSSIAN_5

from convlearn import analysis
from convlearn.errors import ConvlearnError
from convlearn.kernels import gaussian
from convlearn.lstsq import LeastSquares
from convlearn.pipeline import run_experiment


def test_lstsq_trainer_solves_the_linear_model_and_writes_the_run_dir(tmp_path):
    cfg = tiny_cfg("model=linear", "model.kernel_size=7", *GAUSSIAN_5, "trainer=lstsq")
    summary = run_experiment(cfg, tmp_path).metrics
    assert summary["kernel_rel_error"] < 1e-6 and summary["lstsq_rel_mse"] < 1e-10
    assert summary["steps"] == 1 and summary["final_loss"] < 1e-6 * summary["losses"][0]
    assert summary["jit_compile"] is False  # recorded like every trainer's runs
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["kernel_rel_error"] == summary["kernel_rel_error"] and np.isfinite(metrics["psnr_db"])
    with np.load(tmp_path / "kernels.npz", allow_pickle=False) as saved:
        assert analysis.kernel_rel_error(saved["conv_00"][:, :, 0, 0], gaussian(1.0, 5)) < 1e-6
        reloaded = keras.saving.load_model(tmp_path / "model.keras")
        assert np.array_equal(reloaded.layers[0].kernel.numpy(), saved["conv_00"])

def test_lstsq_trainer_refuses_nonlinear_models(tmp_path):
    with pytest.raises(ConvlearnError, match="trainer=lstsq: model 'can' must be a single VALID conv"):
        run_experiment(tiny_cfg(*SMALL_MODEL, *GAUSSIAN_5, "trainer=lstsq"), tmp_path)

def test_lstsq_trainer_is_one_step():
    with pytest.raises(ConvlearnError, match="trainer.steps: trainer=lstsq solves in exactly 1 step, got 12"):
        LeastSquares(steps=12)
