"""Images to learn from.

The notebook trains on one picture of bright circles and squares. ``shapes`` draws pictures of
that kind from a seed, so the project needs no download; ``load_image`` reads a user's own image
(a 2-D ``.npy`` or a PNG/JPEG) as grayscale float32 in [0, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from convlearn.errors import ConvlearnError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff")


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


def load_image(path: str | Path) -> np.ndarray:
    """Read a 2-D ``.npy`` array or an image file as float32 in [0, 1].

    ``.npy`` files are read without pickles, so an untrusted file cannot run code; their values
    are used as they are. Image files are converted to grayscale and scaled by their bit depth.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConvlearnError(f"data.path: no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        image = _load_npy(path)
    elif suffix in IMAGE_SUFFIXES:
        image = _load_picture(path)
    else:
        raise ConvlearnError(
            f"data.path: unsupported file type '{suffix}' ({path}); use .npy or one of "
            + ", ".join(IMAGE_SUFFIXES)
        )
    if not np.all(np.isfinite(image)):
        raise ConvlearnError(f"data.path: {path} contains NaN or infinite pixels")
    return image


def _load_npy(path: Path) -> np.ndarray:
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
            raise ConvlearnError(f"data.path: cannot read {path} as .npy: {err}") from None
    if dtype.hasobject:
        raise ConvlearnError(
            f"data.path: {path} holds pickled Python objects; convlearn only reads plain "
            "numeric arrays (np.save without objects)"
        )
    if len(shape) != 2:
        raise ConvlearnError(f"data.path: expected a 2-D (height, width) array in {path}, got shape {shape}")
    if not (np.issubdtype(dtype, np.number) or dtype == bool):
        raise ConvlearnError(f"data.path: {path} has non-numeric dtype {dtype}")
    _check_size(path, shape, dtype, data_start)
    return np.load(path, allow_pickle=False).astype(np.float32)


def _check_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, data_start: int) -> None:
    """Refuse, from the header alone, an array the file does not hold or memory cannot."""
    size = int(np.prod(shape)) * dtype.itemsize
    held = path.stat().st_size - data_start
    if held < size:
        raise ConvlearnError(
            f"data.path: {path} is truncated: its header promises {size} bytes of data, the file holds {held}"
        )
    memory = _physical_memory()
    needed = size + int(np.prod(shape)) * 4  # the array and its float32 copy
    if memory and needed > memory:
        raise ConvlearnError(
            f"data.path: {path} is too large: a {'x'.join(map(str, shape))} {dtype} image needs "
            f"{needed / 2**30:.1f} GiB, this machine has {memory / 2**30:.1f} GiB"
        )


def _physical_memory() -> int | None:
    """Bytes of RAM, where the platform says (not on Windows)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def _load_picture(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError  # only needed for picture files

    try:
        with Image.open(path) as picture:
            mode = picture.mode
            bits_16 = mode.startswith("I;16") or mode == "I"
            grey = np.asarray(picture if bits_16 else picture.convert("L"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ConvlearnError(f"data.path: cannot read image {path}: {err}") from None
    scale = 65535.0 if bits_16 else 255.0
    return (grey.astype(np.float64) / scale).astype(np.float32)
