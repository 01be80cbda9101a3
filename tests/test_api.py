"""The Python API: train from a notebook with the command line's configs and overrides."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import ROOT
from convlearn import api
from convlearn.errors import ConvlearnError
from convlearn.pipeline import RunResult

TINY_LINEAR = ("debug=tiny", "model=linear", "trainer.steps=3")


def test_compose_gives_the_command_lines_config():
    cfg = api.compose("experiment=notebook", "optimizer.lr=3e-3")
    assert cfg.model._target_ == "convlearn.models.notebook" and cfg.target.repeats == 5
    assert cfg.optimizer.lr == 3e-3 and cfg.trainer.steps == 500 and cfg.objective == "final_loss"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("model=bogus",), "model=bogus: no such option; model is one of can, deep_linear, "),
        (("trainer.stepz=3",), "trainer.stepz: no such key in the config"),
        (("hparams_search=notebook_optuna",), "hparams_search=notebook_optuna: sweeps run from the command line"),
        (("optimizer.lr=-1",), "optimizer.lr: must be > 0, got -1"),
    ],
)
def test_mistakes_raise_the_command_lines_one_line_error(overrides, message, tmp_path):
    with pytest.raises(ConvlearnError) as caught:
        api.train(*overrides, run_dir=tmp_path / "run")
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_train_returns_metrics_model_kernels_history_and_run_dir(tmp_path):
    result = api.train(*TINY_LINEAR, run_dir=tmp_path / "run")
    assert isinstance(result, RunResult) and result.run_dir == tmp_path / "run"
    saved = json.loads((result.run_dir / "metrics.json").read_text())
    assert saved["final_loss"] == result.metrics["final_loss"] and saved["status"] == "completed"
    assert result.history.losses == saved["losses"] and result.history.steps == 3
    assert isinstance(result.model, keras.Model)
    assert np.array_equal(result.kernels["conv_00"], result.model.layers[0].kernel.numpy())
    with np.load(result.run_dir / "kernels.npz", allow_pickle=False) as kernels:
        assert set(kernels.files) == set(result.kernels)


@pytest.mark.slow
def test_train_off_the_main_thread_into_a_new_run_dir_under_outputs(tmp_path, monkeypatch):
    # A notebook's kernel may run code off the main thread, where signal handlers cannot be installed.
    monkeypatch.chdir(tmp_path)
    results: list[RunResult] = []
    worker = threading.Thread(target=lambda: results.append(api.train(*TINY_LINEAR)))
    worker.start()
    worker.join()
    (result,) = results
    assert result.run_dir.parent.parent == Path("outputs") and (tmp_path / result.run_dir / "metrics.json").is_file()
    assert result.metrics["status"] == "completed"


@pytest.mark.slow
def test_importing_the_api_does_not_import_tensorflow():
    code = "import sys, convlearn.api; print(sorted({'tensorflow', 'keras'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
