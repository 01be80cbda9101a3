"""End to end: ``train.py`` on tiny generated images, and what a run leaves behind."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, TINY, run_main
from convlearn.pipeline import run_experiment
from convlearn.tf_startup import gpu_possible

# What TensorFlow and absl printed around a run before issue #18, none of it about the run.
NOISE = ("InitializeLog", "cudart_stub", "cuInit", "remapper failed", "[absl]", "Sharding callback")


def read_events(log_dir):
    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    return {tag: events.Tensors(tag) for tag in events.Tags()["tensors"]}


@pytest.mark.slow
@pytest.mark.parametrize("model", ["notebook", "linear"])
def test_short_run_lowers_the_loss_and_writes_the_run_dir(make_cfg, tmp_path, model):
    cfg = make_cfg(f"model={model}", "trainer.steps=30", "optimizer.lr=3e-3")
    summary = run_experiment(cfg, tmp_path).metrics

    assert summary["final_loss"] < summary["losses"][0]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in ["final_loss", "best_loss", "rel_mse", "psnr_db", "steps", "wall_seconds", "steps_per_sec"]:
        assert np.isfinite(metrics[key]), key
    assert metrics["steps"] == 30 and metrics["best_loss"] <= metrics["final_loss"]
    assert metrics["rel_mse"] > 0 and metrics["steps_per_sec"] > 0

    with np.load(tmp_path / "kernels.npz", allow_pickle=False) as saved:
        assert "conv_00" in saved.files
        # linear's kernel_size auto is edge_blur's receptive field
        assert saved["conv_00"].shape == ((2, 2, 1, 2) if model == "notebook" else (22, 22, 1, 1))
    assert (tmp_path / "model.keras").is_file()

    events = read_events(tmp_path / "tb")
    losses = events["loss"]
    assert [e.step for e in losses] == list(range(0, 30, 2))
    assert np.isclose(float(tf.make_ndarray(losses[0].tensor_proto)), summary["losses"][0])
    assert {"prediction", "kernels/conv_00", "config"} <= events.keys()
    picture_steps = [e.step for e in events["prediction"]]
    assert picture_steps == [0, 5, 10, 15, 20, 25, 30]


def test_overrides_reach_the_objects(make_cfg):
    from convlearn.config import build

    cfg = make_cfg("model=linear", "model.kernel_size=5", "optimizer.lr=3e-3", "target.repeats=2")
    model = build(cfg, "model")
    assert model.layers[0].kernel.shape == (5, 5, 1, 1)
    assert np.isclose(float(build(cfg, "optimizer").learning_rate), 3e-3)
    assert build(cfg, "target").footprint.shrink == (1 + 2 * 4,) * 2


@pytest.mark.slow
def test_user_mistakes_fail_with_one_line_and_no_traceback(tmp_path, monkeypatch, capsys, caplog):
    # train.py's command line in this process (test_validation also runs a real `python train.py`):
    # main() turns each mistake into the one line Python prints before exiting 1. Hydra leaves
    # logging as pytest set it up (its job logging would close pytest's handlers), so caplog sees it.
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object))
    np.save(tmp_path / "flat.npy", np.zeros(10))
    cases = {
        "data=file data.path=missing.npy": "no such file",
        f"data=file data.path={tmp_path}/pickled.npy": "holds pickled Python objects",
        f"data=file data.path={tmp_path}/flat.npy": "expected a 2-D (height, width) array",
        " ".join(TINY) + " data.height=15": "image is too small for the model: 15x48 pixels, but the model's receptive field is 22x22",
        " ".join(TINY) + " model=linear model.kernel_size=5": "half a pixel apart",
    }
    for number, (overrides, message) in enumerate(cases.items()):
        args = ["hydra/job_logging=none", "hydra/hydra_logging=none", "trainer.steps=2",
                f"hydra.run.dir={tmp_path}/run{number}", *overrides.split()]
        with pytest.raises(SystemExit) as caught:
            run_main(monkeypatch, *args)
        line = caught.value.code
        assert line.startswith("convlearn: error:") and message in line and "\n" not in line, (overrides, line)
        printed = capsys.readouterr()
        assert "Traceback" not in printed.out + printed.err + caplog.text, overrides


@pytest.mark.slow
def test_a_run_prints_its_own_lines_and_no_tensorflow_noise(tmp_path):
    # The can model (leaky ReLUs) with oneDNN on, whatever the CPU: grappler's remapper would fail
    # there; checkpoints every 5 steps: absl would log each save.
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "1"}
    args = [*TINY, "model=can", "trainer.checkpoint_every=5", f"hydra.run.dir={tmp_path}/run"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], check=False, capture_output=True, text=True, cwd=tmp_path,
        env=env, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    printed, log = result.stdout + result.stderr, (tmp_path / "run" / "train.log").read_text()
    assert [noise for noise in NOISE if noise in printed or noise in log] == []
    if not gpu_possible():  # on this machine nothing else may print either (oneDNN's own notice, say)
        assert all(re.match(r"\[[-\d :,]+\]\[convlearn\]\[INFO\] - ", line) for line in printed.splitlines()), printed


def test_a_second_ctrl_c_records_the_run_as_interrupted(tmp_path, monkeypatch, capsys):
    import convlearn.pipeline

    def second_ctrl_c(*args, **kwargs):  # what the trainer lets through when Ctrl-C comes twice
        raise KeyboardInterrupt

    monkeypatch.setattr(convlearn.pipeline, "run_experiment", second_ctrl_c)
    with pytest.raises(SystemExit) as caught:
        run_main(monkeypatch, "hydra/job_logging=none", "hydra/hydra_logging=none", f"hydra.run.dir={tmp_path}")
    assert caught.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "convlearn: interrupted (second Ctrl-C); no checkpoint yet, so run it again to start over"
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics == {"status": "interrupted", "reason": "stopped at once by a second Ctrl-C"}
