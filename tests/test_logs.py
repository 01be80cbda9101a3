"""The TensorBoard dashboards, read back from the event files: every tag, its steps and values."""

import io
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import ROOT, TINY
from convlearn.config import build
from convlearn.data import make_batch
from convlearn.geometry import conv
from convlearn.logs import (
    TensorBoardLogger, _box5, effective_kernels, hparams_from_config, landmark_kernels, landmarks, write_histogram,
)
from convlearn.models import footprint, linear, sequential
from convlearn.pipeline import run_experiment

OVERRIDES = ["optimizer.lr=3e-3", "model=notebook", "data.height=40"]
PICTURE_STEPS = [0, 5, 10, 12]


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*TINY, *overrides])


def read_events(log_dir):
    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    events.Reload()
    return events, {tag: events.Tensors(tag) for tag in events.Tags()["tensors"]}


def values(events, tag):
    return [float(tf.make_ndarray(e.tensor_proto)) for e in events[tag]]


def png(event):
    """The PNG of an image summary (its tensor is [width, height, png bytes...])."""
    return np.asarray(Image.open(io.BytesIO(tf.make_ndarray(event.tensor_proto)[2])))


@pytest.fixture(scope="module")
def notebook_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("notebook_run")
    summary = run_experiment(compose_cfg(*OVERRIDES), run_dir, OVERRIDES).metrics
    accumulator, events = read_events(run_dir / "tb")
    return run_dir, summary, accumulator, events


@pytest.mark.slow
def test_scalars_include_rel_mse_psnr_and_speed(notebook_run):
    run_dir, summary, _, events = notebook_run
    steps = list(range(0, 12, 2))
    for tag in ["loss", "grad_norm", "learning_rate", "rel_mse", "psnr_db"]:
        assert [e.step for e in events[tag]] == steps, tag
    losses = values(events, "loss")
    assert np.allclose(losses, summary["losses"][::2])
    variance = summary["final_loss"] / summary["rel_mse"]  # as metrics.json defines rel_mse
    assert np.allclose(values(events, "rel_mse"), np.array(losses) / variance, rtol=1e-5)
    psnr = values(events, "psnr_db")
    assert np.allclose(np.diff(psnr), -10 * np.diff(np.log10(losses)), atol=1e-3)
    assert np.allclose(values(events, "learning_rate"), 3e-3)
    speeds = values(events, "steps_per_sec")
    assert [e.step for e in events["steps_per_sec"]] == steps[1:] and all(s > 0 for s in speeds)
    # The end-of-run metrics that the HPARAMS tab compares, equal to metrics.json.
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert values(events, "final/loss") == pytest.approx([metrics["final_loss"]])
    assert values(events, "final/rel_mse") == pytest.approx([metrics["rel_mse"]])
    assert values(events, "final/psnr_db") == pytest.approx([metrics["psnr_db"]])
    assert events["final/loss"][0].step == 12


@pytest.mark.slow
def test_pictures_at_start_every_n_and_end(notebook_run):
    _, _, _, events = notebook_run
    picture_tags = ["prediction", "kernels/effective"] + [f"kernels/conv_{i:02d}" for i in range(13)]
    picture_tags += [f"activations/conv_{i:02d}" for i in range(13)]
    for tag in picture_tags:
        assert [e.step for e in events[tag]] == PICTURE_STEPS, tag

    panel = png(events["prediction"][-1])
    # 40x48 image, notebook model and edge_blur both shrink by 21: four 19x27 panels with 4-px gaps.
    assert panel.shape == (19, 4 * 27 + 3 * 4, 3)
    assert len(np.unique(panel.reshape(-1, 3), axis=0)) > 50  # colour-mapped, not a few grey levels
    first_layer = png(events["activations/conv_00"][0])
    assert first_layer.shape[:2] == (39, 2 * 47 + 2)  # two 39x47 maps side by side
    effective = png(events["kernels/effective"][0])
    # edge_blur is not linear: the 22x22 receptive field's kernel at three pixels, enlarged 8x, 8-px gaps.
    assert effective.shape[:2] == (22 * 8, 3 * 22 * 8 + 2 * 8)
    assert not np.array_equal(png(events["kernels/conv_00"][0]), png(events["kernels/conv_00"][-1]))


@pytest.mark.slow
def test_histograms_of_weights_and_gradients_per_layer(notebook_run):
    _, _, _, events = notebook_run
    for layer in ["conv_00", "conv_12"]:
        for kind in ["weights", "gradients"]:
            for name in ["kernel", "bias"]:
                assert [e.step for e in events[f"{kind}/{layer}/{name}"]] == PICTURE_STEPS
    # A histogram's buckets [left, right, count] count every weight: conv_00 has 2x2x1x2.
    buckets = tf.make_ndarray(events["weights/conv_00/kernel"][0].tensor_proto)
    assert buckets[:, 2].sum() == 8
    gradient = tf.make_ndarray(events["gradients/conv_12/kernel"][0].tensor_proto)
    assert gradient[:, 2].sum() == 3 * 3 * 4 and np.abs(gradient[:, :2]).max() > 0


def test_histogram_buckets_count_the_finite_values_between_their_extremes(tmp_path):
    with tf.summary.create_file_writer(str(tmp_path)).as_default(step=3):
        write_histogram("spread", np.array([[-1.0, 0.0], [0.5, 2.0]]))
        write_histogram("constant", np.full(5, 0.25))
        write_histogram("diverged", np.array([np.nan, np.inf, 1.0, 3.0]))
    accumulator, events = read_events(tmp_path)
    assert accumulator.SummaryMetadata("spread").plugin_data.plugin_name == "histograms"
    spread, constant, diverged = (
        tf.make_ndarray(events[tag][0].tensor_proto) for tag in ("spread", "constant", "diverged")
    )
    assert events["spread"][0].step == 3 and spread.shape == (30, 3)
    assert spread[0, 0] == -1.0 and spread[-1, 1] == 2.0 and np.array_equal(spread[:-1, 1], spread[1:, 0])
    assert spread[:, 2].sum() == 4 and spread[-1, 2] == 1  # the largest value falls in the last bucket
    assert constant[:, 2].sum() == 5 and constant[0, 0] == -0.25 and constant[-1, 1] == 0.75
    assert diverged[:, 2].sum() == 2 and (diverged[0, 0], diverged[-1, 1]) == (1.0, 3.0)


@pytest.mark.slow
def test_config_text_and_hparams(notebook_run):
    _, _, accumulator, events = notebook_run
    config = tf.make_ndarray(events["config"][0].tensor_proto).item().decode()
    assert "optimizer:" in config and "lr: 0.003" in config

    content = accumulator.SummaryMetadata(hparams_metadata.SESSION_START_INFO_TAG).plugin_data.content
    session = hparams_metadata.parse_session_start_info_plugin_data(content)
    hparams = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
               for name, value in session.hparams.items()}
    assert hparams == {
        "model": "notebook", "target": "edge_blur", "optimizer": "Adam", "lr": pytest.approx(3e-3),
        "steps": 12, "seed": 0, "optimizer.lr": pytest.approx(3e-3), "data.height": 40,
    }
    content = accumulator.SummaryMetadata(hparams_metadata.EXPERIMENT_TAG).plugin_data.content
    experiment = hparams_metadata.parse_experiment_plugin_data(content)
    assert [m.name.tag for m in experiment.metric_infos] == ["final/loss", "final/rel_mse", "final/psnr_db"]
    assert {h.name for h in experiment.hparam_infos} == set(hparams)


def test_hparams_from_config_reads_typed_overrides():
    cfg = compose_cfg("model=linear", "model.kernel_size=6", "+trainer.note=x")
    overrides = ["model=linear", "model.kernel_size=6", "hydra.verbose=true", "~foo", "+trainer.note=x"]
    assert hparams_from_config(cfg, overrides) == {
        "model": "linear", "target": "edge_blur", "optimizer": "Adam", "lr": 1e-3, "steps": 12, "seed": 0,
        "model.kernel_size": 6, "trainer.note": "x",
    }


def small_batch(model):
    cfg = compose_cfg()
    return make_batch(build(cfg, "data").train[0][..., 0], build(cfg, "target"), model)


def test_every_part_can_be_switched_off(tmp_path):
    model = linear(kernel_size=4)
    logger = TensorBoardLogger(
        tmp_path, small_batch(model), scalar_every=3, image_every=0,
        kernels=False, activations=False, histograms=False,
    )
    with logger:
        for step in range(7):
            logger.on_step(step, {"loss": 0.5, "grad_norm": 1.0}, model)
        logger.scalars(4, {"val_loss": 0.25})
    _, events = read_events(tmp_path)
    assert set(events) == {"loss", "grad_norm", "rel_mse", "psnr_db", "steps_per_sec", "val_loss", "prediction"}
    assert [e.step for e in events["loss"]] == [0, 3, 6]
    assert [e.step for e in events["prediction"]] == [0]  # image_every=0: only at the start
    assert values(events, "val_loss") == [0.25]


def test_effective_kernel_of_a_linear_model_is_its_kernel_next_to_the_targets(tmp_path):
    model = linear(kernel_size=4)
    kernel = model.layers[0].kernel.numpy()[:, :, 0, 0]
    assert np.allclose(effective_kernels(model, None, small_batch(model))[0], kernel, atol=1e-6)
    padded = sequential([dict(filters=1, kernel_size=2, padding="same")])  # 2x2: lines up with edge_blur
    assert np.allclose(effective_kernels(padded, None, small_batch(padded))[0], padded.layers[0].kernel.numpy()[..., 0, 0])

    target_kernel = np.ones((6, 6)) / 36
    with TensorBoardLogger(tmp_path, small_batch(model), target_kernel=target_kernel) as logger:
        logger.pictures(0, model)
    _, events = read_events(tmp_path)
    # Both on one enlargement (192 // 6 = 32 px a tap): 4x4 model kernel, 8-px gap, 6x6 target.
    assert png(events["kernels/effective"][0]).shape[:2] == (6 * 32, 4 * 32 + 8 + 6 * 32)


def square_picture():
    """A bright 16x16 square on a dark 40x40 floor, its top-left corner at (12, 12)."""
    image = np.zeros((40, 40), np.float32)
    image[12:28, 12:28] = 1.0
    return image


def test_landmarks_are_a_flat_spot_an_edge_and_a_corner():
    fp = conv((3, 3))  # output pixel (i, j) is centred on input pixel (i + 1, j + 1)
    flat, edge, corner = [(r + 1, c + 1) for r, c in landmarks(square_picture(), fp, (38, 38))]
    def to_side(v):  # distance to the nearest of the square's sides (the steps lie between pixels)
        return min(abs(v - 11.5), abs(v - 27.5))

    assert min(to_side(v) for v in flat) > 5  # away from the square's sides (the 5x5 windows see nothing)
    assert sorted(to_side(v) <= 3 for v in edge) == [False, True]  # near one side, away from its corners
    assert all(to_side(v) <= 3 for v in corner)  # near two sides: a corner
    assert landmarks(square_picture(), conv((41, 41)), (0, 0)) == []  # no receptive field fits


@given(arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 12)),
              elements=st.floats(-1e6, 1e6, allow_nan=False)))
def test_box5_is_the_mean_of_each_5x5_window_with_the_border_repeated(values):
    windows = np.lib.stride_tricks.sliding_window_view(np.pad(values, 2, mode="edge"), (5, 5))
    np.testing.assert_allclose(_box5(values), windows.mean(axis=(-2, -1)), rtol=1e-12, atol=1e-6)
    assert np.all(_box5(np.zeros_like(values)) == 0)  # a flat spot stays exactly flat: its landmark is not noise


def test_a_non_linear_model_has_a_kernel_per_landmark():
    # relu(x - 0.5), 1x1: slope 1 on the bright square, 0 on the dark floor.
    model = sequential([dict(filters=1, kernel_size=1, activation="relu", kernel_initializer="ones",
                             bias_initializer=keras.initializers.Constant(-0.5))])
    flat, edge, corner = landmark_kernels(model, square_picture()[..., None])
    assert flat.shape == (1, 1) and flat[0, 0] == 0.0  # the flat spot is on the floor
    linear_model = linear(kernel_size=3)
    kernel = linear_model.layers[0].kernel.numpy()[:, :, 0, 0]
    for found in landmark_kernels(linear_model, square_picture()[..., None]):
        assert np.allclose(found, kernel, atol=1e-6)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_landmark_kernels_from_crops_are_the_whole_image_gradients(padding):
    # The kernels come from the three receptive fields cut out of the image; the same input
    # gradients taken on the whole image (the definition) must agree, for VALID and SAME layers.
    keras.utils.set_random_seed(3)
    model = sequential([{"filters": 3, "kernel_size": 3, "activation": "elu", "padding": padding},
                        {"filters": 2, "kernel_size": (2, 3), "activation": "elu", "dilation_rate": 2},
                        {"filters": 1, "kernel_size": 3, "padding": padding}])
    image = square_picture()[..., None] + np.random.default_rng(0).normal(0, 0.1, (40, 40, 1)).astype(np.float32)
    fp = footprint(model)
    pixels = landmarks(image[..., 0], fp, (40 - fp.shrink[0], 40 - fp.shrink[1]))
    inputs = tf.constant(image[None])
    for found, (row, col) in zip(landmark_kernels(model, image), pixels, strict=True):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            value = model(inputs)[0, row, col, 0]
        whole = tape.gradient(value, inputs)[0, ..., 0].numpy().astype(np.float64)
        assert found.shape == fp.extent and np.abs(found).sum() > 0
        # All of the whole image's gradient lies in one receptive-field window, and that window is the kernel.
        assert np.isclose(np.abs(found).sum(), np.abs(whole).sum(), rtol=1e-5)
        windows = np.lib.stride_tricks.sliding_window_view(whole, fp.extent)
        assert np.abs(windows - found).max(axis=(-2, -1)).min() < 1e-6


def test_logger_flushes_and_closes_when_training_fails(tmp_path):
    model = linear(kernel_size=4)
    batch = small_batch(model)
    with pytest.raises(RuntimeError):
        with TensorBoardLogger(tmp_path, batch, config_text="lr: 1") as logger:
            logger.on_step(0, {"loss": 0.5}, model)
            raise RuntimeError("diverged")
    _, events = read_events(tmp_path)
    assert values(events, "loss") == [0.5] and "config" in events and "prediction" in events
    targets = batch.targets.numpy()
    assert math.isclose(values(events, "rel_mse")[0], 0.5 / np.var(targets, dtype=np.float64), rel_tol=1e-5)
    peak = float(targets.max() - targets.min())
    assert math.isclose(values(events, "psnr_db")[0], 10 * math.log10(peak**2 / 0.5), rel_tol=1e-5)


def test_a_failing_dashboard_part_is_skipped_with_one_warning_and_training_goes_on(tmp_path, monkeypatch, caplog):
    from convlearn import pictures

    def broken(*args, **kwargs):
        raise ValueError("Too many bins for data range")

    monkeypatch.setattr(pictures, "kernel_grid", broken)
    summary = run_experiment(compose_cfg("model=linear"), tmp_path).metrics  # pictures at steps 0, 5, 10 and the end
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"
    assert (tmp_path / "checkpoints" / "ckpt-12.index").is_file()
    warnings = [r.getMessage() for r in caplog.records if "dashboard part" in r.getMessage()]
    # Once per part, at its first failure: the kernels of the dashboard, and report.png that draws them too.
    assert warnings == [
        f"dashboard part '{part}' failed at step {step} and is skipped (ValueError: Too many bins for data range); "
        "training goes on"
        for part, step in [("kernels", 0), ("report.png", 12)]
    ]
    _, events = read_events(tmp_path / "tb")
    assert "kernels/conv_00" not in events  # skipped...
    assert [e.step for e in events["prediction"]] == PICTURE_STEPS  # ...and every other part still drawn
    assert len(events["kernels/effective"]) == 4


def test_a_full_disk_loses_neither_metrics_nor_the_checkpoint(tmp_path, monkeypatch, caplog):
    from matplotlib.figure import Figure

    import convlearn.logs

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)  # report.png
    monkeypatch.setattr(convlearn.logs, "write_image", disk_full)  # every TensorBoard picture
    monkeypatch.setattr(tf.summary, "scalar", disk_full)
    summary = run_experiment(compose_cfg("model=linear"), tmp_path).metrics
    assert summary["status"] == "completed"
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 12
    assert (tmp_path / "checkpoints" / "ckpt-12.index").is_file() and (tmp_path / "kernels.npz").is_file()
    assert not (tmp_path / "report.png").exists()
    failed = {r.getMessage().split("'")[1] for r in caplog.records if "dashboard part" in r.getMessage()}
    assert {"report.png", "prediction", "scalars"} <= failed
