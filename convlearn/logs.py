"""TensorBoard dashboards for a run: what the network learned and where it still fails.

The trainer reports every step; this logger decides what to write and when, so that logging stays
cheap (a small fraction of a step on average):

* every ``scalar_every`` steps: the trainer's scalars (loss, grad_norm, learning_rate) plus
  ``rel_mse``, ``psnr_db`` (both derived from the loss) and ``steps_per_sec``;
* at step 0, every ``image_every`` steps and at the end: input | target | prediction | error,
  every conv layer's kernels, the model's effective kernel next to the target's (for a non-linear
  target: linearised at a flat pixel, an edge and a corner), each layer's
  activation maps, and histograms of weights and gradients (each part switchable);
* once: the resolved config as text, and the run's hyperparameters and final metrics for the
  HPARAMS tab.

Writers buffer, so the logger is a context manager that flushes and closes on every exit path.

Reporting never ends training: each dashboard part runs under a :class:`PartGuard`, so a part that
fails (a picture of a diverged layer, a full disk) is skipped with one warning naming the part and
the step, and training, checkpoints and ``metrics.json`` go on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from omegaconf import DictConfig, OmegaConf
from tensorboard.plugins.hparams import api as hp
from tensorboard.plugins.histogram import metadata as histogram_metadata
from tensorboard.plugins.image import metadata as image_metadata

from convlearn import pictures
from convlearn.analysis import effective_kernel
from convlearn.data import Batch, compared
from convlearn.errors import ConvlearnError
from convlearn.geometry import Footprint
from convlearn.models import conv_layers, footprint
from convlearn.results import psnr_db

log = logging.getLogger("convlearn")

HParamValue = bool | int | float | str
Snapshot = Callable[[tf.Tensor, tf.Tensor], tuple[dict[str, tf.Tensor], tf.Tensor, list[tf.Tensor | None]]]

# Activation grids are subsampled to this many pixels a side: 13 full-size layers would cost more
# to encode than the training steps between two pictures.
ACTIVATION_SIDE = 512

# TensorBoard's own default number of buckets per histogram.
HISTOGRAM_BUCKETS = 30

# Final metrics as scalar tags; the HPARAMS tab reads a run's metric values from these.
FINAL_METRICS = {"final_loss": "final/loss", "rel_mse": "final/rel_mse", "psnr_db": "final/psnr_db"}


class PartGuard:
    """Runs dashboard parts so that a failing one is skipped instead of ending the run.

    The first failure of each part is logged as a warning naming the part, the step and the
    error; later failures of that part are skipped silently (the part is tried again each time,
    so a passing problem such as a full disk costs only the pictures it hit)."""

    def __init__(self) -> None:
        self.failed: dict[str, int] = {}  # part -> step of its first failure

    @contextlib.contextmanager
    def part(self, name: str, step: int) -> Iterator[None]:
        try:
            yield
        except Exception as err:  # noqa: BLE001 - any reporting bug must leave training running
            if name not in self.failed:
                self.failed[name] = step
                log.warning(
                    "dashboard part '%s' failed at step %d and is skipped (%s: %s); training goes on",
                    name, step, type(err).__name__, str(err).splitlines()[0] if str(err) else "",
                )


class TensorBoardLogger:
    """Writes a run's TensorBoard events under ``log_dir``.

    ``hparams`` (see :func:`hparams_from_config`) registers the run in the HPARAMS tab;
    ``target_kernel`` is the target's single equivalent kernel, drawn next to the model's
    effective kernel when the target is linear.
    """

    def __init__(
        self,
        log_dir: str | Path,
        batch: Batch,
        scalar_every: int = 10,
        image_every: int = 100,
        kernels: bool = True,
        activations: bool = True,
        histograms: bool = True,
        config_text: str = "",
        hparams: Mapping[str, HParamValue] | None = None,
        target_kernel: np.ndarray | None = None,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.batch = batch
        self.scalar_every = max(1, scalar_every)
        self.image_every = image_every
        self.kernels = kernels
        self.activations = activations
        self.histograms = histograms
        self.config_text = config_text
        self.hparams = dict(hparams or {})
        self.target_kernel = target_kernel
        targets = batch.targets.numpy()
        self._target_variance = float(np.var(targets, dtype=np.float64))
        self._target_peak = float(np.max(targets) - np.min(targets))
        self._last_tick: tuple[int, float] | None = None
        self._snapshot_fn: tuple[keras.Model, Snapshot] | None = None
        self.guard = PartGuard()
        self.writer = tf.summary.create_file_writer(str(self.log_dir))

    def __enter__(self) -> TensorBoardLogger:
        with self.writer.as_default(step=0):
            if self.config_text:
                with self.guard.part("config", 0):
                    tf.summary.text("config", f"```\n{self.config_text}\n```", step=0)
            if self.hparams:
                # The experiment config names the metrics, so the HPARAMS tab shows exactly these
                # columns rather than every scalar of the run.
                with self.guard.part("hparams", 0):
                    hp.hparams_config(
                        hparams=[hp.HParam(name) for name in self.hparams],
                        metrics=[hp.Metric(tag, display_name=key) for key, tag in FINAL_METRICS.items()],
                    )
                    hp.hparams(self.hparams)
        return self

    def __exit__(self, *exc_info: object) -> None:
        with self.guard.part("writing the event file", -1):
            self.writer.flush()
        with self.guard.part("closing the event file", -1):
            self.writer.close()

    def on_step(self, step: int, scalars: dict[str, float], model: keras.Model) -> None:
        """Called by the trainer after every step with that step's loss, grad_norm and lr."""
        if step % self.scalar_every == 0:
            with self.guard.part("scalars", step):
                self.scalars(step, {**scalars, **self._derived(step, scalars.get("loss"))})
        if step == 0 or (self.image_every > 0 and step % self.image_every == 0):
            self.pictures(step, model)

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Write scalars as they are (also for other callers, e.g. ``val_loss``)."""
        with self.writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.scalar(name, value)

    def pictures(self, step: int, model: keras.Model) -> None:
        """Everything that shows the model's state: comparison panel, kernels, effective kernel,
        activation maps and histograms, each as configured."""
        part = self.guard.part
        with self.writer.as_default(step=step):
            snapshot = None
            with part("snapshot (the model's pass the pictures are drawn from)", step):
                snapshot = self._snapshot(model)(self.batch.inputs, self.batch.targets)
            if snapshot is None:
                return  # nothing to draw from
            outputs, prediction, gradients = snapshot
            with part("prediction", step):
                write_image("prediction", pictures.comparison(*compared_images(self.batch, prediction)))
            if self.kernels:
                with part("kernels", step):
                    for layer in conv_layers(model):
                        write_image(f"kernels/{layer.name}", pictures.kernel_grid(np.asarray(layer.kernel.numpy())))
                with part("effective kernel", step):
                    effective = effective_kernels(model, self.target_kernel, self.batch)
                    if effective:
                        write_image("kernels/effective", pictures.kernel_row(effective))
            if self.activations:
                with part("activations", step):
                    for name, maps in outputs.items():
                        grid = pictures.channel_grid(np.asarray(maps[0], np.float32), max_side=ACTIVATION_SIDE)
                        write_image(f"activations/{name}", grid)
            if self.histograms:
                with part("histograms", step):
                    self._histograms(model, gradients)

    def _snapshot(self, model: keras.Model) -> Snapshot:
        """One compiled pass that gives the pictures their numbers: each conv layer's output, the
        prediction over the compared pixels and, for the histograms, the loss's gradients.

        Run eagerly, this was three forward passes and a backward pass, all paying Keras' and
        TensorFlow's per-op overhead: several training steps per picture. Compiled once per model
        it costs about one step. The histograms are bucketed outside it (:func:`write_histogram`)."""
        if self._snapshot_fn is None or self._snapshot_fn[0] is not model:
            weights = [weight for _, weight in conv_weights(model)]

            @tf.function
            def snapshot(inputs: tf.Tensor, targets: tf.Tensor) -> tuple[dict, tf.Tensor, list]:
                with tf.GradientTape() as tape:
                    outputs, final = conv_outputs(model, inputs)
                    prediction = compared(final, self.batch.crops)
                    loss = tf.reduce_mean(tf.square(prediction - targets))
                gradients = tape.gradient(loss, weights) if self.histograms else []
                return outputs, prediction, gradients

            self._snapshot_fn = (model, snapshot)
        return self._snapshot_fn[1]

    def _histograms(self, model: keras.Model, gradients: Sequence[tf.Tensor | None]) -> None:
        """Every conv layer's weights, and the loss's gradients at them, as histograms."""
        for (layer_name, weight), grad in zip(conv_weights(model), gradients):
            write_histogram(f"weights/{layer_name}/{weight.name}", weight.numpy())
            if grad is not None:
                write_histogram(f"gradients/{layer_name}/{weight.name}", grad.numpy())

    def on_end(self, step: int, model: keras.Model, metrics: Mapping[str, float]) -> None:
        """The final pictures, and the final metrics that the HPARAMS tab compares runs by."""
        self.pictures(step, model)
        with self.guard.part("final metrics", step):
            final = {tag: metrics[key] for key, tag in FINAL_METRICS.items() if metrics.get(key) is not None}
            self.scalars(step, final)
            self.writer.flush()

    def _derived(self, step: int, loss: float | None) -> dict[str, float]:
        """rel_mse and PSNR from the loss (as in metrics.json), and the steps/s since last time."""
        values = {}
        if loss is not None and self._target_variance > 0:
            values["rel_mse"] = loss / self._target_variance
            if math.isfinite(psnr := psnr_db(self._target_peak, loss)):
                values["psnr_db"] = psnr
        now = time.perf_counter()
        if self._last_tick is not None and step > self._last_tick[0]:
            values["steps_per_sec"] = (step - self._last_tick[0]) / (now - self._last_tick[1])
        self._last_tick = (step, now)
        return values

def write_image(tag: str, rgb: np.ndarray) -> None:
    """One RGB uint8 picture as an image summary, as ``tf.summary.image`` writes it but with fast
    PNG compression: at its default level encoding costs several training steps per picture."""
    height, width = rgb.shape[:2]
    png = tf.io.encode_png(rgb, compression=1)
    tensor = tf.stack([tf.as_string(width), tf.as_string(height), png])
    tf.summary.write(tag, tensor, metadata=image_metadata.create_summary_metadata(display_name=None, description=None))


def conv_weights(model: keras.Model) -> list[tuple[str, keras.Variable]]:
    """(layer name, weight) for every trainable weight of every conv layer, in the model's order."""
    return [(layer.name, weight) for layer in conv_layers(model) for weight in layer.trainable_weights]


def write_histogram(tag: str, values: np.ndarray) -> None:
    """``values`` as a histogram summary in TensorBoard's format (``[left, right, count]`` rows),
    bucketed in NumPy. ``tf.summary.histogram`` inside the compiled snapshot added about 20 ops per
    histogram, and tracing the seed model's 52 of them cost about 14 s at the first picture: more
    than 40 training steps."""
    metadata = histogram_metadata.create_summary_metadata(display_name=None, description=None)
    tf.summary.write(tag, histogram_buckets(values), metadata=metadata)


def histogram_buckets(values: np.ndarray, bins: int = HISTOGRAM_BUCKETS) -> np.ndarray:
    """``(bins, 3)`` float64 rows ``[left, right, count]`` over the finite values of ``values``.

    Non-finite values (a diverged gradient) are left out of the counts. Unlike ``np.histogram``,
    this never refuses a range: values near the float64 limits, or a range narrower than a few
    float64 steps, still give ``bins`` buckets whose counts sum to the number of finite values."""
    values = np.asarray(values, np.float64).ravel()
    values = values[np.isfinite(values)]
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if low == high:  # one value (or none): one unit-wide bucket around it, as TensorBoard draws it
        low, high = low - 0.5, high + 0.5
    # Halves, so that neither the span nor the edges overflow near the float64 limits.
    half_span = high / 2 - low / 2
    fractions = np.arange(bins + 1) / bins
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        edges = np.clip(2 * (low / 2 + half_span * fractions), low, high)
        position = (values / 2 - low / 2) / half_span * bins
    edges[0], edges[-1] = low, high
    index = np.clip(np.nan_to_num(np.floor(position), nan=0.0, posinf=bins - 1), 0, bins - 1).astype(np.intp)
    counts = np.bincount(index, minlength=bins)
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)


def compared_images(batch: Batch, prediction: tf.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The input, target and ``prediction`` (the model's output over the compared pixels, as
    :meth:`Batch.predict` gives it) as 2-D arrays: first image, first channel."""
    rows, cols = batch.crops.inputs
    return (
        batch.inputs.numpy()[0, rows, cols, 0],
        batch.targets.numpy()[0, ..., 0],
        np.asarray(prediction[0, ..., 0], np.float32),
    )


def conv_outputs(model: keras.Model, inputs: tf.Tensor) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
    """Each conv layer's output for ``inputs`` by layer name, and the model's output (works
    eagerly and inside ``tf.function``)."""
    outputs = {}
    values = inputs
    for layer in model.layers:
        values = layer(values, training=False)
        if isinstance(layer, keras.layers.Conv2D):
            outputs[layer.name] = values
    return outputs, values


def layer_outputs(model: keras.Model, inputs: tf.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Each conv layer's output ``(H, W, C)`` for the first image of ``inputs``, by layer name."""
    outputs, _ = conv_outputs(model, tf.convert_to_tensor(inputs, tf.float32))
    return {name: np.asarray(values[0], np.float32) for name, values in outputs.items()}


def effective_kernels(model: keras.Model, target_kernel: np.ndarray | None, batch: Batch) -> list[np.ndarray]:
    """[model's effective kernel, target's kernel if there is one], for a side-by-side picture.

    The model's is exact for a linear stack and linearised at the centre of the batch's first
    image otherwise; none when that image cannot hold the model's receptive field. Without a
    target kernel (a non-linear target) the model's kernel linearised at a flat pixel, an edge
    pixel and a corner pixel instead (:func:`landmark_kernels`): for a non-linear operator the
    kernel depends on where one looks."""
    image = batch.inputs.numpy()[0]
    try:
        if target_kernel is None:
            return landmark_kernels(model, image)
        model_kernel = effective_kernel(model, image)
    except ConvlearnError:
        return []
    return [model_kernel, np.asarray(target_kernel, np.float64)]


def landmark_kernels(model: keras.Model, image: np.ndarray) -> list[np.ndarray]:
    """The model's kernels linearised (the input gradient of one output pixel, channel 0 to 0) at
    the :func:`landmarks` of ``image`` (``(H, W, C)``): a flat pixel, an edge and a corner, in that
    order; none when no receptive field fits in the image. A linear model gives its kernel three times.

    An output pixel depends only on its receptive field, so the model runs on the three fields cut
    out of the image, not on the whole image: on the notebook's 300x400 image the whole-image
    gradients cost about a second at every picture step, the three crops a few milliseconds. A
    field's pixel keeps its place in the crop's output (the convolutions are translation
    equivariant), and the zero padding of a ``same`` layer at the crop's border never reaches it."""
    fp = footprint(model)
    pixels = landmarks(image[..., 0], fp, (image.shape[0] - fp.shrink[0], image.shape[1] - fp.shrink[1]))
    if not pixels:
        return []
    starts = [tuple(_field_starts(fp, axis, index) for axis, index in enumerate(pixel)) for pixel in pixels]
    crops = tf.constant(np.stack([image[top : top + fp.extent[0], left : left + fp.extent[1]]
                                  for top, left in starts]), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(crops)
        outputs = model(crops, training=False)
        # The crops are independent, so one gradient of the sum gives each crop its own pixel's.
        picked = tf.add_n([outputs[i, row - top, col - left, 0]
                           for i, ((row, col), (top, left)) in enumerate(zip(pixels, starts))])
    gradients = tape.gradient(picked, crops)[..., 0].numpy()
    return [gradient.astype(np.float64) for gradient in gradients]


def landmarks(image: np.ndarray, fp: Footprint, output_shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Output pixels (row, col) of an operator of footprint ``fp`` centred on the flattest spot of
    the 2-D ``image``, its strongest straight edge and its strongest corner, by the structure tensor
    over 5x5 windows: flat has the least gradient energy, the edge the largest gap between the
    tensor's eigenvalues, the corner the largest smaller eigenvalue. Only output pixels whose
    receptive field lies inside the image are candidates; none: an empty list."""
    starts = [_field_starts(fp, axis, np.arange(output_shape[axis])) for axis in (0, 1)]
    inside = [np.nonzero((s >= 0) & (s + fp.extent[a] <= image.shape[a]))[0] for a, s in enumerate(starts)]
    if not (len(inside[0]) and len(inside[1])):
        return []
    gy, gx = np.gradient(image.astype(np.float64))
    centres = np.ix_(*[starts[a][inside[a]] + (fp.extent[a] - 1) // 2 for a in (0, 1)])
    xx, yy, xy = (_box5(a * b)[centres] for a, b in ((gx, gx), (gy, gy), (gx, gy)))
    half_trace, gap = (xx + yy) / 2, np.sqrt(((xx - yy) / 2) ** 2 + xy**2)
    picks = [np.argmin(half_trace + gap), np.argmax(gap), np.argmax(half_trace - gap)]
    return [(int(inside[0][p // len(inside[1])]), int(inside[1][p % len(inside[1])])) for p in picks]


def _field_starts(fp: Footprint, axis: int, index: np.ndarray | int) -> np.ndarray | int:
    """The first input pixel of the receptive field of output pixel ``index`` (positions doubled, see geometry)."""
    return (fp.shift2[axis] + 2 * index - (fp.extent[axis] - 1)) // 2


def _box5(values: np.ndarray) -> np.ndarray:
    """Mean over each pixel's 5x5 window, the border repeated: five shifted rows summed, then five
    shifted columns (a tenth of the time of a mean over a sliding window view, at every picture)."""
    padded = np.pad(values, 2, mode="edge")
    rows = sum(padded[shift : shift + values.shape[0]] for shift in range(5))
    return sum(rows[:, shift : shift + values.shape[1]] for shift in range(5)) / 25


def hparams_from_config(cfg: DictConfig, overrides: Sequence[str] = ()) -> dict[str, HParamValue]:
    """A run's hyperparameters for the HPARAMS tab: the main choices (model, target, optimizer,
    lr, steps, seed) and every overridden config value (``key=value`` as Hydra records them).

    A value that is not a scalar (a whole group chosen with ``model=linear``, a list) is kept as
    the text written on the command line.
    """
    values: dict[str, HParamValue] = {
        "model": str(cfg.model.get("_target_", "")).rsplit(".", 1)[-1],
        "target": str(cfg.target.get("name", "")),
        "optimizer": str(cfg.optimizer.get("cls", "")).rsplit(".", 1)[-1],
        "lr": float(cfg.optimizer.lr),
        "steps": int(cfg.trainer.steps),
        "seed": int(cfg.trainer.seed),
    }
    for override in overrides:
        key, sep, text = override.lstrip("+").partition("=")
        if not sep or key.startswith(("~", "hydra.")):
            continue
        value = OmegaConf.select(cfg, key, default=None)
        if key in ("model", "target", "optimizer") or not isinstance(value, HParamValue):
            value = text
        values[key] = value
    return values
