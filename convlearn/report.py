"""Figures outside TensorBoard: a run's ``report.png`` and the per-layer activation figure.

``report.png`` is the one picture a person pastes into a report: the loss curve, input / target /
prediction / error with colour bars, the first layer's kernels and the effective kernels.
Figures are drawn on a ``matplotlib.figure.Figure`` (no pyplot), so no display or global
backend state is involved.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from convlearn import pictures
from convlearn.data import Batch
from convlearn.logs import compared_images, effective_kernels, layer_outputs
from convlearn.models import conv_layers


def write_report_png(
    path: Path, losses: Sequence[float], batch: Batch, model: keras.Model, target_kernel: np.ndarray | None
) -> None:
    """Loss curve, the four-image comparison, first-layer and effective kernels in one PNG."""
    inputs, target, prediction = compared_images(batch, batch.predict(model))
    error = pictures.absolute_error(target, prediction)
    low, high = pictures.finite_range(np.stack([target, prediction]))

    figure = Figure(figsize=(16, 8), layout="constrained")
    grid = figure.add_gridspec(2, 4)
    curve = figure.add_subplot(grid[0, :2])
    curve.semilogy(np.arange(len(losses)), losses)
    curve.set(title="training loss (MSE)", xlabel="step", ylabel="loss")
    curve.grid(True, which="both", alpha=0.3)

    first = conv_layers(model)[0]
    _show_rgb(figure.add_subplot(grid[0, 2]), pictures.kernel_grid(first.kernel.numpy()), f"{first.name} kernels")
    effective = effective_kernels(model, target_kernel, batch)
    title = "effective kernel: model | target" if len(effective) == 2 else "effective kernel (model)"
    if effective:
        _show_rgb(figure.add_subplot(grid[0, 3]), pictures.kernel_row(effective), title)

    panels = [
        ("input", inputs, *pictures.finite_range(inputs), "gray"),
        ("target", target, low, high, pictures.IMAGE_CMAP),
        ("prediction", prediction, low, high, pictures.IMAGE_CMAP),
        ("|prediction - target|", error, 0.0, max(pictures.finite_range(error)[1], 1e-12), "magma"),
    ]
    for column, (name, image, vmin, vmax, cmap) in enumerate(panels):
        axes = figure.add_subplot(grid[1, column])
        shown = axes.imshow(image, vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest")
        axes.set_title(name)
        axes.set_axis_off()
        figure.colorbar(shown, ax=axes, shrink=0.8)
    figure.savefig(path, dpi=80)


def write_activation_figure(path: Path, model: keras.Model, image: np.ndarray) -> list[str]:
    """Every conv layer's activation maps for an ``(H, W)`` or ``(H, W, C)`` ``image``, one panel
    per layer; returns the layer names drawn."""
    array = np.asarray(image, np.float32)
    outputs = layer_outputs(model, array[None, ..., None] if array.ndim == 2 else array[None])
    cols = min(4, len(outputs))
    rows = math.ceil(len(outputs) / cols)
    figure = Figure(figsize=(4 * cols, 3.5 * rows), layout="constrained")
    for index, (name, maps) in enumerate(outputs.items()):
        axes = figure.add_subplot(rows, cols, index + 1)
        low, high = pictures.finite_range(maps)
        title = f"{name}: {maps.shape[2]} ch, {maps.shape[0]}x{maps.shape[1]}, [{low:.3g}, {high:.3g}]"
        _show_rgb(axes, pictures.channel_grid(maps), title)
    figure.savefig(path, dpi=80)
    return list(outputs)


def _show_rgb(axes: Axes, rgb: np.ndarray, title: str) -> None:
    axes.imshow(rgb, interpolation="nearest")
    axes.set_title(title, fontsize=9)
    axes.set_axis_off()
