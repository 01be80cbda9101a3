"""Train a conv model to learn an image transform.

    python train.py                                   # the default experiment
    python train.py model=linear optimizer.lr=3e-3    # override any config value
    python train.py -m optimizer.lr=1e-3,3e-3         # a sweep, one run dir per job

The flow: config -> data -> target -> model -> trainer -> logs, each built from its config group
in ``configs/``. Results land in the Hydra run dir (``outputs/...``): ``metrics.json``, the model,
its kernels and TensorBoard events.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from convlearn.analysis import recovery_metrics
from convlearn.config import build
from convlearn.data import as_images, make_feed
from convlearn.errors import ConvlearnError
from convlearn.logs import hparams_from_config
from convlearn.report import write_summary_png
from convlearn.summary import metrics, save_run
from convlearn.training import mse, seed_everything

log = logging.getLogger("convlearn")


def train(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict:
    """Run one experiment into ``run_dir`` and return its summary (also in metrics.json).

    ``overrides`` (Hydra's ``key=value`` task overrides) become the run's hyperparameters in
    TensorBoard's HPARAMS tab, next to the main choices."""
    trainer = build(cfg, "trainer")
    seed_everything(trainer.seed, trainer.deterministic)
    images = as_images(build(cfg, "data"))
    # data=pairs brings its target images: no target transform is built.
    target = None if images.given_targets else build(cfg, "target")
    model = build(cfg, "model", **images.model_kwargs())
    feed = make_feed(images, target, model, seed=trainer.seed)
    batch = feed.preview
    optimizer = build(cfg, "optimizer")
    log.info(
        "%s on %s: %d training and %d validation images, first %dx%d, compared region %dx%d, %d weights",
        model.name, "given targets" if target is None else target.name, len(images.train), len(images.val),
        *images.train[0].shape[:2], *feed.train.crops.shape, model.count_params(),
    )
    target_kernel = None if target is None else target.linear_kernel()
    make_logger = build(cfg, "logger")
    with make_logger(
        log_dir=run_dir / "tb", batch=batch, config_text=OmegaConf.to_yaml(cfg),
        hparams=hparams_from_config(cfg, overrides), target_kernel=target_kernel,
    ) as logger:
        history = trainer.fit(model, optimizer, feed.train, logger, validation=feed.validation)
        summary = metrics(history, mse(model, batch), batch.targets.numpy())
        if history.val_losses:
            summary["val_loss"] = history.val_losses[-1][1]
        if target is not None:
            summary.update(recovery_metrics(model, target, batch.inputs.numpy()[0]))
        logger.on_end(history.steps, model, summary)
    save_run(run_dir, model, summary)
    write_summary_png(run_dir / "summary.png", summary["losses"], batch, model, target_kernel)
    log.info(
        "final loss %.4g, rel_mse %.4g, PSNR %.1f dB, %.1f steps/s -> %s",
        summary["final_loss"], summary["rel_mse"], summary["psnr_db"], summary["steps_per_sec"], run_dir,
    )
    return summary


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; returns the final loss so that sweepers can minimise it."""
    try:
        hydra_cfg = HydraConfig.get()
        return train(cfg, Path(hydra_cfg.runtime.output_dir), hydra_cfg.overrides.task)["final_loss"]
    except ConvlearnError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"convlearn: error: {err}")


if __name__ == "__main__":
    main()
