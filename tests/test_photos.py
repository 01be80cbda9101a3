"""data=samples: scikit-image's sample photos with a named split, and one line when the extra is missing."""

import json
import sys

import numpy as np
import pytest
from skimage import data as skdata

from convlearn.config import build
from convlearn.errors import ConvlearnError
from convlearn.photos import samples
from convlearn.pipeline import build_experiment, run_experiment


def test_the_default_split_holds_photos_out_at_half_size(make_cfg):
    images = build(make_cfg("data=samples"), "data")
    assert len(images.train) == 8 and len(images.val) == 2 and images.channels == 1
    assert images.train[0].shape == (256, 256, 1)  # the 512x512 astronaut, halved
    assert images.val[0].shape == (200, 300, 1)  # coffee, 400x600
    assert all(image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1 for image in images.train)
    assert images.patch_size == 64


def test_photos_are_scikit_images_own(make_cfg):
    images = samples(train=["camera"], val=[], scale=1.0)
    np.testing.assert_allclose(images.train[0][..., 0], skdata.camera() / 255.0, atol=1e-6)


def test_colour_photos_in_rgb_with_separate_or_shared_kernels():
    separate = samples(train=["coffee", "camera"], val=["chelsea"], channels="rgb", kernels="separate", scale=0.25)
    assert separate.channels == 3 and separate.train[1].shape == (128, 128, 3)
    # The gray camera photo is the same in every channel.
    assert np.array_equal(separate.train[1][..., 0], separate.train[1][..., 2])
    shared = samples(train=["coffee"], val=["chelsea"], channels="rgb", scale=0.25)
    assert shared.channels == 1 and len(shared.train) == 3 and len(shared.val) == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(train=["mona_lisa"]), "data.train: no sample photo named mona_lisa"),
        (dict(val=["camera"]), "data.val: camera also in data.train"),
        (dict(train=[]), "data.train: name at least one"),
        (dict(scale=0), "data.scale"),
        (dict(channels="cmyk"), "data.channels"),
    ],
)
def test_mistakes_get_one_line(kwargs, message):
    with pytest.raises(ConvlearnError, match=message):
        samples(**kwargs)


def test_without_scikit_image_it_names_the_extra(monkeypatch):
    for module in ("skimage", "skimage.color", "skimage.data", "skimage.transform", "skimage.util"):
        monkeypatch.setitem(sys.modules, module, None)  # `import skimage...` now fails as if not installed
    with pytest.raises(ConvlearnError, match=r"pip install 'convlearn\[photos\]'"):
        samples()


@pytest.mark.slow
def test_a_median_trains_on_photos_and_is_measured_on_held_out_ones(make_cfg, tmp_path):
    # python train.py data=samples target=median model=can, small.
    cfg = make_cfg(
        "data=samples", "target=median", "model=can", "model.depth=3", "model.width=4", "data.scale=0.25",
        "data.train=[camera,coins]", "data.val=[moon]", "data.patch_size=32", "trainer.val_every=2",
    )
    summary = run_experiment(cfg, tmp_path).metrics
    assert np.isfinite(summary["val_loss"]) and summary["val_loss"] > 0
    # PSNR on the held-out photo, peak = the range of its targets over the compared pixels.
    held_out = build_experiment(cfg).feed.validation[0].targets.numpy()
    assert summary["val_psnr_db"] == pytest.approx(10 * np.log10(np.ptp(held_out) ** 2 / summary["val_loss"]))
    assert json.loads((tmp_path / "metrics.json").read_text())["val_loss"] == summary["val_loss"]
