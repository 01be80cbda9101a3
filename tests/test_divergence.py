"""The divergence matrix: every model of the zoo, at a learning rate that drives its weights to huge
finite values and its loss to infinity, with the dashboard drawing every step, ends with its results:
a status, strict-JSON metrics, finite kernels and a finite checkpoint, and no dashboard part fails on
the arrays such a run produces."""

import json

import numpy as np
import pytest
import tensorflow as tf

from convlearn.pipeline import run_experiment

# Each model with a target it lines up with (deep_linear's 5x5 map needs an odd-shrinking one).
MODELS = {
    "can": [], "deep_linear": ["target=gaussian"], "edge_blur_structured": [], "linear": [], "notebook": [],
    "sequential": [],
}

# Adam moves every weight by about lr a step: after the first step the weights are near 1e6 (huge but
# finite, the values that broke the histograms), and the loss then overflows to inf.
DIVERGING = ["optimizer.lr=1e6", "trainer.steps=2", "trainer.checkpoint_every=1", "logger.scalar_every=1",
             "logger.image_every=1"]


def strict_json(path):
    def refuse(token):
        raise ValueError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_a_diverging_run_of_every_model_ends_with_finite_results(make_cfg, tmp_path, caplog, model):
    run_experiment(make_cfg(f"model={model}", *MODELS[model], *DIVERGING), tmp_path)

    metrics = strict_json(tmp_path / "metrics.json")
    assert metrics["status"] in ("failed", "completed")
    if metrics["status"] == "failed":
        assert "non-finite" in metrics["reason"] and metrics["stopped_step"] == 1
    with np.load(tmp_path / "kernels.npz", allow_pickle=False) as kernels:
        weights = [kernels[key] for key in kernels.files]
    assert all(np.all(np.isfinite(w)) for w in weights)
    assert max(np.abs(w).max() for w in weights) > 1e4  # the pictures were drawn from huge weights
    reader = tf.train.load_checkpoint(metrics["checkpoint"])
    for key, dtype in reader.get_variable_to_dtype_map().items():
        if key.startswith(("model/", "optimizer/")) and dtype.is_floating:  # not the loss records
            assert np.all(np.isfinite(reader.get_tensor(key))), key
    assert not [r.getMessage() for r in caplog.records if "dashboard part" in r.getMessage()]
