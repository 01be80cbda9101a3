"""Apply a finished run's trained model to new images, of any size, and write what it outputs.

    python scripts/apply.py RUN_DIR photo.png more/*.tif            # -> RUN_DIR/applied/
    python scripts/apply.py RUN_DIR scan.tif --out filtered/

A learned filter is only useful once it can be used: this loads ``RUN_DIR/model.keras`` in Keras'
safe mode (no code from the file runs) and prepares each image exactly as the run prepared its
training images, from its ``.hydra/config.yaml``: the same channels (gray or RGB, colour folded
into the batch for shared kernels) and the same normalisation. For each image it writes
``<name>.npy``, the model's output as float32 values (in the units the model was trained in: the
normalised image's), and ``<name>.png``, a 16-bit picture of it scaled from its minimum to its
maximum, for looking at. The output is smaller than the input by the model's receptive field
less one, as in training (VALID convolutions).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere, without installing

import convlearn  # noqa: E402, F401  (first: it quiets TensorFlow's start-up lines before Keras loads it)
import imagecodecs  # noqa: E402
import keras  # noqa: E402

from convlearn.data import file  # noqa: E402
from convlearn.errors import ConvlearnError, script_exit_code  # noqa: E402
from convlearn.models import footprint  # noqa: E402
from convlearn.results import load_model  # noqa: E402  (importing convlearn.models registers its layers)


def load_run(run_dir: Path) -> tuple[keras.Model, DictConfig]:
    """The run's trained model (safe mode) and its composed config."""
    model_file, config_file = run_dir / "model.keras", run_dir / ".hydra" / "config.yaml"
    for needed in (model_file, config_file):
        if not needed.is_file():
            raise ConvlearnError(f"RUN_DIR: {needed} does not exist; give the directory of a finished run")
    return load_model(model_file), OmegaConf.load(config_file)


def apply(model: keras.Model, cfg: DictConfig, image: Path) -> np.ndarray:
    """The model's output on ``image`` prepared as the run's data were: ``(H', W')`` for a gray
    model, ``(H', W', 3)`` for colour."""
    data = cfg.data
    channels, kernels = data.get("channels", "gray"), data.get("kernels", "shared")
    # The data group's own loader, as for a training image: the same channels, folding and normalisation.
    prepared = file(str(image), channels=channels, normalize=data.get("normalize", "none"), kernels=kernels,
                    patch_size=None)
    batch = np.stack(prepared.train)  # (3, H, W, 1) for colour with shared kernels, else (1, H, W, C)
    needed = footprint(model).extent
    if batch.shape[1] < needed[0] or batch.shape[2] < needed[1]:
        raise ConvlearnError(
            f"IMAGE: {image} is {batch.shape[1]}x{batch.shape[2]}, smaller than the model's receptive field "
            f"{needed[0]}x{needed[1]}"
        )
    output = np.asarray(keras.ops.convert_to_numpy(model(batch, training=False)), np.float32)
    if channels == "rgb" and kernels == "shared":
        return np.moveaxis(output[..., 0], 0, -1)
    return output[0, ..., 0] if output.shape[-1] == 1 else output[0]


def to_png(values: np.ndarray) -> bytes:
    """A 16-bit PNG of ``values`` scaled from their minimum (black) to their maximum (white)."""
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    return imagecodecs.png_encode(np.ascontiguousarray(np.round(scaled * 65535), dtype=np.uint16))


def apply_all(run_dir: Path, images: Sequence[Path], out: Path | None = None) -> list[Path]:
    """Apply the run's model to every image; returns the ``.npy`` files written."""
    stems = [image.stem for image in images]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise ConvlearnError(f"IMAGE: several images named {', '.join(repeated)}; their outputs would overwrite")
    model, cfg = load_run(run_dir)
    out = out or run_dir / "applied"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for image in images:
        values = apply(model, cfg, image)
        np.save(out / f"{image.stem}.npy", values, allow_pickle=False)
        (out / f"{image.stem}.png").write_bytes(to_png(values))
        print(f"{image} -> {out / image.stem}.npy, .png ({'x'.join(map(str, values.shape))})")
        written.append(out / f"{image.stem}.npy")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a finished run's directory (holds model.keras and .hydra/)")
    parser.add_argument("images", type=Path, nargs="+", help="images to apply the model to (.npy, PNG, TIFF, JPEG...)")
    parser.add_argument("--out", type=Path, help="folder for the outputs (default RUN_DIR/applied)")
    args = parser.parse_args(argv)
    return script_exit_code(lambda: apply_all(args.run_dir, args.images, args.out))


if __name__ == "__main__":
    sys.exit(main())
