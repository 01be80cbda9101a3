"""Look inside a finished run: print its metrics and draw every layer's activation maps.

    python scripts/inspect_run.py RUN_DIR                      # the run's own training image
    python scripts/inspect_run.py RUN_DIR --image photo.png    # any image (.npy or PNG/JPEG)

Loads ``RUN_DIR/model.keras`` (the saved model, not the training code) and writes the figure to
``RUN_DIR/activations.png`` unless ``--out`` says otherwise. Without ``--image`` the training
image is rebuilt from the run's ``.hydra/config.yaml``.

A run dir may come from someone else, so nothing in it runs code: the model loads in Keras' safe
mode, and the config's data source is built only if every ``_target_`` in it is convlearn's own.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a plain script from anywhere, without installing

from convlearn.config import build  # noqa: E402
from convlearn.config_checks import check_targets  # noqa: E402
from convlearn.data import as_images, load_image  # noqa: E402
from convlearn.errors import ConvlearnError, full_error_wanted  # noqa: E402
from convlearn.report import write_activation_figure  # noqa: E402


def run_image(run_dir: Path, image: Path | None) -> np.ndarray:
    """The image to inspect: the given file, or the run's training image rebuilt from its config."""
    if image is not None:
        return load_image(image)
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        raise ConvlearnError(f"--image: not given, and {config} does not exist to rebuild the training image")
    cfg = OmegaConf.load(config)
    check_targets(cfg.get("data"), "data", modules=("convlearn",))  # whatever the environment trusts
    return as_images(build(cfg, "data")).train[0]  # any data group: its first training image


def inspect(run_dir: Path, image: Path | None, out: Path | None) -> Path:
    """Print the run's metrics and write the activation figure; returns the figure's path."""
    metrics_file, model_file = run_dir / "metrics.json", run_dir / "model.keras"
    for needed in (metrics_file, model_file):
        if not needed.is_file():
            raise ConvlearnError(f"RUN_DIR: {needed} does not exist; give the directory of a finished run")
    metrics = json.loads(metrics_file.read_text())
    for key, value in metrics.items():
        shown = f"{len(value)} values, last {value[-1]}" if key == "losses" and value else value
        print(f"{key:>16}: {shown}")
    try:
        model = keras.models.load_model(model_file, compile=False, safe_mode=True)  # never run code from a file
    except ValueError as err:  # safe mode refuses a Lambda layer (code), or the file is not a model
        raise ConvlearnError(f"RUN_DIR: cannot load {model_file} safely: {str(err).splitlines()[0]}") from None
    out = out or run_dir / "activations.png"
    layers = write_activation_figure(out, model, run_image(run_dir, image))
    print(f"{'activations':>16}: {len(layers)} layers -> {out}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a run directory (holds metrics.json and model.keras)")
    parser.add_argument("--image", type=Path, help="image to feed the model (.npy or PNG/JPEG)")
    parser.add_argument("--out", type=Path, help="where to write the figure (default RUN_DIR/activations.png)")
    args = parser.parse_args(argv)
    try:
        inspect(args.run_dir, args.image, args.out)
    except ConvlearnError as err:
        if full_error_wanted():
            raise
        print(f"convlearn: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
