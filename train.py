"""Train a conv model to learn an image transform.

    python train.py                                   # the default experiment
    python train.py model=linear optimizer.lr=3e-3    # override any config value
    python train.py -m optimizer.lr=1e-3,3e-3         # a sweep, one run dir per job

The flow: config -> data -> target -> model -> trainer -> logs, each built from its config group
in ``configs/``. Results land in the Hydra run dir (``outputs/...``): ``metrics.json``, the model,
its kernels and TensorBoard events.

    python train.py trainer.resume=true hydra.run.dir=outputs/<date>/<time>   # continue a run
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from convlearn.config import build, one_line_composition_errors
from convlearn.errors import ConvlearnError, full_error_wanted

log = logging.getLogger("convlearn")


def train(cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()) -> dict:
    """Run one experiment into ``run_dir`` and return its summary (also in metrics.json).

    ``overrides`` (Hydra's ``key=value`` task overrides) become the run's hyperparameters in
    TensorBoard's HPARAMS tab, next to the main choices."""
    # These import TensorFlow (seconds): here rather than at the top, so that a mistyped
    # override on the command line is reported before they load.
    from convlearn.analysis import recovery_metrics
    from convlearn.checkpoints import claim_run_dir
    from convlearn.data import as_images, make_feed
    from convlearn.logs import hparams_from_config
    from convlearn.report import write_summary_png
    from convlearn.run_dirs import check_writable
    from convlearn.summary import metrics, save_run, target_stats
    from convlearn.targets import footprint_of
    from convlearn.training import mse, seed_everything
    from convlearn.validation import validate

    validate(cfg)
    check_writable(run_dir, "hydra.run.dir")
    trainer = build(cfg, "trainer")
    seed_everything(trainer.seed, trainer.deterministic)
    images = as_images(build(cfg, "data"))
    # data=pairs brings its target images: no target transform is built.
    target = None if images.given_targets else build(cfg, "target")
    with trainer.scope():  # variables of a distributed model and its optimizer live on every device
        # The target's footprint lets `auto` kernel sizes line the model's output up with it.
        model = build(cfg, "model", target=footprint_of(target), **images.model_kwargs())
        optimizer = build(cfg, "optimizer")
    feed = make_feed(images, target, model, seed=trainer.seed)
    batch = feed.preview
    target_stats(batch.targets.numpy())  # a constant target is refused now, not after training
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
        checkpoint_dir = claim_run_dir(run_dir, trainer.resume, cfg)
        history = trainer.fit(
            model, optimizer, feed.train, logger, validation=feed.validation, checkpoint_dir=checkpoint_dir
        )
        summary = metrics(history, mse(model, batch), batch.targets.numpy())
        summary.update(recovery_metrics(model, batch, target))
        logger.on_end(history.steps, model, summary)
    save_run(run_dir, model, summary)
    with logger.guard.part("summary.png", history.steps):  # the results are saved; the picture may fail
        write_summary_png(run_dir / "summary.png", summary["losses"], batch, model, target_kernel)
    if history.status == "failed":
        log.error(
            "training stopped at step %d: %s; that update was not applied, the model and %s hold the "
            "weights it started from (try a lower optimizer.lr)",
            history.stopped_step, history.reason, history.checkpoint,
        )
    log.info(
        "final loss %.4g, rel_mse %.4g, PSNR %.1f dB, %.1f steps/s -> %s",
        summary["final_loss"], summary["rel_mse"], summary["psnr_db"], summary["steps_per_sec"], run_dir,
    )
    return summary


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; returns the ``objective`` metric (default: final loss) for sweepers.

    In a sweep, a job stopped by a user mistake is recorded as failed in its ``metrics.json`` and,
    like a diverged job, returns ``inf`` instead of raising, so that the other jobs and the sweeper
    (Optuna aborts a search on the first raising trial) go on. An unexpected exception (a bug) is
    recorded as crashed first; it then ends a single run with its traceback, and in a sweep only its job.
    """
    from convlearn.sweep import (  # imports TensorFlow
        check_objective, objective, record_crash, record_failure, share_cores,
    )

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        check_objective(cfg.objective)
        threads = share_cores(hydra_cfg.launcher.get("n_jobs")) if in_sweep else None
        if threads:
            log.info("TensorFlow uses %d thread(s) per pool, sharing the cores with parallel jobs", threads)
        summary = train(cfg, run_dir, hydra_cfg.overrides.task)
    except ConvlearnError as err:
        if full_error_wanted():
            raise
        if not in_sweep:
            sys.exit(f"convlearn: error: {err}")
        log.error("convlearn: error: %s", err)
        summary = record_failure(run_dir, str(err))
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, between two checkpoints
        summary = record_failure(run_dir, "stopped at once by a second Ctrl-C", status="interrupted")
    except Exception as err:
        record_crash(run_dir, err)
        if not in_sweep or full_error_wanted():
            raise
        log.exception("convlearn: job crashed (a bug; recorded in its metrics.json): %s", err)
        summary = {"status": "crashed"}
    if summary["status"] == "interrupted":
        overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
        resume = " ".join([*overrides, "trainer.resume=true", f"hydra.run.dir={run_dir}"])
        where = f"at step {summary['stopped_step']}" if "stopped_step" in summary else "(second Ctrl-C)"
        print(
            f"convlearn: interrupted {where}; checkpoint saved to {summary.get('checkpoint')}; "
            f"continue with: python train.py {resume}",
            file=sys.stderr,
        )
        sys.exit(130)  # the shell's code for "ended by Ctrl-C"
    return objective(summary, cfg.objective)


if __name__ == "__main__":
    with one_line_composition_errors():  # model=bogus or trainer.stepz=3: one line, like convlearn's checks
        main()
