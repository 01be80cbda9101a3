"""Several training steps per compiled call (trainer.steps_per_call): the same run as one step per call."""

import numpy as np
import pytest

from convlearn.config import build
from convlearn.data import make_batch
from convlearn.errors import ConvlearnError
from convlearn.targets import footprint_of
from convlearn.training import Trainer, seed_everything


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
    batch = make_batch(build(cfg, "data"), target, model)
    recorder = Recorder(image_every=5)
    trainer = Trainer(steps=12, progress=False, steps_per_call=steps_per_call, **trainer_args)
    history = trainer.fit(model, build(cfg, "optimizer"), batch, recorder, validation=[batch])
    return history, recorder, model.get_weights()


@pytest.mark.parametrize("steps_per_call", [4, 7])
def test_several_steps_per_call_train_and_log_exactly_like_one(make_cfg, steps_per_call):
    # A cosine schedule: the logged learning rate must be each step's own, not the call's last.
    cfg = make_cfg("model=can", "model.depth=2", "model.width=2", "+optimizer.decay_steps=12")
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
    cfg = make_cfg("model=can", "model.depth=2", "model.width=2", "optimizer=sgd", "optimizer.lr=1e4")
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
