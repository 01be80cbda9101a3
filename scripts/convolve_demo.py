"""The notebook's demonstration: convolving an image to extract features, as a script.

    python scripts/convolve_demo.py --image ../shared/seed/img.npy --out demo/

Vertical and horizontal edges (its 2x2 kernels), their magnitude, the 5x5 /273 blur applied
1..``--repeats`` times, a template patch of the blurred edges and its match map. Every array comes
from :mod:`convlearn.targets`, the code the trainer's targets use, so the demo and the presets
cannot drift apart. Writes PNG figures with colour bars and ``arrays.npz`` (keys
``vertical_edges``, ``horizontal_edges``, ``edges``, ``edges_blurred``, ``match``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from convlearn import kernels  # noqa: E402
from convlearn.data import load_image, shapes  # noqa: E402
from convlearn.errors import ConvlearnError  # noqa: E402
from convlearn.targets import (  # noqa: E402
    NOTEBOOK_COLS,
    NOTEBOOK_ROWS,
    NOTEBOOK_SHAPE,
    Combine,
    Convolve,
    Pipeline,
    template,
)


def demonstrate(
    image: np.ndarray,
    repeats: int = 5,
    rows: tuple[int, int] = NOTEBOOK_ROWS,
    cols: tuple[int, int] = NOTEBOOK_COLS,
    reference_shape: tuple[int, int] | None = NOTEBOOK_SHAPE,
) -> dict[str, np.ndarray]:
    """The notebook's arrays for ``image``; ``blurred_<n>`` holds the edges after n blurs and
    ``template`` the patch (slices as in :func:`convlearn.targets.template`)."""
    edge_kernels = [kernels.edge_vertical(), kernels.edge_horizontal()]
    blur = Pipeline([Convolve(kernels.gaussian_273())])
    arrays = {
        "vertical_edges": Pipeline([Convolve(edge_kernels[0])]).apply(image),
        "horizontal_edges": Pipeline([Convolve(edge_kernels[1])]).apply(image),
        "edges": Pipeline([Combine(edge_kernels, how="magnitude")]).apply(image),
    }
    blurred = arrays["edges"]
    for n in range(1, repeats + 1):
        blurred = blur.apply(blurred)
        arrays[f"blurred_{n}"] = blurred
    arrays["edges_blurred"] = blurred
    # The patch is cut from the blurred edges themselves: a prepare step that changes nothing.
    keep = Pipeline([Convolve(kernels.identity())])
    arrays["template"] = template(blurred, keep, rows, cols, reference_shape)
    arrays["match"] = Pipeline([Convolve(arrays["template"])]).apply(blurred)
    return arrays


NPZ_KEYS = ("vertical_edges", "horizontal_edges", "edges", "edges_blurred", "match")


def save(arrays: dict[str, np.ndarray], out: Path) -> list[Path]:
    """The notebook's figures as PNGs (each panel with its colour bar) and the arrays as .npz."""
    out.mkdir(parents=True, exist_ok=True)
    blurs = sorted((k for k in arrays if k.startswith("blurred_")), key=lambda k: int(k.split("_")[1]))
    figures = {
        "edges_vertical_horizontal.png": ["vertical_edges", "horizontal_edges"],
        "edges_magnitude.png": ["edges"],
        "edges_blurred.png": blurs,
        "template.png": ["template"],
        "match.png": ["match"],
    }
    written = []
    for name, keys in figures.items():
        fig, axes = plt.subplots(len(keys), 1, figsize=(5, 3.6 * len(keys)), dpi=100, squeeze=False)
        for ax, key in zip(axes[:, 0], keys):
            fig.colorbar(ax.imshow(arrays[key]), ax=ax)
            ax.set_title(key)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(out / name)
    np.savez(out / "arrays.npz", **{key: arrays[key] for key in NPZ_KEYS})
    return [*written, out / "arrays.npz"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="2-D .npy or PNG/JPEG (default: a generated 300x400 shapes image)")
    parser.add_argument("--out", default="demo", help="output folder (default: demo)")
    parser.add_argument("--repeats", type=int, default=5, help="how many times to blur the edges (default: 5)")
    parser.add_argument("--rows", type=int, nargs=2, default=NOTEBOOK_ROWS, metavar=("START", "STOP"),
                        help="template rows, in an image of --reference-shape (default: the notebook's 210 243)")
    parser.add_argument("--cols", type=int, nargs=2, default=NOTEBOOK_COLS, metavar=("START", "STOP"),
                        help="template columns (default: the notebook's 246 282)")
    parser.add_argument("--reference-shape", type=int, nargs=2, default=NOTEBOOK_SHAPE, metavar=("H", "W"),
                        help="size the slices refer to; other sizes scale them (default: 279 379, the notebook's)")
    parser.add_argument("--pixels", action="store_true", help="take --rows/--cols as pixels, without scaling")
    args = parser.parse_args(argv)
    try:
        if args.repeats < 1:
            raise ConvlearnError(f"--repeats: must be >= 1, got {args.repeats}")
        image = load_image(args.image, key="--image") if args.image else shapes()
        arrays = demonstrate(image, args.repeats, args.rows, args.cols, None if args.pixels else args.reference_shape)
        for path in save(arrays, Path(args.out)):
            print(path)
    except ConvlearnError as err:
        print(f"convolve_demo: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
