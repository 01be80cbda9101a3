"""One run of an experiment, from a composed config to the files it leaves: the only place a run is wired.

The stages follow the config groups: config -> data -> target -> model -> trainer -> logs.
:func:`build_experiment` builds everything up to the first training step (the benchmark times the
trainer's loop on what it returns); :func:`train_experiment` trains, logs and writes the run dir;
:func:`run_experiment` is both, for ``train.py``, the Python API, the scripts and the tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from convlearn.analysis import recovery_metrics
from convlearn.checkpoints import claim_run_dir
from convlearn.config import build
from convlearn.config_checks import validate
from convlearn.data import Feed, Images, as_images, make_feed
from convlearn.logs import hparams_from_config
from convlearn.perf import configure_tensorflow, float32_output, set_remapping
from convlearn.report import write_report_png
from convlearn.results import kernel_arrays, metrics, psnr_db, save_run, target_stats
from convlearn.run_dirs import check_writable
from convlearn.targets import Pipeline, footprint_of
from convlearn.training import History, StepLogger, mse, seed_everything

log = logging.getLogger("convlearn")


@dataclass
class Experiment:
    """What a run trains, built from its config: the trainer, the images, the target transform
    (None when the data bring their targets), the model and its optimizer, and the feed."""

    cfg: DictConfig
    trainer: Any  # training.Trainer or lstsq.LeastSquares: the trainer group chooses
    images: Images
    target: Pipeline | None
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    feed: Feed


@dataclass
class RunResult:
    """What a finished run gives back: the contents of ``metrics.json``, the trained model, its
    kernels by layer name (as in ``kernels.npz``), the training history and the run dir."""

    metrics: dict
    model: keras.Model
    history: History
    run_dir: Path
    kernels: dict[str, np.ndarray]


def build_experiment(cfg: DictConfig, run_dir: Path | None = None) -> Experiment:
    """Check the config (and that ``run_dir`` can be written), then build trainer, data, target,
    model and optimizer, and the feed."""
    validate(cfg)
    if run_dir is not None:
        check_writable(run_dir, "hydra.run.dir")
    # Process-wide, and fixed once TensorFlow runs an op or a layer is built: first of all.
    configure_tensorflow(cfg.trainer.get("threads"), cfg.trainer.get("precision", "float32"))
    trainer = build(cfg, "trainer")
    seed_everything(trainer.seed, trainer.deterministic)
    images = as_images(build(cfg, "data"))
    target = None if images.given_targets else build(cfg, "target")
    with trainer.scope():  # variables of a distributed model and its optimizer live on every device
        model = build_model(cfg, target, images)
        optimizer = build(cfg, "optimizer")
    set_remapping(model)
    feed = make_feed(images, target, model, seed=trainer.seed)
    target_stats(feed.preview.targets.numpy())  # a constant target is refused now, not after training
    log.info(
        "%s on %s: %s, first %dx%d, compared region %dx%d, %d weights",
        model.name, "given targets" if target is None else target.name, images.counts(),
        *images.train[0].shape[:2], *feed.train.crops.shape, model.count_params(),
    )
    return Experiment(cfg, trainer, images, target, model, optimizer, feed)


def build_model(cfg: DictConfig, target: Pipeline | None, images: Images) -> keras.Model:
    """The model group's model for ``target`` (None: the data bring their targets) and ``images``,
    its last layer in float32 under a reduced-precision dtype policy (:func:`float32_output`)."""
    model = build(cfg, "model", target=footprint_of(target), **images.model_kwargs())
    float32_output(model)
    return model


def train_experiment(
    experiment: Experiment,
    run_dir: Path,
    overrides: Sequence[str] = (),
    watch: Callable[[StepLogger], StepLogger] | None = None,
) -> RunResult:
    """Train ``experiment`` into ``run_dir``: TensorBoard events and checkpoints while it trains,
    then ``metrics.json``, the model, its kernels and ``report.png``.

    ``overrides`` (Hydra's ``key=value`` task overrides) become the run's hyperparameters in
    TensorBoard's HPARAMS tab. ``watch`` wraps the logger the trainer reports to (the benchmark's
    step clock)."""
    cfg, trainer, model, feed = experiment.cfg, experiment.trainer, experiment.model, experiment.feed
    preview = feed.preview
    target_kernel = None if experiment.target is None else experiment.target.linear_kernel()
    make_logger = build(cfg, "logger")
    with make_logger(
        log_dir=run_dir / "tb", batch=preview, config_text=OmegaConf.to_yaml(cfg),
        hparams=hparams_from_config(cfg, overrides), target_kernel=target_kernel,
    ) as logger:
        checkpoint_dir = claim_run_dir(run_dir, trainer.resume, cfg)
        history = trainer.fit(
            model, experiment.optimizer, feed.train, logger if watch is None else watch(logger),
            validation=feed.validation, checkpoint_dir=checkpoint_dir,
        )
        summary = metrics(history, mse(model, preview), preview.targets.numpy())
        summary.update(recovery_metrics(model, preview, experiment.target))
        if "val_loss" in summary:  # held-out images: their PSNR too, peak = their targets' range
            held_out = np.concatenate([batch.targets.numpy().ravel() for batch in feed.validation])
            summary["val_psnr_db"] = psnr_db(float(held_out.max() - held_out.min()), summary["val_loss"])
        logger.on_end(history.steps, model, summary)
    save_run(run_dir, model, summary, preview.inputs.numpy()[0], target_kernel)
    with logger.guard.part("report.png", history.steps):  # the results are saved; the picture may fail
        write_report_png(run_dir / "report.png", summary["losses"], preview, model, target_kernel)
    if history.status == "failed":
        log.error(
            "training stopped at step %d: %s; that update was not applied, the model and %s hold the "
            "weights it started from (try a lower optimizer.lr)",
            history.stopped_step, history.reason, history.checkpoint,
        )
    held_out = ""
    if "val_loss" in summary:
        held_out = f", val_loss {summary['val_loss']:.4g}, val PSNR {summary['val_psnr_db']:.1f} dB"
    log.info(
        "final loss %.4g, rel_mse %.4g, PSNR %.1f dB%s, %.1f steps/s -> %s",
        summary["final_loss"], summary["rel_mse"], summary["psnr_db"], held_out, summary["steps_per_sec"], run_dir,
    )
    return RunResult(summary, model, history, run_dir, kernel_arrays(model))


def run_experiment(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> RunResult:
    """Run one experiment from its composed config into ``run_dir``."""
    return train_experiment(build_experiment(cfg, Path(run_dir)), Path(run_dir), overrides)
