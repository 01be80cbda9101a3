"""The sweep report on hand-made sweep dirs: ranking, failed and missing jobs, files written."""

import csv
import json

import pytest

from scripts.sweep_report import main, report


def make_job(sweep_dir, name, overrides, metrics=None):
    job = sweep_dir / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))


def done(loss, rel):
    return {"status": "completed", "final_loss": loss, "best_loss": loss, "rel_mse": rel, "psnr_db": 20.0, "steps": 5}


@pytest.fixture
def sweep_dir(tmp_path):
    common = ["trainer.steps=5", "hydra.job.chdir=false"]
    make_job(tmp_path, "0", ["optimizer.lr=0.001", "model.activation=elu", *common], done(0.3, 0.1))
    make_job(tmp_path, "1", ["optimizer.lr=1e9", "model.activation=relu", *common],
             {"status": "failed", "reason": "loss diverged to nan at step 1", "final_loss": float("nan")})
    make_job(tmp_path, "2", ["optimizer.lr=0.01", "model.activation=relu", *common], done(0.2, 0.4))
    make_job(tmp_path, "10", ["optimizer.lr=0.1", "model.activation=elu", *common])  # crashed: no metrics
    return tmp_path


def test_rows_ranked_by_objective_with_failures_last(sweep_dir):
    header, *cells = report(sweep_dir)
    assert header == ["job", "status", "final_loss", "optimizer.lr", "model.activation",
                      "best_loss", "rel_mse", "psnr_db", "steps", "reason"]
    assert [(row[0], row[1], row[2]) for row in cells] == [
        ("2", "completed", "0.2"), ("0", "completed", "0.3"), ("1", "failed", "inf"), ("10", "missing", "inf"),
    ]
    assert cells[2][-1] == "loss diverged to nan at step 1"
    assert "no metrics.json" in cells[3][-1]
    with open(sweep_dir / "report.csv", newline="") as file:
        assert list(csv.reader(file)) == [header, *cells]
    md = (sweep_dir / "report.md").read_text().splitlines()
    assert md[0] == "| " + " | ".join(header) + " |" and md[2].startswith("| 2 | completed | 0.2 | 0.01 | relu |")
    # trainer.steps is the same in every job: not a swept parameter, so no plot.
    assert sorted(p.name for p in sweep_dir.glob("*.png")) == [
        "objective_vs_model.activation.png", "objective_vs_optimizer.lr.png",
    ]


def test_another_objective_reorders_and_goes_elsewhere(sweep_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere"
    main([str(sweep_dir), "--objective", "rel_mse", "--out", str(out)])
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("| job | status | rel_mse |")
    assert [line.split(" | ")[0] for line in printed[2:4]] == ["| 0", "| 2"]
    assert (out / "report.csv").is_file() and not (sweep_dir / "report.csv").exists()


def test_unknown_objective_and_empty_dir_are_one_line_errors(sweep_dir, tmp_path):
    with pytest.raises(SystemExit, match="--objective: job .* has no metric 'psnr'"):
        report(sweep_dir, objective="psnr")
    with pytest.raises(SystemExit, match="no jobs under"):
        report(tmp_path / "empty")
