"""Train a conv model to learn an image transform.

    python train.py                                   # the default experiment
    python train.py model=linear optimizer.lr=3e-3    # override any config value
    python train.py -m optimizer.lr=1e-3,3e-3         # a sweep, one run dir per job

The run itself (config -> data -> target -> model -> trainer -> logs, each built from its config
group in ``configs/``) is :func:`convlearn.pipeline.run_experiment`. Results land in the Hydra run
dir (``outputs/...``): ``metrics.json``, the model, its kernels and TensorBoard events.

    python train.py trainer.resume=true hydra.run.dir=outputs/<date>/<time>   # continue a run
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from convlearn.config import one_line_composition_errors
from convlearn.errors import ConvlearnError, full_error_wanted

log = logging.getLogger("convlearn")


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float:
    """Hydra's entry point; returns the ``objective`` metric (default: final loss) for sweepers.

    In a sweep, a job stopped by a user mistake is recorded as failed in its ``metrics.json`` and,
    like a diverged job, returns ``inf`` instead of raising, so that the other jobs and the sweeper
    (Optuna aborts a search on the first raising trial) go on. An unexpected exception (a bug) is
    recorded as crashed first; it then ends a single run with its traceback, and in a sweep only its job.
    """
    # These import TensorFlow (seconds): here rather than at the top, so that a mistyped option on
    # the command line is reported before they load.
    from convlearn.pipeline import run_experiment
    from convlearn.sweep import check_objective, objective, record_crash, record_failure, share_cores, share_gpus

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        check_objective(cfg.objective)
        threads = share_cores(hydra_cfg.launcher.get("n_jobs")) if in_sweep else None
        if threads:
            log.info("TensorFlow uses %d thread(s) per pool, sharing the cores with parallel jobs", threads)
        gpu = share_gpus(hydra_cfg.job.num, hydra_cfg.launcher.get("n_jobs")) if in_sweep else None
        if gpu:
            log.info("this job trains on %s, one GPU per parallel job", gpu)
        summary = run_experiment(cfg, run_dir, hydra_cfg.overrides.task).metrics
    except ConvlearnError as err:
        if full_error_wanted():
            raise
        if not in_sweep:
            log_to_file(f"convlearn: error: {err}")
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
        where = f"at step {summary['stopped_step']}" if "stopped_step" in summary else "(second Ctrl-C)"
        if summary.get("checkpoint"):
            overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("trainer.resume=", "hydra.run.dir="))]
            resume = " ".join([*overrides, "trainer.resume=true", f"hydra.run.dir={run_dir}"])
            then = f"checkpoint saved to {summary['checkpoint']}; continue with: python train.py {resume}"
        else:  # stopped before its first checkpoint: nothing to resume from
            then = "no checkpoint yet, so run it again to start over"
        print(f"convlearn: interrupted {where}; {then}", file=sys.stderr)
        sys.exit(130)  # the shell's code for "ended by Ctrl-C"
    return objective(summary, cfg.objective)


def log_to_file(message: str) -> None:
    """Write ``message`` to the run's log file (``train.log``) only: the terminal gets it once, from
    ``sys.exit``, and the run dir keeps the reason the run was refused."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


if __name__ == "__main__":
    with one_line_composition_errors():  # model=bogus or trainer.stepz=3: one line, like convlearn's checks
        main()
