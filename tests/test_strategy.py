"""``trainer.strategy=mirrored``: data-parallel steps on two logical CPU devices match one device.

Logical devices must be configured before TensorFlow starts, so the comparison runs in a fresh
process; it trains the same model on the same two-image batch with and without the strategy.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SMALL_MODEL, TINY

SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from hydra import compose, initialize_config_dir
from convlearn.config import build
from convlearn.data import make_batch
from convlearn.training import seed_everything

with initialize_config_dir(config_dir=sys.argv[1], version_base="1.3"):
    cfg = compose(config_name="train", overrides=sys.argv[2:])
target = build(cfg, "target")


def fit(strategy, **optimizer_settings):
    trainer = build(cfg, "trainer", strategy=strategy)
    seed_everything(trainer.seed)
    with trainer.scope():
        model = build(cfg, "model", target=target.footprint)
        optimizer = build(cfg, "optimizer", **optimizer_settings)
    # Two different images, so that each replica gets its own share of the batch.
    images = np.stack([build(cfg, "data", seed=seed).train[0] for seed in (1, 2)])
    batch = make_batch(images, target, model)
    start = [w.copy() for w in model.get_weights()]
    history = trainer.fit(model, optimizer, batch)
    return {
        "status": history.status,
        "reason": history.reason,
        "unchanged": all(np.array_equal(a, b) for a, b in zip(start, model.get_weights())),
        "losses": history.losses,
        "grad_norms": history.grad_norms,
        "replicas": trainer.distribution.num_replicas_in_sync if trainer.distribution else 1,
        "variable": type(model.layers[0].kernel.value).__name__,
        "kernel": model.layers[0].kernel.numpy().ravel().tolist(),
    }


# A learning rate beyond float32 (inf once stored): finite loss and gradients, non-finite update.
print(json.dumps({"single": fit(None), "mirrored": fit("mirrored"), "diverging": fit("mirrored", lr=1e39)}))
"""


@pytest.mark.slow
def test_mirrored_strategy_matches_one_device_on_the_same_batch():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT / "configs"), *TINY, *SMALL_MODEL, "trainer.steps=4", "optimizer.lr=3e-3"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    single, mirrored = runs["single"], runs["mirrored"]

    assert (single["replicas"], mirrored["replicas"]) == (1, 2)
    assert mirrored["variable"] == "MirroredVariable"
    assert single["losses"][-1] < single["losses"][0]
    np.testing.assert_allclose(mirrored["losses"], single["losses"], rtol=1e-4)
    np.testing.assert_allclose(mirrored["grad_norms"], single["grad_norms"], rtol=1e-4)
    np.testing.assert_allclose(mirrored["kernel"], single["kernel"], rtol=1e-3, atol=1e-6)
    # The distributed step's guard, like the single-device one: the update that would make the
    # weights non-finite is not applied, and the run stops with the weights it started from.
    diverging = runs["diverging"]
    assert diverging["status"] == "failed" and "non-finite" in diverging["reason"], diverging["reason"]
    assert diverging["unchanged"] and np.all(np.isfinite(diverging["kernel"]))


def test_unknown_strategy_is_a_one_line_error(make_cfg):
    from convlearn.config import build
    from convlearn.errors import ConvlearnError

    with pytest.raises(ConvlearnError, match="trainer.strategy: unknown strategy 'tpu'; choose null or mirrored"):
        build(make_cfg("trainer.strategy=tpu"), "trainer")
