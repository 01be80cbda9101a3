"""LSUV initialisation: each conv's output rescaled on the training data, once, before the first step."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import SMALL_MODEL

from convlearn.config import build
from convlearn.data import make_batch, shapes
from convlearn.initialization import unit_variance
from convlearn.pipeline import run_experiment
from convlearn.targets import footprint_of
from convlearn.training import Trainer, seed_everything


def seed_model_and_batch(cfg):
    """The seed model and the full-frame batch of ``cfg``'s generated image and target."""
    seed_everything(0)
    target = build(cfg, "target")
    model = build(cfg, "model", target=footprint_of(target))
    return model, make_batch(build(cfg, "data").train[0][..., 0], target, model)


def conv_output_stds(model, inputs):
    """Standard deviation of every conv's output before its bias and activation."""
    stds, x = [], inputs
    for layer in model.layers:
        stds.append(float(tf.math.reduce_std(layer.convolution_op(x, layer.kernel))))
        x = layer(x)
    return stds


def test_each_conv_output_gets_unit_std_and_the_last_the_targets(make_cfg):
    model, batch = seed_model_and_batch(make_cfg())
    before = conv_output_stds(model, batch.inputs)
    assert before[-1] < 0.05  # the signal fades through the Glorot-initialised stack

    factors = unit_variance(model, batch.inputs, batch.targets)

    after = conv_output_stds(model, batch.inputs)
    target_std = float(tf.math.reduce_std(batch.targets))
    np.testing.assert_allclose(after, [1.0] * 12 + [target_std], rtol=1e-3)
    assert len(factors) == 13
    np.testing.assert_allclose(unit_variance(model, batch.inputs, batch.targets), 1.0, rtol=1e-3)  # a fixed point


@pytest.mark.slow
def test_trainer_rescales_before_its_first_step(make_cfg):
    model, batch = seed_model_and_batch(make_cfg())
    expected = keras.models.clone_model(model)
    expected.set_weights(model.get_weights())
    unit_variance(expected, batch.inputs, batch.targets)
    unscaled = float(batch.loss(model))

    history = Trainer(steps=2, progress=False, init="lsuv").fit(model, keras.optimizers.Adam(1e-3), batch)

    # The first loss is measured before the first update: that of the rescaled model.
    assert history.losses[0] == pytest.approx(float(batch.loss(expected)), rel=1e-5)
    assert history.losses[0] != pytest.approx(unscaled, rel=1e-2)


@pytest.mark.slow
def test_resumed_run_keeps_its_trained_weights(make_cfg, tmp_path):
    # Random patches: the batch the rescaling looks at must also be the first one trained on.
    np.save(tmp_path / "image.npy", shapes(40, 48, n_circles=3, n_squares=3, min_size=4, max_size=10))
    lsuv = [*SMALL_MODEL, "trainer.init=lsuv", "logger.image_every=0", "data=file", f"data.path={tmp_path}/image.npy",
            "data.patch_size=24", "data.batch_size=2"]
    whole = run_experiment(make_cfg(*lsuv, "trainer.steps=4"), tmp_path / "whole").metrics
    run_experiment(make_cfg(*lsuv, "trainer.steps=2"), tmp_path / "split")
    resumed = run_experiment(make_cfg(*lsuv, "trainer.steps=4", "trainer.resume=true"), tmp_path / "split").metrics
    assert resumed["losses"] == whole["losses"]
