"""Loading images (file, folder, pairs), the patch stream, RGB, normalisation and validation."""

import itertools
import json
import tempfile
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tensorflow as tf
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy.ndimage import correlate
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from convlearn import kernels, models
from convlearn.config import build
from convlearn.data import Batch, Stream, file, folder, load_image, make_feed, noise, pairs, shapes
from convlearn.errors import ConvlearnError
from convlearn.pipeline import run_experiment
from convlearn.targets import Convolve, Pipeline


def test_shapes_is_a_bright_on_dark_image_in_unit_range():
    image = shapes(height=60, width=80, n_circles=3, n_squares=3, min_size=5, max_size=12, seed=1)
    assert image.shape == (60, 80) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    # Mostly dark background with a faint noise floor, and some bright shapes.
    assert np.median(image) < 0.1
    assert (image > 0.5).mean() > 0.05


def test_shapes_is_reproducible_from_its_seed():
    assert np.array_equal(shapes(32, 32, seed=3), shapes(32, 32, seed=3))
    assert not np.array_equal(shapes(32, 32, seed=3), shapes(32, 32, seed=4))


def test_shapes_counts_change_the_picture():
    empty = shapes(40, 40, n_circles=0, n_squares=0, seed=0)
    assert empty.max() < 0.3  # only the noise floor


def test_noise_is_white_zero_mean_and_seeded():
    image = noise(200, 240, std=0.5, seed=2)
    assert image.shape == (200, 240) and image.dtype == np.float32
    assert abs(image.mean()) < 0.01 and abs(image.std() - 0.5) < 0.01
    # White: neighbouring pixels are uncorrelated, so every spatial frequency is excited alike.
    assert abs(np.corrcoef(image[:, :-1].ravel(), image[:, 1:].ravel())[0, 1]) < 0.02
    assert np.array_equal(image, noise(200, 240, std=0.5, seed=2)) and not np.array_equal(image, noise(200, 240, std=0.5))


@pytest.mark.parametrize("group, drawn", [
    ("shapes", lambda: shapes(60, 80, seed=2)), ("noise", lambda: noise(60, 80, std=1.0, seed=2)),
])
def test_generated_data_train_whole_or_as_patches(make_cfg, group, drawn):
    size = ["data.height=60", "data.width=80", "data.seed=2"]
    whole = build(make_cfg(f"data={group}", *size), "data")
    assert np.array_equal(whole.train[0][..., 0], drawn()) and whole.patch_size is None
    patched = build(make_cfg(f"data={group}", *size, "data.patch_size=24", "data.batch_size=3"), "data")
    inputs, _ = next(iter(make_feed(patched, Pipeline([Convolve(kernels.laplacian())]), tiny_model()).train))
    assert inputs.shape == (3, 24, 24, 1)
    with pytest.raises(ConvlearnError, match="data.patch_size: must be a positive integer or null"):
        build(make_cfg(f"data={group}", "data.patch_size=0"), "data")


def test_load_npy_and_png_roundtrip(tmp_path):
    array = np.linspace(0, 1, 12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "a.npy", array)
    assert np.allclose(load_image(tmp_path / "a.npy"), array)

    pixels = (array * 255).round().astype(np.uint8)
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "a.png")
    loaded = load_image(tmp_path / "a.png")
    assert loaded.shape == (3, 4) and loaded.dtype == np.float32
    assert np.allclose(loaded, pixels / 255.0, atol=1 / 255)


def write_picture(path: Path, pixels: np.ndarray) -> None:
    """PNG through libpng, TIFF through tifffile: both keep 16-bit colour, unlike Pillow."""
    if path.suffix == ".png":
        path.write_bytes(imagecodecs.png_encode(pixels))
    else:
        tifffile.imwrite(path, pixels)


SIXTEEN_BIT = st.sampled_from([(9, 7), (9, 7, 3), (5, 6, 4)]).flatmap(lambda shape: arrays(np.uint16, shape))


@settings(max_examples=30, deadline=None)
@given(pixels=SIXTEEN_BIT, suffix=st.sampled_from([".png", ".tif"]))
def test_16_bit_pictures_keep_every_level(pixels, suffix):
    with tempfile.TemporaryDirectory() as folder_:
        path = Path(folder_) / f"a{suffix}"
        write_picture(path, pixels)
        channels = "gray" if pixels.ndim == 2 else "rgb"
        loaded = load_image(path, channels)
    colour = pixels if pixels.ndim == 2 else pixels[..., :3]  # alpha dropped
    assert loaded.dtype == np.float32 and loaded.shape == colour.shape
    # Every one of the 65536 levels comes back as itself: nothing was rounded to 8 bits.
    np.testing.assert_array_equal(np.round(loaded.astype(np.float64) * 65535).astype(np.uint16), colour)


def test_colour_becomes_gray_by_its_luma_and_gray_becomes_colour(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 65536, size=(6, 5, 3), dtype=np.uint16)
    write_picture(tmp_path / "c.png", pixels)
    expected = pixels.astype(np.float64) @ [0.299, 0.587, 0.114] / 65535
    np.testing.assert_allclose(load_image(tmp_path / "c.png", "gray"), expected, rtol=1e-6)
    write_picture(tmp_path / "g.tif", pixels[..., 0])
    gray_as_colour = np.repeat(pixels[..., :1] / 65535, 3, axis=-1)
    np.testing.assert_allclose(load_image(tmp_path / "g.tif", "rgb"), gray_as_colour, rtol=1e-6)


def test_float_tiffs_keep_their_values_and_planar_colour_is_read_as_colour(tmp_path):
    values = np.random.default_rng(1).normal(100.0, 30.0, size=(7, 9)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", values)
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif"), values)
    planes = np.random.default_rng(2).integers(0, 65536, size=(3, 7, 9), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "p.tif", planes, photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(load_image(tmp_path / "p.tif", "rgb"), np.moveaxis(planes, 0, -1) / 65535, rtol=1e-6)


def test_a_stack_a_bomb_or_a_broken_tiff_is_refused_with_one_line(tmp_path, monkeypatch):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 3, 4, 5, 6), np.uint8), photometric="minisblack")
    with pytest.raises(ConvlearnError, match=r"^data.path: .*s.tif holds a .* stack, not one gray or colour image"):
        load_image(tmp_path / "s.tif")
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((8, 9), np.uint16))
    with monkeypatch.context() as patch:
        patch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # as if it had billions of pixels
        with pytest.raises(ConvlearnError, match=r"^data.path: cannot read image .*big.tif: 8x9 values, more than tw"):
            load_image(tmp_path / "big.tif")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00 not really")
    with pytest.raises(ConvlearnError, match=r"^data.path: cannot read image .*broken.tif"):
        load_image(tmp_path / "broken.tif")


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), r"holds pickled Python objects"),
        (lambda p: np.save(p, np.zeros(5)), r"expected a 2-D \(height, width\) array .* got shape \(5,\)"),
        (lambda p: np.save(p, np.zeros((2, 3, 4))), r"expected a 2-D .* got shape \(2, 3, 4\)"),
        (lambda p: np.save(p, np.array([[0.0, np.nan]])), r"contains NaN or infinite pixels"),
        (lambda p: p.write_bytes(b"not a numpy file"), r"cannot read .* as \.npy"),
    ],
)
def test_bad_npy_files_fail_with_one_clear_line(tmp_path, write, message):
    path = tmp_path / "bad.npy"
    write(path)
    with pytest.raises(ConvlearnError, match=message) as info:
        load_image(path)
    assert "\n" not in str(info.value)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(ConvlearnError, match="no such file"):
        load_image(tmp_path / "missing.npy")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ConvlearnError, match=r"unsupported file type '\.txt'"):
        load_image(tmp_path / "x.txt")


# --- file / folder / pairs, patches, RGB, validation ---------------------------------------------

BLUR = np.array([[0.0, 0.2, 0.0], [0.1, 0.4, 0.1], [0.0, 0.1, 0.1]])  # an "unknown" camera filter


def write_images(folder, count, height=40, width=48, seed=0, noise=0.03):
    folder.mkdir(parents=True, exist_ok=True)
    images = [shapes(height, width, n_circles=3, n_squares=3, min_size=4, max_size=10, noise=noise, seed=seed + i)
              for i in range(count)]
    for index, image in enumerate(images):
        np.save(folder / f"img{index}.npy", image)
    return images


def write_pairs(root, count, **size):
    """The test's own 'camera': apply BLUR to each input (same size, reflected border)."""
    # Strong texture makes every kernel weight visible in the data, so the filter is identifiable.
    inputs = write_images(root / "in", count, noise=0.3, **size)
    (root / "out").mkdir()
    for index, image in enumerate(inputs):
        np.save(root / "out" / f"img{index}.npy", correlate(image.astype(np.float64), BLUR, mode="reflect"))
    return inputs


def tiny_model(kernel_size=3, channels=1):
    return models.linear(kernel_size=kernel_size, channels=channels)


@pytest.mark.slow
@pytest.mark.parametrize("patch_size", ["null", "24"])
def test_pairs_learn_the_filter_that_made_the_targets(make_cfg, tmp_path, patch_size):
    write_pairs(tmp_path, 5)
    cfg = make_cfg(
        "data=pairs", f"data.inputs={tmp_path}/in", f"data.targets={tmp_path}/out", f"data.patch_size={patch_size}",
        "data.batch_size=4", "model=linear", "model.kernel_size=3", "optimizer.lr=0.05", "trainer.steps=150",
        "trainer.val_every=50",
    )
    summary = run_experiment(cfg, tmp_path / "run").metrics
    with np.load(tmp_path / "run" / "kernels.npz", allow_pickle=False) as saved:
        learned = saved["conv_00"][:, :, 0, 0]
    assert np.abs(learned - BLUR).max() < 0.02, learned
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["val_loss"] == summary["val_loss"] < 1e-4
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors("val_loss")] == [50, 100, 150]


def test_folder_splits_by_seed_and_normalises(tmp_path):
    write_images(tmp_path, 5)
    np.save(tmp_path / "img0.npy", np.load(tmp_path / "img0.npy") * 3 + 2)  # out of [0, 1]
    unit = folder(str(tmp_path), val_fraction=0.4, seed=1)
    assert len(unit.train) == 3 and len(unit.val) == 2
    for image in unit.train + unit.val:
        assert image.shape == (40, 48, 1) and np.isclose(image.min(), 0) and np.isclose(image.max(), 1)
    again = folder(str(tmp_path), val_fraction=0.4, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(unit.val, again.val))
    other = folder(str(tmp_path), val_fraction=0.4, seed=2)
    assert not all(np.array_equal(a, b) for a, b in zip(unit.val, other.val))
    standard = folder(str(tmp_path), normalize="standard", val_fraction=0)
    assert len(standard.train) == 5 and not standard.val
    for image in standard.train:
        assert abs(image.mean()) < 1e-5 and np.isclose(image.std(), 1, atol=1e-4)
    raw = folder(str(tmp_path), normalize="none", val_fraction=0)
    assert np.isclose(raw.train[0].max(), np.load(tmp_path / "img0.npy").max())


def test_pairs_targets_get_their_inputs_normalisation(tmp_path):
    write_pairs(tmp_path, 2)
    images = pairs(str(tmp_path / "in"), str(tmp_path / "out"), normalize="unit", val_fraction=0)
    source = np.load(tmp_path / "in" / "img0.npy")
    gain = 1 / (source.max() - source.min())
    expected = (np.load(tmp_path / "out" / "img0.npy") - source.min()) * gain
    assert np.allclose(images.train_targets[0][..., 0], expected, atol=1e-5)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda root: (root / "out" / "img1.npy").rename(root / "out" / "other.npy"),
         r"data.targets: no image named img1 to pair with"),
        (lambda root: np.save(root / "out" / "img1.npy", np.zeros((40, 47))),
         r"data.targets: img1 is 40x47 but its input is 40x48; pairs must match in size"),
        (lambda root: ((root / "in" / "img2.npy").unlink(), (root / "in" / "img2.png").write_bytes(b"not a png")),
         r"data.inputs: cannot read image .*img2.png"),
        (lambda root: np.save(root / "in" / "img0.npy", np.full((40, 48), np.inf)), r"data.inputs: .* NaN or infinite"),
        (lambda root: np.save(root / "out" / "img0.npy", np.zeros((40, 48, 3))),
         r"data.targets: expected a 2-D \(height, width\) array"),
    ],
)
def test_bad_pairs_fail_with_one_line(tmp_path, damage, message):
    write_pairs(tmp_path, 3)
    damage(tmp_path)
    with pytest.raises(ConvlearnError, match=message) as info:
        pairs(str(tmp_path / "in"), str(tmp_path / "out"), val_fraction=0)
    assert "\n" not in str(info.value)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ConvlearnError, match=r"data.path: no images \(.npy, .png.*\) in folder"):
        folder(str(tmp_path))
    with pytest.raises(ConvlearnError, match="data.inputs: no such folder"):
        pairs(str(tmp_path / "nope"), str(tmp_path))
    write_images(tmp_path / "ok", 1)
    with pytest.raises(ConvlearnError, match=r"data.normalize: must be one of unit, standard, none, got 'max'"):
        folder(str(tmp_path / "ok"), normalize="max")
    with pytest.raises(ConvlearnError, match=r"data.kernels: must be one of shared, separate, got 'mixed'"):
        file(str(tmp_path / "ok" / "img0.npy"), kernels="mixed")
    with pytest.raises(ConvlearnError, match=r"data.patch_size: must be a positive integer or null"):
        pairs(str(tmp_path / "ok"), str(tmp_path / "ok"), patch_size=0)


def test_links_out_of_the_data_folder_are_refused(tmp_path):
    write_images(tmp_path / "data", 2)
    write_images(tmp_path / "elsewhere", 1, seed=1)
    (tmp_path / "data" / "inner.npy").symlink_to(tmp_path / "data" / "img0.npy")  # inside: fine
    assert len(folder(str(tmp_path / "data"), val_fraction=0).train) == 3
    (tmp_path / "data" / "outer.npy").symlink_to(tmp_path / "elsewhere" / "img0.npy")
    with pytest.raises(ConvlearnError) as info:
        folder(str(tmp_path / "data"))
    assert str(info.value) == (
        f"data.path: outer.npy in {tmp_path / 'data'} is a link to {tmp_path / 'elsewhere' / 'img0.npy'}, "
        "outside the folder; copy the file in instead"
    )


def test_patch_stream_cuts_the_whole_images_target_and_is_seeded(tmp_path):
    write_images(tmp_path, 2, height=60, width=70)
    images = folder(str(tmp_path), patch_size=32, batch_size=3, val_fraction=0.5)
    target = Pipeline([Convolve(kernels.sobel("x"))])
    feed = make_feed(images, target, tiny_model(), seed=4)
    assert isinstance(feed.train, Stream) and len(feed.validation) == 1
    first = list(itertools.islice(feed.train, 3))
    for inputs, targets in first:
        assert inputs.shape == (3, 32, 32, 1) and targets.shape == (3, 30, 30, 1)
        # a VALID target of the patch is the whole image's target there
        assert np.allclose(targets.numpy(), target(inputs).numpy(), atol=1e-6)
        # every patch is a window of the (only) training image
        source = images.train[0][..., 0]
        patch = inputs.numpy()[0, ..., 0]
        hits = [(r, c) for r in range(60 - 31) for c in range(70 - 31) if np.array_equal(source[r:r + 32, c:c + 32], patch)]
        assert hits
    again = list(itertools.islice(make_feed(images, target, tiny_model(), seed=4).train, 3))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(first, again))
    other = next(iter(make_feed(images, target, tiny_model(), seed=5).train))
    assert not np.array_equal(first[0][0], other[0])


def test_patch_targets_near_a_patch_edge_are_the_whole_images_not_a_padded_patchs(tmp_path):
    write_images(tmp_path, 1, height=50, width=64)
    images = folder(str(tmp_path), patch_size=24, batch_size=4, val_fraction=0)
    target = Pipeline([Convolve(kernels.gaussian(1.0, 5), padding="same", border="reflect")])
    source = images.train[0]
    whole = target(tf.constant(source[None]))[0].numpy()
    feed = make_feed(images, target, tiny_model(), seed=1)
    inputs, targets = next(iter(feed.train))
    rows, cols = feed.train.crops.target
    for patch, cut in zip(inputs.numpy(), targets.numpy()):
        (top, left), = [(r, c) for r in range(50 - 23) for c in range(64 - 23)
                        if np.array_equal(source[r:r + 24, c:c + 24], patch)]
        assert np.allclose(cut, whole[top:top + 24, left:left + 24][rows, cols], atol=1e-6)
    # the patch's own padded target differs there: the border is reflected inside the image
    assert not np.allclose(targets.numpy(), target(inputs).numpy()[:, rows, cols], atol=1e-3)


def test_small_images_train_full_frame_and_sizes_must_agree(tmp_path):
    write_images(tmp_path / "a", 3)
    images = folder(str(tmp_path / "a"), patch_size=64, val_fraction=0)
    feed = make_feed(images, Pipeline([Convolve(kernels.laplacian())]), tiny_model())
    assert isinstance(feed.train, Batch) and feed.train.inputs.shape == (3, 40, 48, 1)
    # 40x48 cannot hold a 44x44 patch: full frame too, rather than refused.
    narrow_images = folder(str(tmp_path / "a"), patch_size=44, val_fraction=0)
    narrow = make_feed(narrow_images, Pipeline([Convolve(kernels.laplacian())]), tiny_model())
    assert isinstance(narrow.train, Batch) and narrow.train.inputs.shape == (3, 40, 48, 1)
    write_images(tmp_path / "b", 1, height=30)
    np.save(tmp_path / "a" / "odd.npy", np.load(tmp_path / "b" / "img0.npy"))
    mixed = folder(str(tmp_path / "a"), patch_size=None, val_fraction=0)
    with pytest.raises(ConvlearnError, match=r"data.patch_size: the training images differ in size \(30x48, 40x48\)"):
        make_feed(mixed, Pipeline([Convolve(kernels.laplacian())]), tiny_model())
    with pytest.raises(ConvlearnError, match=r"data.patch_size: 32 is larger than training image\(s\) 30x48, .* at most 30$"):
        make_feed(folder(str(tmp_path / "a"), patch_size=32, val_fraction=0), Pipeline([Convolve(kernels.laplacian())]), tiny_model())


def write_rgb(path, height=40, width=48):
    channels = [shapes(height, width, n_circles=3, n_squares=3, min_size=4, max_size=10, seed=s) for s in range(3)]
    pixels = (np.stack(channels, axis=-1) * 255).round().astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return pixels / 255.0


def test_rgb_shared_folds_channels_into_the_batch_and_separate_keeps_them(tmp_path):
    pixels = write_rgb(tmp_path / "c.png")
    shared = file(str(tmp_path / "c.png"), channels="rgb")
    assert shared.channels == 1 and len(shared.train) == 3
    for channel in range(3):
        assert np.allclose(shared.train[channel][..., 0], pixels[..., channel], atol=1e-6)
    assert shared.counts() == "1 training and 0 validation images (3 and 0 colour planes, one kernel for all)"
    separate = file(str(tmp_path / "c.png"), channels="rgb", kernels="separate")
    assert separate.channels == 3 and separate.model_kwargs() == {"channels": 3}
    assert separate.counts() == "1 training and 0 validation images"
    assert np.allclose(separate.train[0], pixels, atol=1e-6)
    np.save(tmp_path / "gray.npy", np.zeros((4, 5)))
    with pytest.raises(ConvlearnError, match=r"expected a \(height, width, 3\) array for channels=rgb .* got shape \(4, 5\)"):
        load_image(tmp_path / "gray.npy", channels="rgb")


@pytest.mark.slow
@pytest.mark.parametrize("kernels_mode", ["shared", "separate"])
def test_rgb_trains_with_shared_or_separate_kernels(make_cfg, tmp_path, kernels_mode):
    write_rgb(tmp_path / "c.png")
    cfg = make_cfg("data=file", f"data.path={tmp_path}/c.png", "data.channels=rgb", f"data.kernels={kernels_mode}",
                   "target=laplacian", "model=linear", "model.kernel_size=3", "trainer.steps=3")
    summary = run_experiment(cfg, tmp_path / "run").metrics
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    with np.load(tmp_path / "run" / "kernels.npz", allow_pickle=False) as saved:
        assert saved["conv_00"].shape == ((3, 3, 1, 1) if kernels_mode == "shared" else (3, 3, 3, 3))
