"""Real photographs without a download: the sample photos that ship inside scikit-image's wheel.

Whether a conv net learns an operator is only worth asking on the images people apply it to, and
the generated circles and squares are not those. scikit-image carries a dozen photographs in its
package (the astronaut, the cameraman, a cat, coffee, coins, textures...), so with the optional
``photos`` extra installed, ``data=samples`` trains on real photos from a fresh clone, offline. The
split is by name: the model is trained on some photos and its ``val_loss`` is measured on others
it never saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from convlearn.data import Images, _assemble, _check_options
from convlearn.errors import ConvlearnError

# The photos of scikit-image's wheel, by their skimage.data function: files inside the package,
# so loading them needs no network (the other skimage.data images are downloaded on first use).
PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
    "hubble_deep_field", "immunohistochemistry", "moon", "page", "retina", "rocket", "text",
)
TRAIN = ("astronaut", "camera", "chelsea", "coins", "moon", "brick", "grass", "gravel")
VAL = ("coffee", "rocket")
INSTALL = "pip install 'convlearn[photos]'"


def samples(
    train: Sequence[str] = TRAIN,
    val: Sequence[str] = VAL,
    channels: str = "gray",
    scale: float = 0.5,
    kernels: str = "shared",
    patch_size: int | None = 64,
    batch_size: int = 8,
) -> Images:
    """The ``train`` photos to learn from and the ``val`` photos to measure on, as float32 in
    [0, 1], each resized by ``scale`` (with anti-aliasing; 0.5 halves a 512x512 photo) so that
    training stays fast on a few cores. Gray photos are repeated to RGB for ``channels: rgb``,
    colour photos converted to luminance for ``gray``."""
    _check_options(channels, "none", kernels, patch_size, batch_size)
    train, val = list(train), list(val)
    for key, names in (("data.train", train), ("data.val", val)):
        unknown = [name for name in names if name not in PHOTOS]
        if unknown:
            raise ConvlearnError(f"{key}: no sample photo named {', '.join(unknown)}; choose from {', '.join(PHOTOS)}")
    if not train:
        raise ConvlearnError("data.train: name at least one sample photo to train on")
    both = sorted(set(train) & set(val))
    if both:
        raise ConvlearnError(f"data.val: {', '.join(both)} also in data.train; a held-out photo must not be trained on")
    if not 0 < scale <= 1:
        raise ConvlearnError(f"data.scale: must be in (0, 1], got {scale}")
    skimage = _scikit_image()

    def load(name: str) -> np.ndarray:
        photo = skimage.util.img_as_float(getattr(skimage.data, name)())
        if photo.ndim == 3 and channels == "gray":
            photo = skimage.color.rgb2gray(photo[..., :3])
        elif photo.ndim == 2 and channels == "rgb":
            photo = np.repeat(photo[..., None], 3, axis=-1)
        if scale != 1:
            axis = -1 if photo.ndim == 3 else None
            photo = skimage.transform.rescale(photo, scale, anti_aliasing=True, channel_axis=axis)
        return np.clip(photo, 0.0, 1.0).astype(np.float32)

    return _assemble(
        [load(n) for n in train], [load(n) for n in val], None, None, channels, "none", kernels, patch_size, batch_size
    )


def _scikit_image():  # noqa: ANN202 (the module, imported here so that it stays an optional extra)
    try:
        import skimage.color
        import skimage.data
        import skimage.transform
        import skimage.util
    except ImportError:
        raise ConvlearnError(f"data=samples: the sample photos come with scikit-image; install it: {INSTALL}") from None
    return skimage
