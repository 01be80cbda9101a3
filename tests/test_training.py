"""The trainer's float16 path: loss scaling's overflows are the scaler's business, a non-finite loss still stops."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import scipy.ndimage

from convlearn import perf
from convlearn.data import make_batch
from convlearn.models import linear
from convlearn.training import Trainer

FP16_CPU = {"avx512_fp16"}  # lets the fp16 path run on any CPU (slowly, but the numbers are the same)


@pytest.fixture
def fp16_trainer(monkeypatch):
    """A trainer with trainer.precision=fp16; the float32 policy is put back afterwards."""
    policy = keras.config.dtype_policy()
    monkeypatch.setattr(perf, "cpu_flags", lambda: FP16_CPU)

    def make(steps: int, **kwargs) -> Trainer:
        perf.set_precision("fp16")  # process-wide, as the pipeline's configure_tensorflow does before building
        return Trainer(steps=steps, progress=False, precision="fp16", **kwargs)

    yield make
    keras.config.set_dtype_policy(policy)


def blur_pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    image = np.random.default_rng(seed).normal(size=(24, 24)).astype(np.float32)
    return image, scipy.ndimage.uniform_filter(image, 3).astype(np.float32)


def test_loss_scale_overflows_are_skipped_and_the_run_completes(fp16_trainer):
    trainer = fp16_trainer(steps=30)
    model = linear(kernel_size=3)
    assert model.layers[0].compute_dtype == "float16"
    # A scale so large that the float16 gradients overflow: the scaler halves it at each such step.
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-2), initial_scale=2.0**40)
    image, target = blur_pair()
    history = trainer.fit(model, optimizer, make_batch(image, None, model, given=target))
    assert history.status == "completed" and history.steps == 30 and not history.skipped_steps
    overflowed = [step for step, norm in enumerate(history.grad_norms) if not math.isfinite(norm)]
    assert overflowed == list(range(len(overflowed))) and 0 < len(overflowed) < 30  # the first steps only
    assert float(optimizer.dynamic_scale) == 2.0 ** (40 - len(overflowed))
    assert int(optimizer.iterations) == 30 - len(overflowed)  # the overflowed updates were not applied
    assert all(math.isfinite(loss) for loss in history.losses) and history.losses[-1] < 0.9 * history.losses[0]


def test_fp16_trains_with_float32_weights_and_a_loss_scaled_optimizer(fp16_trainer):
    trainer = fp16_trainer(steps=10)
    model = linear(kernel_size=3)
    image, target = blur_pair(1)
    adam = keras.optimizers.Adam(1e-2)
    history = trainer.fit(model, adam, make_batch(image, None, model, given=target))
    assert history.status == "completed" and history.losses[-1] < history.losses[0]
    assert {w.dtype for w in model.weights} == {"float32"}
    assert int(adam.iterations) == 10  # the trainer wrapped it, and every step was applied


def test_a_non_finite_loss_still_stops_an_fp16_run(fp16_trainer):
    trainer = fp16_trainer(steps=5)
    model = linear(kernel_size=3)
    image, target = blur_pair(2)
    image[5, 5] = np.nan
    before = model.layers[0].kernel.numpy()
    history = trainer.fit(model, keras.optimizers.Adam(1e-2), make_batch(image, None, model, given=target))
    assert history.status == "failed" and history.stopped_step == 0 and "non-finite" in history.reason
    np.testing.assert_array_equal(model.layers[0].kernel.numpy(), before)


def test_fp16_with_a_distribution_strategy_is_refused(fp16_trainer):
    with pytest.raises(Exception, match=r"^trainer\.precision: fp16's loss scaling runs in the single-device step"):
        fp16_trainer(steps=1, strategy="mirrored")
