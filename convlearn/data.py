"""Images to learn from, and how they reach the trainer.

The notebook trains on one picture of bright circles and squares. ``shapes`` draws pictures of
that kind from a seed, so the project needs no download; ``noise`` draws white noise, the input
that identifies a linear filter fastest. ``file``, ``folder`` and ``pairs`` read a user's images
(``.npy`` without pickles, PNG and TIFF at their full depth, 16-bit colour too, JPEG...) into
:class:`Images`: training and validation images, grayscale or RGB, normalised, and for ``pairs``
the given target images, so an unknown filter can be learned from before/after examples.

:func:`make_feed` turns those into what the trainer consumes: one full-frame :class:`Batch` when
the images are small (the notebook's way), or a :class:`Stream` of random patches from
``tf.data`` when they are large (the model's activations then grow with the patch, not the
image), or when the config asks for patches to make each step cheaper.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from convlearn.errors import ConvlearnError
from convlearn.geometry import Crops, align
from convlearn.models import footprint
from convlearn.targets import Pipeline, footprint_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")
CHANNELS = {"gray": 1, "rgb": 3}
NORMALIZE = ("unit", "standard", "none")
KERNELS = ("shared", "separate")
# The logger's comparison picture and the final metrics use a centre crop of at most this size
# of the first training image, so that they stay cheap on large images.
PREVIEW_SIZE = 512


def compared(output: tf.Tensor, crops: Crops) -> tf.Tensor:
    """A model's ``(N, H, W, C)`` output cut to the pixels compared with the target, in float32 (the
    loss's dtype, also when the layers compute in bfloat16)."""
    rows, cols = crops.model
    return tf.cast(output[:, rows, cols, :], tf.float32)


@dataclass
class Batch:
    """Model inputs, and targets already cut to the pixels the model's output is compared on."""

    inputs: tf.Tensor
    targets: tf.Tensor
    crops: Crops

    def predict(self, model: keras.Model) -> tf.Tensor:
        """The model's output on the inputs, cut to the compared region, in float32."""
        return compared(model(self.inputs, training=False), self.crops)

    def loss(self, model: keras.Model) -> tf.Tensor:
        """MSE of the model's output against the targets, over the compared pixels."""
        return tf.reduce_mean(tf.square(self.predict(model) - self.targets))


def make_batch(
    image: np.ndarray, target: Pipeline | None, model: keras.Model, given: np.ndarray | None = None
) -> Batch:
    """The training batch for one ``(H, W)`` image or a stack ``(N, H, W, C)``: the target computed
    once and cropped to the pixels the model's output covers too. With ``target=None`` the
    targets are ``given`` images of the same shape (data=pairs), aligned pixel for pixel."""
    image = np.asarray(image, np.float32)
    inputs = tf.constant(image[None, ..., None] if image.ndim == 2 else image)
    crops = align(footprint(model), footprint_of(target), tuple(inputs.shape[1:3]))
    rows, cols = crops.target
    if target is not None:
        full = target(inputs)
    else:
        full = tf.constant(np.reshape(np.asarray(given, np.float32), inputs.shape))
    return Batch(inputs=inputs, targets=full[:, rows, cols, :], crops=crops)


def shapes(
    height: int = 300,
    width: int = 400,
    n_circles: int = 6,
    n_squares: int = 6,
    min_size: int = 8,
    max_size: int = 40,
    brightness: tuple[float, float] = (0.6, 1.0),
    noise: float = 0.03,
    seed: int = 0,
) -> np.ndarray:
    """Draw filled circles and squares on a dark, faintly noisy background.

    Sizes are radii (circles) and half side lengths (squares) in pixels, drawn uniformly from
    ``[min_size, max_size]``; shapes may overlap and be cut by the border, as in the notebook's
    image. Returns float32 ``(height, width)`` clipped to [0, 1].
    """
    if height < 1 or width < 1:
        raise ConvlearnError(f"data: height and width must be >= 1, got {height}x{width}")
    if not 1 <= min_size <= max_size:
        raise ConvlearnError(
            f"data: need 1 <= min_size <= max_size, got min_size={min_size}, max_size={max_size}"
        )
    if n_circles < 0 or n_squares < 0:
        raise ConvlearnError(
            f"data: shape counts must be >= 0, got n_circles={n_circles}, n_squares={n_squares}"
        )
    rng = np.random.default_rng(seed)
    image = np.abs(rng.normal(0.0, noise, size=(height, width)))
    rows, cols = np.mgrid[0:height, 0:width]
    for kind in ["circle"] * n_circles + ["square"] * n_squares:
        size = rng.uniform(min_size, max_size)
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        value = rng.uniform(*brightness)
        if kind == "circle":
            inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= size**2
        else:
            inside = (np.abs(rows - cy) <= size) & (np.abs(cols - cx) <= size)
        image[inside] = value + rng.normal(0.0, noise, size=int(inside.sum()))
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def noise(height: int = 300, width: int = 400, std: float = 1.0, seed: int = 0) -> np.ndarray:
    """White Gaussian noise of mean 0: an input that excites every spatial frequency equally.

    To recover a linear filter by gradient descent (system identification), the loss must change
    along every direction of the kernel: its Hessian is the input's patch second-moment matrix,
    ``std**2`` times the identity here, where a natural image's is dominated by its mean and low
    frequencies (condition number ~5000 for 7x7 windows of ``shapes``). Returns float32
    ``(height, width)``.
    """
    if height < 1 or width < 1:
        raise ConvlearnError(f"data: height and width must be >= 1, got {height}x{width}")
    return np.random.default_rng(seed).normal(0.0, std, size=(height, width)).astype(np.float32)


def generated_shapes(
    height: int = 300,
    width: int = 400,
    n_circles: int = 6,
    n_squares: int = 6,
    min_size: int = 8,
    max_size: int = 40,
    brightness: tuple[float, float] = (0.6, 1.0),
    noise: float = 0.03,
    seed: int = 0,
    patch_size: int | None = None,
    batch_size: int = 8,
) -> Images:
    """``data=shapes``: a :func:`shapes` picture to train on, whole or, with ``patch_size``, as
    random patches (cheaper steps: ``experiment=fast``)."""
    drawn = shapes(height, width, n_circles, n_squares, min_size, max_size, brightness, noise, seed)
    return _generated(drawn, patch_size, batch_size)


def generated_noise(
    height: int = 300, width: int = 400, std: float = 1.0, seed: int = 0, patch_size: int | None = None,
    batch_size: int = 8,
) -> Images:
    """``data=noise``: a :func:`noise` image to train on, whole or as random patches."""
    return _generated(noise(height, width, std, seed), patch_size, batch_size)


def _generated(image: np.ndarray, patch_size: int | None, batch_size: int) -> Images:
    _check_patches(patch_size, batch_size)
    return Images(train=[image[..., None]], patch_size=patch_size, batch_size=batch_size)


def load_image(path: str | Path, channels: str = "gray", key: str = "data.path") -> np.ndarray:
    """Read a ``.npy`` array or an image file as float32: ``(H, W)`` gray, ``(H, W, 3)`` rgb.

    ``.npy`` files are read without pickles, so an untrusted file cannot run code; their values
    are used as they are. Image files are read at their full depth (16-bit PNG and TIFF, colour
    too), converted to grayscale or RGB, and integer pixels scaled by their type's range to [0, 1]
    (floating-point TIFFs as they are). ``key`` is the config key named in error messages.
    """
    _check_choice("data.channels", channels, CHANNELS)
    path = Path(path).expanduser()
    try:
        found = path.is_file()
    except OSError as err:  # a name too long for the file system, a path through a file...
        raise ConvlearnError(f"{key}: cannot open {path}: {err.strerror or err}") from None
    if not found:
        raise ConvlearnError(f"{key}: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        image = _load_npy(path, channels, key)
    elif suffix in IMAGE_SUFFIXES:
        image = _load_picture(path, channels, key)
    else:
        raise ConvlearnError(
            f"{key}: unsupported file type '{suffix}' ({path}); use .npy or one of " + ", ".join(IMAGE_SUFFIXES)
        )
    if not np.all(np.isfinite(image)):
        raise ConvlearnError(f"{key}: {path} contains NaN or infinite pixels")
    return image


def _load_npy(path: Path, channels: str, key: str) -> np.ndarray:
    # Read the header first: it says whether the file holds objects (pickles) and its shape,
    # so a bad file is refused before any of its data is read.
    with open(path, "rb") as file:
        try:
            version = np.lib.format.read_magic(file)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(file)
            data_start = file.tell()
        except ValueError as err:
            raise ConvlearnError(f"{key}: cannot read {path} as .npy: {err}") from None
    if dtype.hasobject:
        raise ConvlearnError(
            f"{key}: {path} holds pickled Python objects; convlearn only reads plain "
            "numeric arrays (np.save without objects)"
        )
    if channels == "gray" and len(shape) != 2:
        raise ConvlearnError(f"{key}: expected a 2-D (height, width) array in {path}, got shape {shape}")
    if channels == "rgb" and (len(shape) != 3 or shape[2] != 3):
        raise ConvlearnError(
            f"{key}: expected a (height, width, 3) array for channels=rgb in {path}, got shape {shape}"
        )
    if not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise ConvlearnError(f"{key}: {path} has non-numeric dtype {dtype}")
    if np.issubdtype(dtype, np.complexfloating):
        raise ConvlearnError(f"{key}: {path} holds complex numbers ({dtype}); save a real array (its real part or abs)")
    if 0 in shape:
        raise ConvlearnError(f"{key}: {path} holds an empty {_size(shape)} array; an image needs at least one pixel")
    _check_size(path, shape, dtype, data_start, key)
    return np.load(path, allow_pickle=False).astype(np.float32)


def _check_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, data_start: int, key: str) -> None:
    """Refuse, from the header alone, an array the file does not hold or memory cannot."""
    size = int(np.prod(shape)) * dtype.itemsize
    held = path.stat().st_size - data_start
    if held < size:
        raise ConvlearnError(
            f"{key}: {path} is truncated: its header promises {size} bytes of data, the file holds {held}"
        )
    memory = _physical_memory()
    needed = size + int(np.prod(shape)) * 4  # the array and its float32 copy
    if memory and needed > memory:
        raise ConvlearnError(
            f"{key}: {path} is too large: a {_size(shape)} {dtype} image needs "
            f"{needed / 2**30:.1f} GiB, this machine has {memory / 2**30:.1f} GiB"
        )


def _physical_memory() -> int | None:
    """Bytes of RAM, where the platform says (not on Windows)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


# ITU-R BT.601 luma weights: what Pillow's and most tools' colour-to-gray conversion uses.
LUMA = np.array([0.299, 0.587, 0.114])


def _load_picture(path: Path, channels: str, key: str) -> np.ndarray:
    """An image file at its full depth, as float32 ``(H, W)`` gray or ``(H, W, 3)`` RGB: integer
    pixels scaled by their type's range to [0, 1], floating-point ones (TIFF) as they are. Alpha is
    dropped; colour becomes gray by its luma, gray becomes colour by repeating it."""
    from PIL import Image  # only needed for picture files

    try:
        pixels = _read_pixels(path)
    except (OSError, ValueError, RuntimeError, Image.DecompressionBombError) as err:  # the readers' errors
        raise ConvlearnError(f"{key}: cannot read image {path}: {err}") from None
    if pixels.ndim == 3 and pixels.shape[0] in (3, 4) and pixels.shape[-1] > 4:
        pixels = np.moveaxis(pixels, 0, -1)  # a TIFF stored colour plane by colour plane
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] > 4:
        raise ConvlearnError(
            f"{key}: {path} holds a {_size(pixels.shape)} stack, not one gray or colour image; save one image per file"
        )
    pixels = pixels[..., : 1 if pixels.shape[-1] <= 2 else 3]  # gray or colour, without alpha
    scale = float(np.iinfo(pixels.dtype).max) if np.issubdtype(pixels.dtype, np.integer) else 1.0
    image = pixels.astype(np.float64) / scale
    if channels == "gray":
        image = image[..., 0] if image.shape[-1] == 1 else image @ LUMA
    elif image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return image.astype(np.float32)


def _read_pixels(path: Path) -> np.ndarray:
    """The pixels as stored: PNG through libpng (imagecodecs) and TIFF through tifffile, so that
    16-bit colour keeps its 16 bits (Pillow reads 16-bit colour PNGs as 8-bit); JPEG, BMP and GIF,
    8-bit formats, through Pillow. A picture larger than Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, twice over) is refused from its header, before it is decoded."""
    from PIL import Image

    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            if not tiff.series:
                raise ValueError("it holds no image")
            shape = tiff.series[0].shape  # all pages: a stack is refused later, not cut to its first image
            limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
            if limit and int(np.prod(shape)) > limit:
                raise Image.DecompressionBombError(
                    f"{_size(shape)} values, more than twice PIL.Image.MAX_IMAGE_PIXELS: possibly a decompression bomb"
                )
            return tiff.asarray()
    with Image.open(path) as picture:  # reads the header only, and refuses a decompression bomb
        if suffix != ".png":
            return np.asarray(picture if picture.mode == "L" else picture.convert("RGB"))
    import imagecodecs

    return imagecodecs.png_decode(path.read_bytes())


@dataclass(frozen=True)
class Images:
    """What the data group gives the trainer.

    ``train`` and ``val``: float32 ``(H, W, C)`` images. ``train_targets``/``val_targets``: the
    given target images of ``pairs`` (None when a target transform computes them).
    ``patch_size``: train on random ``patch_size`` crops, ``batch_size`` at a time, when an image is
    larger than that (None: always the full frame). ``channels``: the model's channels (3 only
    for RGB with separate kernels; shared kernels fold the colour channels into the batch).
    """

    train: list[np.ndarray]
    val: list[np.ndarray] = field(default_factory=list)
    train_targets: list[np.ndarray] | None = None
    val_targets: list[np.ndarray] | None = None
    patch_size: int | None = None
    batch_size: int = 8
    channels: int = 1
    planes: int = 1  # entries of ``train``/``val`` per image file: 3 when shared kernels fold RGB

    @property
    def given_targets(self) -> bool:
        return self.train_targets is not None

    def counts(self) -> str:
        """The numbers of training and validation images, for the log: files, not folded planes."""
        counts = f"{len(self.train) // self.planes} training and {len(self.val) // self.planes} validation images"
        if self.planes > 1:
            counts += f" ({len(self.train)} and {len(self.val)} colour planes, one kernel for all)"
        return counts

    def model_kwargs(self) -> dict:
        """Extra arguments for the model group: ``channels`` only where it is not the default 1."""
        return {"channels": self.channels} if self.channels != 1 else {}


def as_images(data: np.ndarray | Images) -> Images:
    """The data group's result as :class:`Images`; a bare 2-D array (``shapes``) is one image."""
    if isinstance(data, Images):
        return data
    array = np.asarray(data, np.float32)
    if array.ndim != 2:
        raise ConvlearnError(f"data: expected a 2-D (height, width) image, got shape {array.shape}")
    return Images(train=[array[..., None]])


def file(
    path: str,
    channels: str = "gray",
    normalize: str = "none",
    kernels: str = "shared",
    patch_size: int | None = None,
    batch_size: int = 8,
) -> Images:
    """One image from disk, trained on whole or, above ``patch_size``, as random patches."""
    _check_options(channels, normalize, kernels, patch_size, batch_size)
    image = load_image(path, channels)
    return _assemble([image], [], None, None, channels, normalize, kernels, patch_size, batch_size)


def folder(
    path: str,
    channels: str = "gray",
    normalize: str = "unit",
    kernels: str = "shared",
    patch_size: int | None = 64,
    batch_size: int = 8,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Images:
    """Every image in a folder (sorted by name), split into training and validation images."""
    _check_options(channels, normalize, kernels, patch_size, batch_size)
    files = _list_images(path, "data.path")
    train, val = _split(list(files), val_fraction, seed)
    train_images = [load_image(files[name], channels) for name in train]
    val_images = [load_image(files[name], channels) for name in val]
    return _assemble(train_images, val_images, None, None, channels, normalize, kernels, patch_size, batch_size)


def pairs(
    inputs: str,
    targets: str,
    channels: str = "gray",
    normalize: str = "none",
    kernels: str = "shared",
    patch_size: int | None = 64,
    batch_size: int = 8,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> Images:
    """Input images and their target images from two folders, matched by file name (without the
    suffix, so ``a.png`` pairs with ``a.npy``): learn an unknown filter from examples."""
    _check_options(channels, normalize, kernels, patch_size, batch_size)
    sources, results = _list_images(inputs, "data.inputs"), _list_images(targets, "data.targets")
    for key, have, lack in (("data.targets", sources, results), ("data.inputs", results, sources)):
        missing = sorted(set(have) - set(lack))
        if missing:
            raise ConvlearnError(f"{key}: no image named {', '.join(missing[:5])} to pair with (pairs match by name)")
    train, val = _split(sorted(sources), val_fraction, seed)

    def load(names: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        loaded = [(load_image(sources[n], channels, "data.inputs"), load_image(results[n], channels, "data.targets"))
                  for n in names]
        for name, (image, target) in zip(names, loaded):
            if image.shape != target.shape:
                raise ConvlearnError(
                    f"data.targets: {name} is {_size(target.shape)} but its input is {_size(image.shape)}; "
                    "pairs must match in size"
                )
        return [image for image, _ in loaded], [target for _, target in loaded]

    (train_in, train_out), (val_in, val_out) = load(train), load(val)
    return _assemble(train_in, val_in, train_out, val_out, channels, normalize, kernels, patch_size, batch_size)


def _assemble(
    train: list[np.ndarray],
    val: list[np.ndarray],
    train_targets: list[np.ndarray] | None,
    val_targets: list[np.ndarray] | None,
    channels: str,
    normalize: str,
    kernels: str,
    patch_size: int | None,
    batch_size: int,
) -> Images:
    """Normalise, give every image a channel axis, and fold colour into the batch for shared kernels."""
    fold = channels == "rgb" and kernels == "shared"

    def prepare(images: list[np.ndarray], targets: list[np.ndarray] | None) -> tuple[list, list | None]:
        outs, target_outs = [], []
        for index, image in enumerate(images):
            # A pair's target gets its input's normalisation, so the filter between them survives.
            gain, offset = _normalisation(image, normalize)
            parts = [image * gain + offset] + ([targets[index] * gain + offset] if targets is not None else [])
            parts = [part.reshape(part.shape[:2] + (-1,)).astype(np.float32) for part in parts]
            if fold:
                parts = [np.moveaxis(part, -1, 0)[..., None] for part in parts]
            else:
                parts = [part[None] for part in parts]
            outs.extend(parts[0])
            if targets is not None:
                target_outs.extend(parts[1])
        return outs, (target_outs if targets is not None else None)

    train, train_targets = prepare(train, train_targets)
    val, val_targets = prepare(val, val_targets)
    return Images(
        train=train, val=val, train_targets=train_targets, val_targets=val_targets,
        patch_size=patch_size, batch_size=batch_size, channels=1 if fold else CHANNELS[channels],
        planes=CHANNELS[channels] if fold else 1,
    )


def _check_options(channels: str, normalize: str, kernels: str, patch_size: int | None, batch_size: int) -> None:
    # Checked before any file is read, so a typo fails at once.
    _check_choice("data.channels", channels, CHANNELS)
    _check_choice("data.normalize", normalize, NORMALIZE)
    _check_choice("data.kernels", kernels, KERNELS)
    _check_patches(patch_size, batch_size)


def _check_patches(patch_size: int | None, batch_size: int) -> None:
    if patch_size is not None and patch_size < 1:
        raise ConvlearnError(f"data.patch_size: must be a positive integer or null (full frame), got {patch_size}")
    if batch_size < 1:
        raise ConvlearnError(f"data.batch_size: must be >= 1, got {batch_size}")


def _normalisation(image: np.ndarray, how: str) -> tuple[float, float]:
    """Gain and offset that map ``image`` to [0, 1] (unit) or to mean 0 and std 1 (standard)."""
    if how == "unit":
        low, high = float(image.min()), float(image.max())
        gain = 1.0 / (high - low) if high > low else 1.0
        return gain, -low * gain
    if how == "standard":
        std = float(image.std())
        gain = 1.0 / std if std > 0 else 1.0
        return gain, -float(image.mean()) * gain
    return 1.0, 0.0


def _list_images(path: str, key: str) -> dict[str, Path]:
    """The readable files of a folder by name without suffix, sorted."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ConvlearnError(f"{key}: no such folder: {directory}")
    suffixes = (".npy", *IMAGE_SUFFIXES)
    files = sorted(f for f in directory.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
    if not files:
        raise ConvlearnError(f"{key}: no images ({', '.join(suffixes)}) in folder {directory}")
    inside = directory.resolve()
    by_stem: dict[str, Path] = {}
    for f in files:
        if not f.resolve().is_relative_to(inside):
            raise ConvlearnError(
                f"{key}: {f.name} in {directory} is a link to {f.resolve()}, outside the folder; "
                "copy the file in instead"
            )
        if f.stem in by_stem:
            raise ConvlearnError(f"{key}: two images named {f.stem} in {directory} ({by_stem[f.stem].name}, {f.name})")
        by_stem[f.stem] = f
    return by_stem


def _split(names: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded split: ``round(n * val_fraction)`` names for validation, at least one for training."""
    if not 0 <= val_fraction < 1:
        raise ConvlearnError(f"data.val_fraction: must be in [0, 1), got {val_fraction}")
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = min(int(round(len(names) * val_fraction)), len(names) - 1)
    val = sorted(names[i] for i in order[:n_val])
    return [n for n in names if n not in val], val


def _check_choice(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConvlearnError(f"{key}: must be one of {', '.join(allowed)}, got '{value}'")


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape)


@dataclass
class Stream:
    """Random patches for training: an endless ``tf.data`` pipeline of ``(inputs, targets)``
    batches, the targets already cut to the compared region like a :class:`Batch`'s."""

    crops: Crops
    dataset: tf.data.Dataset

    def __iter__(self) -> Iterator[tuple[tf.Tensor, tf.Tensor]]:
        return iter(self.dataset)


@dataclass
class Feed:
    """What the trainer gets: the training batch or stream, validation batches (one per image,
    full frame) and a preview batch for pictures and the final metrics."""

    train: Batch | Stream
    validation: list[Batch]
    preview: Batch


def make_feed(images: Images, target: Pipeline | None, model: keras.Model, seed: int = 0) -> Feed:
    """Full frame when every training image fits in ``patch_size`` (or patches are off), else
    random patches. ``target`` is None for ``pairs``, whose targets are given."""
    given = images.given_targets
    if not given and target is None:
        raise ConvlearnError("target: these data need a target transform (only data=pairs brings its own)")
    target = None if given else target

    def batch(index: int, train: bool, crop: int | None = None) -> Batch:
        inputs = (images.train if train else images.val)[index]
        targets = (images.train_targets if train else images.val_targets) if given else None
        region = _centre(inputs.shape, crop)
        return make_batch(inputs[None, region[0], region[1]], target, model,
                          given=None if targets is None else targets[index][None, region[0], region[1]])

    validation = [batch(i, train=False) for i in range(len(images.val))]
    patch = images.patch_size
    # An image that a patch covers whole, or that cannot hold one (a side shorter than the patch), trains full frame.
    if patch is None or all(max(image.shape[:2]) <= patch or min(image.shape[:2]) < patch for image in images.train):
        shapes = {image.shape for image in images.train}
        if len(shapes) > 1:
            sizes = ", ".join(sorted(_size(s[:2]) for s in shapes))
            raise ConvlearnError(
                f"data.patch_size: the training images differ in size ({sizes}); "
                "set data.patch_size to train on patches"
            )
        stacked = np.stack(images.train)
        full = make_batch(stacked, target, model, given=np.stack(images.train_targets) if given else None)
        preview = full if len(images.train) == 1 else batch(0, train=True)
        return Feed(train=full, validation=validation, preview=preview)
    small = [image.shape[:2] for image in images.train if min(image.shape[:2]) < patch]
    if small:
        raise ConvlearnError(
            f"data.patch_size: {patch} is larger than training image(s) {', '.join(_size(s) for s in small[:5])}, "
            f"while others need patches; set data.patch_size to at most {min(min(s) for s in small)}"
        )
    stream = _patch_stream(images, target, model, seed)
    return Feed(train=stream, validation=validation, preview=batch(0, train=True, crop=max(PREVIEW_SIZE, patch)))


class _Stacked:
    """Images of any sizes in one flat tensor, so that a graph can cut a window out of the one a
    tensor index picks."""

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self.flat = tf.constant(np.concatenate([image.ravel() for image in images]).astype(np.float32))
        self.starts = tf.constant(np.cumsum([0] + [image.size for image in images[:-1]]), tf.int32)
        self.shapes = tf.constant([image.shape for image in images], tf.int32)
        self.channels = images[0].shape[-1]

    def cut(self, index: tf.Tensor, top: tf.Tensor, left: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
        shape = self.shapes[index]
        image = tf.reshape(tf.slice(self.flat, [self.starts[index]], [tf.reduce_prod(shape)]), shape)
        return tf.slice(image, tf.stack([top, left, 0]), [size[0], size[1], self.channels])


def _centre(shape: tuple[int, ...], size: int | None) -> tuple[slice, slice]:
    if size is None:
        return slice(None), slice(None)
    return tuple(slice(max(0, (n - size) // 2), max(0, (n - size) // 2) + size) for n in shape[:2])


def _patch_stream(images: Images, target: Pipeline | None, model: keras.Model, seed: int) -> Stream:
    """Batches of random crops, each step's drawn from ``(seed, step)`` alone: same seed, same
    patches, and a resumed run's stream replays the draws up to where it stopped.

    The targets are computed once, on every whole training image (``pairs`` bring theirs), and
    cut out with the patches: the transform run on each batch of patches cost more than the
    training step on it (edge_blur on two 128x128 patches: 20 ms, on a 2-core CPU), and the
    whole image's target is the one full-frame training compares with, also near a patch's edge.
    The pipeline is TensorFlow ops only: a ``from_generator`` dataset makes TensorFlow lower
    glibc's ``M_TRIM_THRESHOLD`` for the whole process, and every step's larger tensors then
    went back to the system and were faulted in again (the notebook's model on two 128x128
    patches: 108 ms a step instead of 55)."""
    patch, count = images.patch_size, images.batch_size
    crops = align(footprint(model), footprint_of(target), (patch, patch))
    # Where the compared region starts and ends in a patch's own target: the same offsets from the
    # patch's corner in the whole image's target (a target's pixel i lies at input i + shift).
    shrink = footprint_of(target).shrink
    (top0, bottom0, _), (left0, right0, _) = (s.indices(patch - k) for s, k in zip(crops.target, shrink))
    wholes = images.train_targets if target is None else [
        target(tf.constant(image[None]))[0].numpy() for image in images.train
    ]
    inputs, targets = _Stacked(images.train), _Stacked(wholes)
    room = tf.constant([[h - patch + 1, w - patch + 1] for h, w, _ in (i.shape for i in images.train)], tf.int32)

    def draw(step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        bits = tf.random.stateless_uniform([count, 3], tf.stack([tf.constant(seed, tf.int64), step]),
                                           minval=None, maxval=None, dtype=tf.int32)
        index = tf.math.floormod(bits[:, 0], len(images.train))
        top, left = tf.unstack(tf.math.floormod(bits[:, 1:], tf.gather(room, index)), axis=1)
        return (
            tf.stack([inputs.cut(index[j], top[j], left[j], (patch, patch)) for j in range(count)]),
            tf.stack([targets.cut(index[j], top[j] + top0, left[j] + left0, (bottom0 - top0, right0 - left0))
                      for j in range(count)]),
        )

    dataset = tf.data.Dataset.counter().map(draw)
    return Stream(crops=crops, dataset=dataset.prefetch(2))
