"""trainer=lbfgs: the two-loop recursion, the line search's guarantees, linear kernels learned on photo-like images."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.ndimage import gaussian_filter

from conftest import tiny_cfg
from convlearn.config import build
from convlearn.data import make_batch, shapes
from convlearn.config_checks import validate
from convlearn.errors import ConvlearnError
from convlearn.pipeline import run_experiment
from convlearn.quasi_newton import LBFGS, QuasiNewtonState
from convlearn.targets import footprint_of
from convlearn.training import seed_everything

VECTORS = arrays(np.float64, 6, elements=st.floats(-10, 10))


def photo_like(height: int = 48, width: int = 56) -> np.ndarray:
    """Like a photograph where it matters here: bright, smooth, a few soft edges, faint texture, so
    its mean and low frequencies dominate the patches' second moments."""
    smooth = gaussian_filter(shapes(height, width, 3, 3, 4, 12, noise=0.0), 0.5)
    texture = np.random.default_rng(1).normal(0.0, 0.005, (height, width))
    # The 7x7 patches' second-moment matrix has condition number ~6e4 (scikit-image's camera, halved: ~1.5e5).
    return (0.3 + 0.7 * (smooth + texture)).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(VECTORS, VECTORS), min_size=1, max_size=5), VECTORS)
def test_the_direction_meets_the_newest_secant_and_descends(pairs, grad):
    # For every pair sequence with positive curvature: H y = s for the newest pair (the quasi-Newton
    # condition), and H is positive definite, so -H g points downhill for every g != 0.
    state = QuasiNewtonState(6, memory=3)
    stored = []
    for s, y in pairs:
        if s @ y > 1e-3 * np.linalg.norm(s) * np.linalg.norm(y) and s @ y > 1e-3:
            state.remember(tf.constant(s, tf.float32), tf.constant(y, tf.float32))
            stored.append((s, y))
    if stored:
        s, y = stored[-1]
        found = -state.direction(tf.constant(y, tf.float32)).numpy()
        np.testing.assert_allclose(found, s, rtol=2e-2, atol=1e-3 * np.abs(s).max())
    if np.linalg.norm(grad) > 1e-3:
        assert float(tf.tensordot(tf.constant(grad, tf.float32), state.direction(tf.constant(grad, tf.float32)), 1)) < 0
    assert int(state.pairs) == len(stored)


@pytest.mark.slow
def test_a_nonlinear_model_s_loss_never_rises_and_a_non_finite_start_changes_nothing():
    cfg = tiny_cfg("model.blur_layers=2")
    seed_everything(0)
    target = build(cfg, "target")
    model = build(cfg, "model", target=footprint_of(target))
    batch = make_batch(build(cfg, "data").train[0][..., 0], target, model)
    history = LBFGS(steps=15, progress=False).fit(model, None, batch)
    assert history.status == "completed" and history.steps == 15
    assert all(b <= a for a, b in zip(history.losses, history.losses[1:]))
    assert history.losses[-1] < 0.5 * history.losses[0]

    weights = [w.copy() for w in model.get_weights()]
    broken = make_batch(np.full((40, 48), np.nan, np.float32), target, model)
    failed = LBFGS(steps=3, progress=False).fit(model, None, broken)
    assert failed.status == "failed" and failed.stopped_step == 0
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))


@pytest.mark.slow
def test_a_resumed_run_continues_exactly(tmp_path):
    cfg = tiny_cfg("model=linear", "target=gaussian", "trainer=lbfgs", "trainer.checkpoint_every=3")

    def fit(steps: int, resume: bool) -> list[float]:
        seed_everything(0)
        target = build(cfg, "target")
        model = build(cfg, "model", target=footprint_of(target))
        batch = make_batch(build(cfg, "data").train[0][..., 0], target, model)
        trainer = LBFGS(steps=steps, progress=False, checkpoint_every=3, resume=resume)
        return trainer.fit(model, None, batch, checkpoint_dir=tmp_path / f"{steps}").losses

    whole = fit(10, resume=False)
    (tmp_path / "10").rename(tmp_path / "whole")
    fit(4, resume=False)  # checkpoints after steps 3 and 4 in tmp_path/4
    (tmp_path / "4").rename(tmp_path / "10")
    assert fit(10, resume=True) == whole


@pytest.mark.slow
@pytest.mark.parametrize("data", ["photo", "noise"])
def test_recover_kernel_learns_the_gaussian_without_a_step_size_on_any_image(tmp_path, data):
    # The 7x7 Gaussian (sigma 1) learned by training from Glorot kernels. On the bright, smooth image
    # gradient descent at the preset's noise-tuned rate diverges; L-BFGS needs no rate and converges.
    np.save(tmp_path / "photo.npy", photo_like())
    photo = ["data=file", f"data.path={tmp_path}/photo.npy"]
    source = photo if data == "photo" else ["data=noise", "data.height=40", "data.width=48"]
    common = ["experiment=recover_kernel", *source, "logger.image_every=0", "trainer.progress=false"]
    common.append("trainer.steps=300")
    summary = run_experiment(tiny_cfg(*common), tmp_path / "lbfgs").metrics
    assert summary["status"] == "completed" and summary["steps"] == 300
    assert summary["kernel_rel_error"] < 1e-2
    assert all(b <= a for a, b in zip(summary["losses"], summary["losses"][1:]))
    if data == "photo":
        gd = run_experiment(tiny_cfg(*common, "trainer=default", "trainer.steps=40"), tmp_path / "gd").metrics
        assert gd["status"] == "failed"


def test_lbfgs_refuses_random_patches_and_bad_settings(tmp_path):
    np.save(tmp_path / "photo.npy", photo_like())
    patches = tiny_cfg(
        "trainer=lbfgs", "model=linear", "target=gaussian", "data=file", f"data.path={tmp_path}/photo.npy",
        "data.patch_size=32",
    )
    with pytest.raises(ConvlearnError, match="trainer=lbfgs: L-BFGS needs the same full batch"):
        run_experiment(patches, tmp_path / "run")
    with pytest.raises(ConvlearnError, match="trainer.memory"):
        LBFGS(memory=0)
    with pytest.raises(ConvlearnError, match="trainer.jit_compile"):
        LBFGS(jit_compile="auto")
    with pytest.raises(ConvlearnError, match="trainer.strategy: trainer=lbfgs trains on one device in float32"):
        LBFGS(strategy="mirrored")
    # The default trainer's settings, and what the config checks know of them, hold for L-BFGS too.
    with pytest.raises(ConvlearnError, match=r"trainer.steps: must be >= 1, got 0"):
        validate(tiny_cfg("trainer=lbfgs", "model=linear", "target=gaussian", "trainer.steps=0"))
    with pytest.raises(ConvlearnError, match=r"trainer.stepz: unknown key; .*LBFGS takes checkpoint_every, .*memory"):
        validate(tiny_cfg("trainer=lbfgs", "model=linear", "target=gaussian", "+trainer.stepz=1"))
