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
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from convlearn.analysis import recovery_metrics
from convlearn.config import build
from convlearn.errors import ConvlearnError
from convlearn.summary import metrics, save_run
from convlearn.training import make_batch, mse, seed_everything

log = logging.getLogger("convlearn")


def train(cfg: DictConfig, run_dir: Path) -> dict:
    """Run one experiment into ``run_dir`` and return its summary (also in metrics.json)."""
    trainer = build(cfg, "trainer")
    seed_everything(trainer.seed, trainer.deterministic)
    image = build(cfg, "data")
    target = build(cfg, "target")
    model = build(cfg, "model")
    batch = make_batch(image, target, model)
    optimizer = build(cfg, "optimizer")
    log.info(
        "%s on %s: image %dx%d, compared region %dx%d, %d weights",
        model.name, target.name, *image.shape, *batch.crops.shape, model.count_params(),
    )
    make_logger = build(cfg, "logger")
    with make_logger(log_dir=run_dir / "tb", batch=batch, config_text=OmegaConf.to_yaml(cfg)) as logger:
        history = trainer.fit(model, optimizer, batch, logger)
        summary = metrics(history, mse(model, batch), batch.targets.numpy())
        summary.update(recovery_metrics(model, target, image))
        logger.pictures(history.steps, model)
    save_run(run_dir, model, summary)
    log.info(
        "final loss %.4g, rel_mse %.4g, PSNR %.1f dB, %.1f steps/s -> %s",
        summary["final_loss"], summary["rel_mse"], summary["psnr_db"], summary["steps_per_sec"], run_dir,
    )
    return summary


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; returns the final loss so that sweepers can minimise it."""
    try:
        return train(cfg, Path(HydraConfig.get().runtime.output_dir))["final_loss"]
    except ConvlearnError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        sys.exit(f"convlearn: error: {err}")


if __name__ == "__main__":
    main()
