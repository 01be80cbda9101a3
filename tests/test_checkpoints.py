"""Checkpoints, resume after SIGKILL and Ctrl-C, the non-finite guard, and seeded reproducibility."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, SMALL_MODEL, TINY

from convlearn import step_cache
from convlearn.checkpoints import STEP, Checkpoints
from convlearn.config import build
from convlearn.pipeline import run_experiment

# Many cheap steps, so that a run is still going when its first checkpoint appears.
LONG = ["model=linear", "trainer.steps=1500", "trainer.checkpoint_every=50", "logger.scalar_every=100",
        "logger.image_every=0"]


def kernels(run_dir):
    with np.load(run_dir / "kernels.npz", allow_pickle=False) as saved:
        return {name: saved[name] for name in saved.files}


def read_metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def checkpoint_step(folder):
    latest = tf.train.latest_checkpoint(str(folder))
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def start(run_dir, *overrides):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *TINY, *LONG, *overrides, f"hydra.run.dir={run_dir}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=run_dir.parent,
    )


def wait_for_checkpoint_after(process, folder, step, polls=12000):
    """Poll until a checkpoint newer than ``step`` exists (bounded: about two minutes)."""
    for _ in range(polls):
        if checkpoint_step(folder) > step:
            return checkpoint_step(folder)
        try:
            process.wait(timeout=0.01)
        except subprocess.TimeoutExpired:
            continue
        pytest.fail(f"training ended before a checkpoint after step {step}: {process.stderr.read()[-800:]}")
    pytest.fail(f"no checkpoint after step {step} in {folder}")


@pytest.mark.slow
def test_killed_and_interrupted_run_resumes_bit_for_bit(make_cfg, tmp_path):
    reference = run_experiment(make_cfg(*LONG), tmp_path / "reference").metrics
    run_dir = tmp_path / "run"
    folder = run_dir / "checkpoints"

    process = start(run_dir)
    first = wait_for_checkpoint_after(process, folder, 0)
    process.kill()
    process.wait(timeout=60)
    assert not (run_dir / "metrics.json").exists(), "the run had finished before the kill"

    process = start(run_dir, "trainer.resume=true")
    wait_for_checkpoint_after(process, folder, first)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-800:]
    interrupted = read_metrics(run_dir)
    assert interrupted["status"] == "interrupted" and interrupted["stopped_step"] < 1500
    assert stderr.strip().splitlines()[-1] == (
        f"convlearn: interrupted at step {interrupted['stopped_step']}; checkpoint saved to "
        f"{folder}/ckpt-{interrupted['stopped_step']}; continue with: python train.py {' '.join([*TINY, *LONG])} "
        f"trainer.resume=true hydra.run.dir={run_dir}"
    )
    assert "Traceback" not in stderr

    # The last leg needs no signal: it resumes in this process, from the interrupted run's checkpoint.
    run_experiment(make_cfg(*LONG, "trainer.resume=true"), run_dir)
    resumed = read_metrics(run_dir)
    assert resumed["status"] == "completed"
    assert resumed["losses"] == reference["losses"]
    assert resumed["final_loss"] == reference["final_loss"]
    expected = kernels(tmp_path / "reference")
    assert all(np.array_equal(array, expected[name]) for name, array in kernels(run_dir).items())


def test_nonfinite_loss_stops_the_run_as_failed_with_a_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg("model=linear", "optimizer=sgd", "optimizer.lr=1e6", "trainer.steps=30", "trainer.checkpoint_every=1")
    summary = run_experiment(cfg, tmp_path).metrics

    metrics = read_metrics(tmp_path)
    step = metrics["stopped_step"]
    assert metrics["status"] == "failed" and 0 < step < 30
    assert metrics["reason"].startswith("non-finite loss or gradient")
    assert metrics["steps"] == step and len(metrics["losses"]) == step and np.all(np.isfinite(metrics["losses"]))
    assert summary["checkpoint"] == str(tmp_path / "checkpoints" / f"ckpt-{step}")

    # The checkpoint and the saved kernels hold the same finite weights: the bad update never landed.
    saved = kernels(tmp_path)["conv_00"]
    assert np.all(np.isfinite(saved))
    model, optimizer = build(cfg, "model", target=build(cfg, "target").footprint), build(cfg, "optimizer")
    optimizer.build(model.trainable_variables)
    losses, _ = Checkpoints(tmp_path / "checkpoints", model, optimizer, tf.random.Generator.from_seed(0)).restore()
    assert losses == metrics["losses"]
    assert np.array_equal(model.layers[0].kernel.numpy(), saved)


def test_skip_mode_leaves_out_nonfinite_updates_and_finishes(make_cfg, tmp_path):
    cfg = make_cfg("model=linear", "optimizer=sgd", "optimizer.lr=1e6", "trainer.steps=8", "trainer.on_nonfinite=skip")
    summary = run_experiment(cfg, tmp_path).metrics
    assert summary["status"] == "completed" and summary["steps"] == 8
    first_bad = summary["skipped_steps"][0]
    assert summary["skipped_steps"] == list(range(first_bad, 8))
    assert np.all(np.isfinite(kernels(tmp_path)["conv_00"]))


@pytest.mark.slow
def test_two_seeded_runs_are_bit_identical_and_another_seed_differs(make_cfg, tmp_path):
    first = run_experiment(make_cfg("trainer.seed=3", "trainer.steps=6"), tmp_path / "a").metrics
    second = run_experiment(make_cfg("trainer.seed=3", "trainer.steps=6"), tmp_path / "b").metrics
    other = run_experiment(make_cfg("trainer.seed=4", "trainer.steps=6"), tmp_path / "c").metrics
    assert read_metrics(tmp_path / "a")["losses"] == read_metrics(tmp_path / "b")["losses"] == first["losses"]
    assert first["final_loss"] == second["final_loss"]
    a, b = kernels(tmp_path / "a"), kernels(tmp_path / "b")
    assert a.keys() == b.keys() and all(np.array_equal(a[name], b[name]) for name in a)
    assert other["losses"] != first["losses"]


def test_checkpoint_restores_the_data_generator(make_cfg, tmp_path):
    cfg = make_cfg("model=linear")
    model, optimizer = build(cfg, "model", target=build(cfg, "target").footprint), build(cfg, "optimizer")
    optimizer.build(model.trainable_variables)
    rng = tf.random.Generator.from_seed(5)
    rng.normal([3])
    Checkpoints(tmp_path, model, optimizer, rng).save([0.5], [1.0])
    expected = rng.normal([3]).numpy()

    other = tf.random.Generator.from_seed(6)
    losses, grad_norms = Checkpoints(tmp_path, model, optimizer, other).restore()
    assert (losses, grad_norms) == ([0.5], [1.0])
    assert np.array_equal(other.normal([3]).numpy(), expected)


@pytest.mark.slow
def test_resume_trains_further_and_warns_about_a_changed_config(make_cfg, tmp_path, caplog):
    first = run_experiment(make_cfg("model=linear", "trainer.steps=4"), tmp_path).metrics
    longer = make_cfg("model=linear", "trainer.steps=7", "optimizer.lr=3e-3", "trainer.resume=true")
    resumed = run_experiment(longer, tmp_path).metrics
    assert resumed["steps"] == 7 and resumed["losses"][:4] == first["losses"]
    assert "optimizer.lr: 0.001 -> 0.003; trainer.steps: 4 -> 7" in caplog.text


@pytest.mark.slow
def test_resumed_patch_stream_draws_the_same_patches(make_cfg, tmp_path):
    from convlearn.data import shapes

    np.save(tmp_path / "image.npy", shapes(40, 48, n_circles=3, n_squares=3, min_size=4, max_size=10))
    patches = ["data=file", f"data.path={tmp_path}/image.npy", "data.patch_size=24", "data.batch_size=2",
               "model=linear", "optimizer.lr=3e-3"]
    whole = run_experiment(make_cfg(*patches, "trainer.steps=6"), tmp_path / "whole").metrics
    run_experiment(make_cfg(*patches, "trainer.steps=3"), tmp_path / "split")
    resumed = run_experiment(make_cfg(*patches, "trainer.steps=6", "trainer.resume=true"), tmp_path / "split").metrics
    assert resumed["losses"] == whole["losses"] and len(set(whole["losses"])) == 6
    assert np.array_equal(kernels(tmp_path / "split")["conv_00"], kernels(tmp_path / "whole")["conv_00"])


@pytest.mark.slow
def test_an_auto_run_resumes_with_its_own_step_whatever_this_machine_would_pick_now(
    make_cfg, tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("CONVLEARN_CACHE_DIR", str(tmp_path / "picks"))
    small = [*SMALL_MODEL, "trainer.jit_compile=auto", "trainer.checkpoint_every=3",
             "logger.image_every=0"]
    whole = run_experiment(make_cfg(*small, "trainer.steps=6"), tmp_path / "whole").metrics
    run_experiment(make_cfg(*small, "trainer.steps=3"), tmp_path / "split")
    folder = tmp_path / "split" / "checkpoints"
    assert json.loads((folder / STEP).read_text()) == {"jit_compile": whole["jit_compile"]}
    # Another machine, or this one after its record of picks was cleared, would pick the other step.
    picks = tmp_path / "picks" / step_cache.FILE_NAME
    records = json.loads(picks.read_text())
    (entry,) = records.values()
    entry["jit_compile"] = not entry["jit_compile"]
    picks.write_text(json.dumps(records))

    resumed = run_experiment(make_cfg(*small, "trainer.steps=6", "trainer.resume=true"), tmp_path / "split").metrics
    assert resumed["jit_compile"] == whole["jit_compile"] and resumed["losses"] == whole["losses"]
    assert "resuming with" in caplog.text
    # An unreadable record: a warning, and the step is chosen as for a new run (the machine's pick).
    (folder / STEP).write_text("{")
    again = run_experiment(make_cfg(*small, "trainer.steps=7", "trainer.resume=true"), tmp_path / "split").metrics
    assert again["jit_compile"] == entry["jit_compile"] and f"{STEP} cannot be read" in caplog.text


SHORT = ["model=linear", "trainer.checkpoint_every=1", "logger.image_every=0"]


def damage_truncated_data(folder):
    (data,) = folder.glob("ckpt-4.data-*")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def damage_missing_index(folder):
    (folder / "ckpt-4.index").unlink()


@pytest.mark.slow
@pytest.mark.parametrize("damage", [damage_truncated_data, damage_missing_index])
def test_resume_passes_over_a_damaged_newest_checkpoint_to_the_one_before(make_cfg, tmp_path, caplog, damage):
    whole = run_experiment(make_cfg(*SHORT, "trainer.steps=6"), tmp_path / "whole").metrics
    run_dir = tmp_path / "run"
    run_experiment(make_cfg(*SHORT, "trainer.steps=4"), run_dir)  # keeps ckpt-3 and ckpt-4
    damage(run_dir / "checkpoints")

    resumed = run_experiment(make_cfg(*SHORT, "trainer.steps=6", "trainer.resume=true"), run_dir).metrics
    assert resumed["losses"] == whole["losses"]  # steps 3..5 trained again from ckpt-3, as the whole run did
    if damage is damage_truncated_data:
        assert "ckpt-4 cannot be read" in caplog.text
    # This process trained 3 steps: its speed counts those, not the 3 it resumed with.
    assert resumed["steps_per_sec"] == pytest.approx(3 / resumed["wall_seconds"])


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(make_cfg, tmp_path, caplog):
    whole = run_experiment(make_cfg(*SHORT, "trainer.steps=3"), tmp_path / "whole").metrics
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)  # claimed, then killed while writing ckpt-1: only its temporary file
    (folder / "ckpt-1_temp").mkdir()
    resumed = run_experiment(make_cfg(*SHORT, "trainer.steps=3", "trainer.resume=true"), tmp_path / "run").metrics
    assert resumed["losses"] == whole["losses"]
    assert "no complete checkpoint" in caplog.text and "config.yaml is missing" in caplog.text


@pytest.mark.slow
def test_resuming_a_finished_run_records_no_speed(make_cfg, tmp_path):
    run_experiment(make_cfg(*SHORT, "trainer.steps=2"), tmp_path)
    resumed = run_experiment(make_cfg(*SHORT, "trainer.steps=2", "trainer.resume=true"), tmp_path).metrics
    assert resumed["status"] == "completed" and resumed["steps"] == 2
    assert read_metrics(tmp_path)["steps_per_sec"] is None  # no step trained: no speed to report


@pytest.mark.slow
def test_a_refused_resume_is_one_error_without_tensorflow_warnings(make_cfg, tmp_path, capfd):
    import gc

    from convlearn.errors import ConvlearnError

    run_experiment(make_cfg(*SHORT, "trainer.steps=2"), tmp_path)
    capfd.readouterr()
    with pytest.raises(ConvlearnError, match="does not fit this config's model"):
        run_experiment(make_cfg("trainer.steps=2", "trainer.resume=true", "logger.image_every=0"), tmp_path)  # model=notebook
    gc.collect()  # the restore's status warns about every unmatched value when it is collected
    assert "could not be found" not in capfd.readouterr().err


@pytest.mark.slow
def test_two_sigterms_in_quick_succession_still_end_as_interrupted(tmp_path):
    import time

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    process = start(run_dir)
    wait_for_checkpoint_after(process, run_dir / "checkpoints", 0)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.03)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-800:]
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "interrupted" and metrics["checkpoint"].endswith(f"ckpt-{metrics['stopped_step']}")
