"""Kernel analysis: composition, linearisation, least squares, recovery metrics, trainer=lstsq."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from hydra import compose, initialize_config_dir
from scipy.signal import correlate2d

from conftest import ROOT, tiny_cfg
from test_data import BLUR, write_pairs
from convlearn import analysis, models
from convlearn.config import build
from convlearn.errors import ConvlearnError
from convlearn.kernels import gaussian, sobel
from convlearn.pipeline import run_experiment
from convlearn.targets import Convolve, Pipeline

RNG = np.random.default_rng(0)


def randomise(model: keras.Model) -> keras.Model:
    for layer in models.conv_layers(model):
        layer.kernel.assign(RNG.normal(size=layer.kernel.shape).astype(np.float32))
    return model


def test_composed_kernel_equals_applying_the_stack():
    # Several channels and a dilated layer: the composition sums over the channels in between.
    model = randomise(
        models.sequential(
            [
                dict(filters=2, kernel_size=2, use_bias=False),
                dict(filters=3, kernel_size=3, dilation_rate=2, use_bias=False),
                dict(filters=1, kernel_size=(1, 3), use_bias=False),
            ]
        )
    )
    kernel = analysis.composed_kernel(model)
    assert kernel.shape == (6, 8, 1, 1)
    image = RNG.random((15, 17))
    direct = model(image[None, ..., None].astype(np.float32))[0, ..., 0].numpy()
    assert np.allclose(direct, correlate2d(image, kernel[:, :, 0, 0], mode="valid"), atol=1e-4)


def test_linearised_kernel_of_a_linear_model_is_its_kernel():
    model = randomise(models.linear(kernel_size=(3, 4)))
    kernel = models.conv_layers(model)[0].kernel.numpy()[:, :, 0, 0]
    image = RNG.random((9, 11))
    assert np.allclose(analysis.linearised_kernel(model, image)[:, :, 0], kernel, atol=1e-6)
    deep = randomise(models.deep_linear(depth=3, width=2))
    assert np.allclose(analysis.linearised_kernel(deep)[:, :, 0], analysis.composed_kernel(deep)[:, :, 0, 0], atol=1e-4)


def test_linearised_kernel_of_a_nonlinear_model_is_its_input_gradient():
    # relu(k * x) at an input where k * x > 0 everywhere acts like k; where < 0, like zero.
    model = models.sequential([dict(filters=1, kernel_size=3, activation="relu", kernel_initializer="ones")])
    assert np.array_equal(analysis.linearised_kernel(model, np.ones((5, 5)))[:, :, 0], np.ones((3, 3)))
    assert np.array_equal(analysis.linearised_kernel(model, -np.ones((5, 5)))[:, :, 0], np.zeros((3, 3)))
    assert analysis.effective_kernel(models.notebook(), RNG.random((30, 30))).shape == (22, 22)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_linearised_kernel_equals_the_full_image_input_gradient(padding):
    # It runs the model on the centre pixel's receptive field only; the gradient through the whole
    # image, cut to that field, must be the same (everything outside it is exactly zero).
    model = models.sequential(
        [
            dict(filters=3, kernel_size=2, activation="elu", padding=padding),
            dict(filters=2, kernel_size=3, dilation_rate=2, activation="tanh", padding=padding),
            dict(filters=1, kernel_size=(3, 2), padding=padding),
        ]
    )
    image = RNG.random((19, 24)).astype(np.float32)
    inputs = tf.constant(image[None, ..., None])
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = model(inputs)
        rows, cols = outputs.shape[1] // 2, outputs.shape[2] // 2
        pixel = outputs[0, rows, cols, 0]
    full = tape.gradient(pixel, inputs)[0, ..., 0].numpy()
    kernel = analysis.linearised_kernel(model, image)[:, :, 0]
    nonzero = np.argwhere(full != 0)
    top, left = nonzero.min(axis=0)
    assert kernel.shape == (8, 7)  # receptive field: 2 + 2*2 + 3 - 2 rows, 2 + 2*2 + 2 - 2 columns
    assert np.allclose(full[top : top + 8, left : left + 7], kernel, atol=1e-6)
    assert np.abs(full).sum() == pytest.approx(np.abs(kernel).sum(), rel=1e-5)


def test_lstsq_recovers_a_known_kernel_and_bias_exactly(monkeypatch):
    monkeypatch.setattr(analysis, "CHUNK_ROWS", 100)  # many QR updates, as on a large image
    image = RNG.random((30, 40))
    kernel = RNG.normal(size=(4, 5))
    targets = correlate2d(image, kernel, mode="valid") + 0.25
    found, bias, residual = analysis.lstsq_kernel(image, targets, (4, 5), use_bias=True)
    assert np.abs(found - kernel).max() < 1e-10 and abs(bias - 0.25) < 1e-10 and residual < 1e-20
    # Without the bias column the constant cannot be fitted, and the residual says so.
    assert analysis.lstsq_kernel(image, targets, (4, 5))[2] > 1e-4
    # A stack of images is one problem: two halves of the image give the same answer.
    halves = np.stack([image[:, :20], image[:, 20:]]), np.stack([targets[:, :16], targets[:, 20:36]])
    assert np.abs(analysis.lstsq_kernel(*halves, (4, 5), use_bias=True)[0] - kernel).max() < 1e-10


def test_lstsq_fit_aligns_a_larger_kernel_with_the_target():
    true = sobel("x")
    image = RNG.random((25, 30))
    kernel, _, residual = analysis.lstsq_fit(image, Pipeline([Convolve(true)]), (5, 5))
    # The 3x3 Sobel sits in the centre of the best 5x5 kernel; float32 targets limit the precision.
    assert analysis.kernel_rel_error(kernel, true) < 1e-6 and residual < 1e-12
    assert np.abs(kernel[[0, -1]]).max() < 1e-6


def test_kernel_rel_error_centres_kernels_and_refuses_half_pixel_shifts():
    true = gaussian(1.0, 3)
    assert analysis.kernel_rel_error(np.pad(true, 1), true) == 0.0
    assert np.isclose(analysis.kernel_rel_error(2 * true, true), 1.0)
    with pytest.raises(ConvlearnError, match="differ by an even number"):
        analysis.kernel_rel_error(np.ones((4, 4)), true)


GAUSSIAN_5 = ("target=gaussian", "target.size=5")


# Issue 4's kernels: a Gaussian, the Sobel x kernel (spelt as scripts/model_zoo.py does) and a random 7x7.
LINEAR_TARGETS = {
    "gaussian_5x5": GAUSSIAN_5,
    "sobel_x": ("target=custom", "target.values=[[-1,0,1],[-2,0,2],[-1,0,1]]"),
    "random_7x7": ("target=custom", f"target.values={np.random.default_rng(7).normal(size=(7, 7)).round(3).tolist()}"),
}


def recover_cfg(*overrides: str, trainer: str = "default"):
    """experiment=recover_kernel on a 40x48 noise image, pictures only at the start and the end."""
    quiet = ["trainer.progress=false"] if trainer == "default" else []  # trainer=lstsq has no progress bar
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=["experiment=recover_kernel", "data.height=40", "data.width=48", "logger.image_every=0",
                       f"trainer={trainer}", *quiet, *overrides],
        )


@pytest.mark.parametrize("target", LINEAR_TARGETS.values(), ids=LINEAR_TARGETS)
@pytest.mark.parametrize(("trainer", "tolerance"), [pytest.param("default", 1e-3, marks=pytest.mark.slow), ("lstsq", 1e-6)],
                         ids=["trained", "lstsq"])
def test_the_recover_kernel_preset_recovers_linear_kernels(tmp_path, target, trainer, tolerance):
    # Gradient descent on white noise (the preset's 300 steps) and the closed-form solve both
    # reach the kernel; the float32 target limits either to ~1e-7.
    summary = run_experiment(recover_cfg(*target, trainer=trainer), tmp_path).metrics
    assert summary["kernel_rel_error"] < tolerance and summary["lstsq_rel_mse"] < 1e-10


def test_the_recover_kernel_preset_trains_with_plain_gradient_descent_or_another_optimizer():
    gd = build(recover_cfg(), "optimizer")
    assert type(gd) is keras.optimizers.SGD and gd.momentum == 0.0 and np.isclose(float(gd.learning_rate), 0.4)
    # The preset sets no SGD-only key, so another optimizer composes without a ~ override.
    adam = build(recover_cfg("optimizer=adam", "optimizer.lr=1e-2"), "optimizer")
    assert type(adam) is keras.optimizers.Adam and np.isclose(float(adam.learning_rate), 1e-2)


@pytest.mark.slow
def test_deep_linear_composes_to_the_gaussian(tmp_path):
    # Two 3x3 layers represent the 5x5 Gaussian exactly; from split_delta plain gradient descent
    # gets there (centred deltas stop at ~1.7%). Measured over seeds: 5e-5 to 1.2e-4.
    cfg = recover_cfg("model=deep_linear", "model.kernel_initializer=split_delta", *GAUSSIAN_5, "trainer.steps=1000")
    summary = run_experiment(cfg, tmp_path).metrics
    assert summary["kernel_rel_error"] < 1e-3
    reloaded = keras.saving.load_model(tmp_path / "model.keras")
    composed = analysis.composed_kernel(reloaded)[:, :, 0, 0]
    assert np.isclose(analysis.kernel_rel_error(composed, gaussian(1.0, 5)), summary["kernel_rel_error"])


@pytest.mark.parametrize("trainer", [pytest.param("default", marks=pytest.mark.slow), "lstsq"])
def test_pairs_runs_report_the_least_squares_optimum_and_lstsq_solves_them(tmp_path, trainer):
    # The after-images are BLUR applied to the before-images, so the best 5x5 kernel (BLUR in its
    # centre) fits the compared pixels exactly; with no reference kernel there is no kernel_rel_error.
    write_pairs(tmp_path, 3)
    cfg = tiny_cfg(
        "data=pairs", f"data.inputs={tmp_path}/in", f"data.targets={tmp_path}/out", "data.patch_size=null",
        "model=linear", "model.kernel_size=5", f"trainer={trainer}",
    )
    summary = run_experiment(cfg, tmp_path / "run").metrics
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["lstsq_rel_mse"] == summary["lstsq_rel_mse"] < 1e-12 and "kernel_rel_error" not in metrics
    with np.load(tmp_path / "run" / "kernels.npz", allow_pickle=False) as saved:
        error = analysis.kernel_rel_error(saved["conv_00"][:, :, 0, 0], BLUR)
    if trainer == "lstsq":
        assert error < 1e-6 and summary["rel_mse"] < 1e-12
    else:  # 12 steps of Adam from a random kernel: far from the optimum, and the metric says so
        assert error > 0.1 and summary["rel_mse"] > 1e6 * summary["lstsq_rel_mse"]


def test_no_recovery_metrics_for_a_nonlinear_target(make_cfg, tmp_path):
    summary = run_experiment(make_cfg("model=linear", "trainer.steps=2"), tmp_path).metrics
    assert "kernel_rel_error" not in summary and "lstsq_rel_mse" not in summary
