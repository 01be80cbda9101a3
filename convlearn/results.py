"""What a run leaves behind: ``metrics.json``, the trained model and its kernels.

``metrics.json`` is the machine-readable result that sweeps, reports and tests read. Losses are
comparable across images through ``rel_mse`` (MSE over the target's variance: 1.0 is what
predicting the mean achieves) and ``psnr_db`` (peak = the target's range).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import keras
import numpy as np

from convlearn.analysis import effective_kernel
from convlearn.errors import ConvlearnError
from convlearn.models import conv_layers
from convlearn.provenance import provenance
from convlearn.training import History


def target_stats(targets: np.ndarray) -> tuple[float, float]:
    """Variance and range of the target over the compared pixels; refuses a constant target, and
    one that is not finite (an image whose values overflow float32 in the target transform)."""
    if not np.all(np.isfinite(targets)):
        raise ConvlearnError(
            "target: the target transform gives non-finite values on this image (its values overflow float32); "
            "scale the image to a smaller range (e.g. data.normalize=unit)"
        )
    variance = float(np.var(targets, dtype=np.float64))
    if not variance > 0:
        raise ConvlearnError(
            "target is constant over the compared region (variance 0), so rel_mse and PSNR are "
            "undefined; use an image with some structure"
        )
    return variance, float(np.max(targets) - np.min(targets))


def metrics(history: History, final_mse: float, targets: np.ndarray) -> dict:
    """The run summary written to ``metrics.json``."""
    variance, peak = target_stats(targets)
    losses = history.losses + [final_mse]
    summary = {
        **history.outcome(),
        "final_loss": final_mse,
        "best_loss": float(np.nanmin(losses)),
        "rel_mse": final_mse / variance,
        "psnr_db": psnr_db(peak, final_mse),
        "steps": history.steps,
        "wall_seconds": history.wall_seconds,
        "steps_per_sec": history.steps_per_sec,
        "losses": history.losses,
        "provenance": provenance(),
    }
    if history.val_losses:
        summary["val_loss"] = history.val_losses[-1][1]  # at the last step
    if history.jit_compile is not None:
        summary["jit_compile"] = history.jit_compile
    return summary


def psnr_db(peak: float, mse: float) -> float:
    """Peak signal-to-noise ratio in dB; NaN for the infinite or NaN loss of a failed run."""
    if not math.isfinite(mse):
        return math.nan
    return 10 * math.log10(peak**2 / mse) if mse > 0 else math.inf


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically, so a crash never leaves a half-written file behind.

    JSON has no NaN or infinity: a non-finite number (the loss of a diverged step, the PSNR of a
    perfect fit) is written as ``null``, so every reader can parse the file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def json_safe(value: object) -> object:
    """``value`` with every non-finite float (in nested dicts and lists too) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def kernel_arrays(model: keras.Model) -> dict[str, np.ndarray]:
    """Every conv layer's kernel (and bias, if any), keyed by layer name (``conv_00.bias``)."""
    arrays = {}
    for layer in conv_layers(model):
        arrays[layer.name] = np.asarray(layer.kernel.numpy())
        if layer.use_bias:
            arrays[f"{layer.name}.bias"] = np.asarray(layer.bias.numpy())
    return arrays


def save_kernels(path: Path, model: keras.Model) -> None:
    """:func:`kernel_arrays` in one ``.npz``."""
    np.savez(path, **kernel_arrays(model))


def save_effective_kernels(
    run_dir: Path, model: keras.Model, image: np.ndarray, target_kernel: np.ndarray | None
) -> None:
    """The model's one effective kernel (input channel 0 to output channel 0: exact for a stack of
    linear convs, linearised at the centre of ``image`` otherwise) as ``effective_kernel.npy``,
    and a linear target's kernel as ``target_kernel.npy``: plain float64 arrays in
    cross-correlation order, ready for ``scipy.ndimage.correlate``."""
    # An image too small to linearise at gives no kernel; the run's other results are kept.
    with contextlib.suppress(ConvlearnError):
        np.save(run_dir / "effective_kernel.npy", effective_kernel(model, image), allow_pickle=False)
    if target_kernel is not None:
        np.save(run_dir / "target_kernel.npy", np.asarray(target_kernel, np.float64), allow_pickle=False)


def save_run(
    run_dir: Path, model: keras.Model, summary: dict, image: np.ndarray, target_kernel: np.ndarray | None = None
) -> None:
    """Model, kernels, then ``metrics.json`` last: its presence means the run is complete.
    ``image``: a training image (``(H, W, C)``), where a non-linear model's kernel is linearised."""
    model.save(run_dir / "model.keras")
    save_kernels(run_dir / "kernels.npz", model)
    save_effective_kernels(run_dir, model, image, target_kernel)
    write_json(run_dir / "metrics.json", summary)
