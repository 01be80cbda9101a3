"""Run dirs: checked and claimed before Hydra writes into them (convlearn.run_dirs.ClaimRunDir)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, TINY
from convlearn.errors import ConvlearnError
from test_config_checks import run_train_py


def test_a_run_dir_holding_a_run_is_refused_before_hydra_writes_into_it(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "config.yaml").write_text("optimizer: {lr: 0.001}\n")
    (run_dir / ".hydra").mkdir()
    (run_dir / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=1e-3\n")
    result = run_train_py("optimizer.lr=5e-3", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"convlearn: error: hydra.run.dir: {run_dir} already holds a run; "
        "continue it with trainer.resume=true or pick a new directory"
    ]
    assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- optimizer.lr=1e-3\n"  # the first run's record
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "checkpoints"]  # no tb/, no log


def test_a_run_dir_that_cannot_be_created_is_refused_in_one_line(tmp_path):
    (tmp_path / "outputs").write_text("a file where the folder should be")
    result = run_train_py(f"hydra.run.dir={tmp_path}/outputs/run", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"convlearn: error: hydra.run.dir: {tmp_path}/outputs is a file, so the run dir {tmp_path}/outputs/run "
        "cannot be created; pick another"
    ]


def test_a_folder_without_write_permission_is_named(tmp_path, monkeypatch):
    from convlearn.run_dirs import check_writable

    # The tests may run as root, who may write anywhere: the permission check itself is what is tested.
    monkeypatch.setattr("os.access", lambda path, mode: path != tmp_path)
    with pytest.raises(ConvlearnError) as caught:
        check_writable(tmp_path / "outputs" / "run", "hydra.run.dir")
    assert str(caught.value) == f"hydra.run.dir: cannot write in {tmp_path} (permission denied); pick another directory"


@pytest.mark.slow
def test_of_two_runs_started_at_once_on_one_dir_one_runs_and_its_record_stays_its_own(tmp_path):
    run_dir = tmp_path / "run"
    runs = {
        lr: subprocess.Popen(
            [sys.executable, str(ROOT / "train.py"), *TINY, "model=linear", "trainer.steps=2", "logger.image_every=0",
             f"optimizer.lr={lr}", f"hydra.run.dir={run_dir}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
        )
        for lr in ("0.001", "0.002")
    }
    codes = {lr: process.wait(timeout=300) for lr, process in runs.items()}
    assert sorted(codes.values()) == [0, 1]
    (winner,) = [lr for lr, code in codes.items() if code == 0]
    (loser,) = [lr for lr, code in codes.items() if code == 1]
    assert runs[loser].stderr.read().strip().splitlines()[-1].endswith("already holds a run; continue it with "
                                                                       "trainer.resume=true or pick a new directory")
    assert f"optimizer.lr={winner}" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "completed"
    assert len(list((run_dir / "tb").glob("events.*"))) == 1
