"""The trainer: its float16 path (loss scaling's overflows are the scaler's business, a non-finite loss still stops)
and several steps per compiled call (trainer.steps_per_call: the same run as one step per call)."""

from __future__ import annotations

import json
import math
import signal
import threading

import keras
import numpy as np
import pytest
import scipy.ndimage
from conftest import SMALL_MODEL

from convlearn import perf, step_cache, training
from convlearn.config import build
from convlearn.data import make_batch
from convlearn.errors import ConvlearnError
from convlearn.models import linear
from convlearn.targets import footprint_of
from convlearn.training import History, Trainer, _until_signal, seed_everything

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


class Recorder:
    """A logger that keeps every step's scalars and, where it would draw pictures, the model's weights."""

    def __init__(self, image_every: int) -> None:
        self.image_every = image_every
        self.steps, self.pictures, self.values = [], {}, []

    def on_step(self, step, scalars, model):
        self.steps.append((step, scalars))
        if step == 0 or step % self.image_every == 0:
            self.pictures[step] = np.concatenate([w.ravel() for w in model.get_weights()])

    def scalars(self, step, values):
        self.values.append((step, values))


def fit(cfg, steps_per_call: int, **trainer_args):
    """Train ``cfg``'s model with a :class:`Recorder` as logger; the history, the recorder and the weights."""
    seed_everything(0)
    target = build(cfg, "target")
    model = build(cfg, "model", target=footprint_of(target))
    batch = make_batch(build(cfg, "data").train[0][..., 0], target, model)
    recorder = Recorder(image_every=5)
    trainer = Trainer(steps=12, progress=False, steps_per_call=steps_per_call, **trainer_args)
    history = trainer.fit(model, build(cfg, "optimizer"), batch, recorder, validation=[batch])
    return history, recorder, model.get_weights()


@pytest.mark.parametrize("steps_per_call", [4, pytest.param(7, marks=pytest.mark.slow)])
def test_several_steps_per_call_train_and_log_exactly_like_one(make_cfg, steps_per_call):
    # A cosine schedule: the logged learning rate must be each step's own, not the call's last.
    cfg = make_cfg(*SMALL_MODEL, "+optimizer.decay_steps=12")
    one, one_log, one_weights = fit(cfg, 1, val_every=4)
    many, many_log, many_weights = fit(cfg, steps_per_call, val_every=4)
    assert many.losses == one.losses and many.grad_norms == one.grad_norms and many.val_losses == one.val_losses
    assert many_log.values == one_log.values
    assert [(step, s["loss"], s["grad_norm"]) for step, s in many_log.steps] == [
        (step, s["loss"], s["grad_norm"]) for step, s in one_log.steps]
    # The schedule's rate, computed in the compiled call instead of eagerly: equal up to float32 rounding.
    rates = [s["learning_rate"] for _, s in one_log.steps]
    assert [s["learning_rate"] for _, s in many_log.steps] == pytest.approx(rates, rel=1e-6)
    assert len(set(rates)) == 12
    assert many_log.pictures.keys() == one_log.pictures.keys() == {0, 5, 10}
    for step, weights in one_log.pictures.items():  # the pictures show their own step's model
        np.testing.assert_array_equal(many_log.pictures[step], weights)
    for a, b in zip(one_weights, many_weights):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("on_nonfinite", ["stop", "skip"])
def test_a_call_stops_at_its_first_nonfinite_step_like_single_steps(make_cfg, on_nonfinite):
    # A learning rate that blows up within the run: the guard acts on the same step either way.
    cfg = make_cfg(*SMALL_MODEL, "optimizer=sgd", "optimizer.lr=1e4")
    one, _, one_weights = fit(cfg, 1, on_nonfinite=on_nonfinite)
    many, _, many_weights = fit(cfg, 5, on_nonfinite=on_nonfinite)
    assert (one.status, one.stopped_step, one.skipped_steps) == (many.status, many.stopped_step, many.skipped_steps)
    assert one.status == "failed" if on_nonfinite == "stop" else one.skipped_steps
    np.testing.assert_array_equal(np.array(one.losses), np.array(many.losses))
    for a, b in zip(one_weights, many_weights):
        np.testing.assert_array_equal(a, b)


def test_steps_per_call_must_be_positive():
    with pytest.raises(ConvlearnError, match="trainer.steps_per_call: must be >= 1"):
        Trainer(steps_per_call=0)


main_thread_only = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="signal handlers are the main thread's"
)


def _calls_until_ctrl_c(presses: int) -> tuple[list[int], History]:
    """The calls a run makes when Ctrl-C is pressed ``presses`` times during its third call."""
    history, made = History(), []
    for first, _ in _until_signal(((step, 1) for step in range(10)), history):
        made.append(first)
        if first == 2:
            for _ in range(presses):
                signal.raise_signal(signal.SIGINT)
    return made, history


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler (KeyboardInterrupt), as a terminal's ``python`` has it, for the
    test's duration: a pytest-xdist worker may run with SIGINT ignored, which the trainer restores."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield signal.default_int_handler
    signal.signal(signal.SIGINT, previous)


@main_thread_only
def test_ctrl_c_stops_the_run_before_its_next_call(python_sigint):
    made, history = _calls_until_ctrl_c(1)
    assert made == [0, 1, 2] and (history.status, history.stopped_step) == ("interrupted", 3)
    assert signal.getsignal(signal.SIGINT) is python_sigint


@main_thread_only
def test_a_second_ctrl_c_interrupts_at_once(python_sigint):
    with pytest.raises(KeyboardInterrupt):  # train.py records the run as interrupted from it
        _calls_until_ctrl_c(2)
    assert signal.getsignal(signal.SIGINT) is python_sigint


def test_auto_times_the_steps_once_per_workload_and_then_trains_with_the_remembered_pick(
    make_cfg, monkeypatch, tmp_path, caplog
):
    monkeypatch.setenv("CONVLEARN_CACHE_DIR", str(tmp_path))
    cfg = make_cfg(*SMALL_MODEL)
    with caplog.at_level("INFO", logger="convlearn"):
        first, _, first_weights = fit(cfg, 1, jit_compile="auto")
    assert "steps/s on the first batch" in caplog.text  # measured
    assert (tmp_path / step_cache.FILE_NAME).exists() and first.jit_compile in (True, False)

    def no_timing(*args, **kwargs):
        raise AssertionError("a remembered workload is not timed again")

    monkeypatch.setattr(training, "fastest_step", no_timing)
    caplog.clear()
    with caplog.at_level("INFO", logger="convlearn"):
        again, _, again_weights = fit(cfg, 1, jit_compile="auto")
    assert "when first measured" in caplog.text
    target = build(cfg, "target")
    model = build(cfg, "model", target=footprint_of(target))
    batch = make_batch(build(cfg, "data").train[0][..., 0], target, model)
    assert Trainer(jit_compile="auto").uses_xla(model, build(cfg, "optimizer"), batch) is first.jit_compile
    assert Trainer(jit_compile=not first.jit_compile).uses_xla(model, build(cfg, "optimizer"), batch) is (
        not first.jit_compile)  # pinned: as pinned
    assert again.jit_compile == first.jit_compile and again.losses == first.losses  # same seed, same result
    for a, b in zip(first_weights, again_weights):
        np.testing.assert_array_equal(a, b)
    # The record decides, whatever a timing would say now: flip it and the other step trains.
    records = json.loads((tmp_path / step_cache.FILE_NAME).read_text())
    (entry,) = records.values()
    entry["jit_compile"] = not entry["jit_compile"]
    (tmp_path / step_cache.FILE_NAME).write_text(json.dumps(records))
    flipped, _, _ = fit(cfg, 1, jit_compile="auto")
    assert flipped.jit_compile is (not first.jit_compile)
    np.testing.assert_allclose(flipped.losses, first.losses, rtol=1e-3)  # the other step: rounded otherwise
