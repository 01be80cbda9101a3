"""Sweeps end to end: ``train.py -m`` with the basic, parallel and Optuna sweepers on tiny runs."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, TINY
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlearn import sweep as sweep_module
from convlearn.errors import ConvlearnError
from convlearn.sweep import FAILED, gpu_for_job, objective, parallel_jobs, share_gpus, threads_per_job
from scripts.sweep_report import report

# Fewer steps and pictures than TINY: a sweep runs several jobs in one test.
QUICK = [*TINY, "trainer.steps=5", "logger.image_every=0"]


def sweep(sweep_dir, *overrides):
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", *QUICK, *overrides, f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, cwd=sweep_dir.parent, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def metrics(job_dir):
    return json.loads((job_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_parallel_sweep_survives_a_diverging_job_and_a_user_mistake(tmp_path):
    sweep_dir = tmp_path / "bad"
    result = sweep(sweep_dir, "hydra/launcher=parallel", "optimizer.lr=1e-3,1e9", "data.height=40,15")

    good, diverged, too_small, _ = (metrics(sweep_dir / str(n)) for n in range(4))
    assert good["status"] == "completed" and math.isfinite(good["final_loss"])
    assert diverged["status"] == "failed" and "non-finite loss" in diverged["reason"]
    assert diverged["steps"] < 5  # stopped early instead of running out its steps
    assert too_small["status"] == "failed" and "image is too small" in too_small["reason"]
    assert "Traceback" not in result.stderr
    # Two jobs at a time on this machine's cores: each job's TensorFlow gets its share.
    expected = threads_per_job(2, len(os.sched_getaffinity(0)))
    assert f"TensorFlow uses {expected} thread(s) per pool" in (sweep_dir / "0" / "train.log").read_text()


def test_objective_is_the_chosen_metric_and_failures_are_worst():
    summary = {"status": "completed", "final_loss": 0.5, "best_loss": 0.25, "rel_mse": 0.1}
    assert objective(summary, "final_loss") == 0.5
    assert objective(summary, "rel_mse") == 0.1
    assert objective({**summary, "status": "failed"}, "final_loss") == FAILED == np.inf
    assert objective({**summary, "final_loss": float("nan")}, "final_loss") == FAILED
    with pytest.raises(ConvlearnError, match="objective: unknown metric 'psnr'; choose one of final_loss"):
        objective(summary, "psnr")


def test_parallel_jobs_and_threads_share_the_cores():
    assert [parallel_jobs(n, cpus=8) for n in (None, 1, 3, -1, -2, -20)] == [1, 1, 3, 8, 7, 1]
    assert [threads_per_job(jobs, cpus=8) for jobs in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


@given(gpus=st.integers(1, 16), first=st.integers(0, 1000), jobs=st.integers(1, 64))
def test_parallel_jobs_are_dealt_over_the_gpus_evenly(gpus, first, jobs):
    chosen = [gpu_for_job(job, gpus) for job in range(first, first + jobs)]
    assert all(0 <= gpu < gpus for gpu in chosen)
    counts = np.bincount(chosen, minlength=gpus)
    assert counts.max() - counts.min() <= 1  # any run of consecutive jobs is spread evenly
    assert len(set(chosen[:gpus])) == min(jobs, gpus)  # jobs that start together get GPUs of their own


class FakeConfig:
    """``tf.config``'s device calls on a machine with ``gpus`` GPUs whose runtime may already run."""

    def __init__(self, gpus: int, started: bool = False) -> None:
        self.gpus = [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(gpus)]
        self.started, self.visible = started, None

    def list_physical_devices(self, kind):
        return self.gpus if kind == "GPU" else []

    def set_visible_devices(self, devices, kind):
        if self.started:
            raise RuntimeError("Visible devices cannot be modified after being initialized")
        self.visible = devices


@pytest.mark.parametrize(
    "gpus, n_jobs, started, job, expected",
    [(4, 2, False, 5, 1), (4, -1, False, 6, 2), (1, 2, False, 3, None), (4, None, False, 1, None),
     (4, 1, False, 1, None), (4, 2, True, 1, None)],
)
def test_a_parallel_job_gets_one_gpu_of_several(monkeypatch, gpus, n_jobs, started, job, expected):
    fake = FakeConfig(gpus, started)
    monkeypatch.setattr(sweep_module.tf, "config", fake)
    monkeypatch.setattr(sweep_module.os, "sched_getaffinity", lambda pid: set(range(8)))
    name = share_gpus(job, n_jobs)
    if expected is None:
        assert name is None and fake.visible is None
    else:
        assert name == f"/physical_device:GPU:{expected}" and fake.visible == [fake.gpus[expected]]


@pytest.mark.slow
def test_a_grid_sweep_with_a_job_diverging_to_huge_finite_gradients_runs_every_job_and_ranks_them(tmp_path):
    # The sweep a new user tries first: job 3 (the notebook's model at lr 1e6) reaches gradients near
    # the float32 limit, which once ended it inside the histogram code; pictures are drawn every 5 steps.
    sweep_dir = tmp_path / "lr"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "-m", "optimizer.lr=1e-3,1e6", "model=linear,notebook", *TINY,
         "trainer.steps=10", "data.height=48", "data.width=64", f"hydra.sweep.dir={sweep_dir}"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = {str(n): metrics(sweep_dir / str(n)) for n in range(4)}
    assert [job["status"] for job in jobs.values()] == ["completed", "completed", "completed", "failed"]
    assert "non-finite" in jobs["3"]["reason"] and all(job["steps"] == 10 for job in list(jobs.values())[:3])
    assert "dashboard part" not in result.stderr  # the pictures of the huge weights were drawn too
    for n in range(4):
        assert (sweep_dir / str(n) / "kernels.npz").is_file() and (sweep_dir / str(n) / "model.keras").is_file()
        events = EventAccumulator(str(sweep_dir / str(n) / "tb"))
        events.Reload()
        assert "loss" in events.Tags()["tensors"]
        # The HPARAMS plugin's session record, written next to the run's own events.
        assert "_hparams_/session_start_info" in events.Tags()["tensors"]

    header, *cells = report(sweep_dir)
    assert header[:5] == ["job", "status", "final_loss", "optimizer.lr", "model"]
    finite = sorted((job["final_loss"], name) for name, job in jobs.items() if job["status"] == "completed")
    assert [row[0] for row in cells] == [name for _, name in finite] + ["3"]  # the failed job last
    assert [float(row[2]) for row in cells[:3]] == pytest.approx([loss for loss, _ in finite], rel=1e-5)
    for row in cells:
        overrides = OmegaConf.load(sweep_dir / row[0] / ".hydra" / "overrides.yaml")
        assert [f"optimizer.lr={row[3]}", f"model={row[4]}"] == [
            o for o in overrides if o.startswith(("optimizer.lr", "model="))]
    csv_rows = (sweep_dir / "report.csv").read_text().splitlines()
    assert len(csv_rows) == 5 and csv_rows[1].startswith(f"{finite[0][1]},completed,")
    assert (sweep_dir / "report.md").read_text().count("\n") == 6
    for name in ["optimizer.lr", "model"]:
        assert (sweep_dir / f"objective_vs_{name}.png").stat().st_size > 1000


@pytest.mark.slow
def test_an_optuna_search_with_diverging_trials_completes_and_picks_the_best_finite_one(tmp_path):
    # One trial diverges to inf (relu at lr 1e9) and fails; the search goes on and still reports its best.
    sweep_dir = tmp_path / "optuna"
    sweep(sweep_dir, "hparams_search=notebook_optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=1",
          "optimizer.lr=choice(1e-3,1e9)", "model.blur_layers=1")
    trials = {job.name: metrics(job) for job in sweep_dir.iterdir() if job.is_dir()}
    assert len(trials) == 3
    statuses = sorted(trial["status"] for trial in trials.values())
    assert "failed" in statuses and "completed" in statuses
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert set(best.best_params) == {"optimizer.lr", "model.width", "model.activation"}  # blur_layers fixed
    assert math.isfinite(best.best_value)  # a saturated tanh net at lr 1e9 can end finite: that counts
    finite = {name: trial["final_loss"] for name, trial in trials.items() if trial["status"] == "completed"}
    assert best.best_value == pytest.approx(min(finite.values()))
    chosen = [OmegaConf.load(sweep_dir / name / ".hydra" / "config.yaml") for name, loss in finite.items()
              if loss == pytest.approx(best.best_value)]  # trials can tie
    assert any(c.model.width == best.best_params["model.width"] and c.model.activation == best.best_params["model.activation"]
               and c.optimizer.lr == best.best_params["optimizer.lr"] for c in chosen)


@pytest.mark.slow
def test_an_unexpected_exception_is_recorded_as_crashed_before_it_ends_the_run(tmp_path, monkeypatch, capsys):
    from conftest import run_main

    def bug(*args, **kwargs):
        raise RuntimeError("a bug after training")

    monkeypatch.setattr("convlearn.pipeline.recovery_metrics", bug)
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit):  # outside a sweep: Hydra prints its traceback and exits 1
        run_main(monkeypatch, *TINY, "model=linear", "trainer.steps=2", f"hydra.run.dir={run_dir}")
    error = capsys.readouterr().err
    assert "Traceback" in error and "RuntimeError: a bug after training" in error
    assert metrics(run_dir) == {
        "status": "crashed", "reason": "RuntimeError: a bug after training", "checkpoint": str(run_dir / "checkpoints"),
    }
    assert (run_dir / "checkpoints" / "ckpt-2.index").is_file()

    # In a sweep, the job is recorded the same way, and the sweep goes on.
    sweep_dir = tmp_path / "sweep"
    run_main(monkeypatch, "-m", *TINY, "model=linear", "trainer.steps=2", "trainer.seed=0,1",
             f"hydra.sweep.dir={sweep_dir}")
    assert [metrics(sweep_dir / str(n))["status"] for n in range(2)] == ["crashed", "crashed"]
