"""What a job of a sweep needs beyond a single run.

A sweeper minimises the number ``train.py`` returns, so this module picks that number (the
``objective`` metric, or :data:`FAILED` for a job that failed), records a job that failed or
crashed in its ``metrics.json`` so that the sweep goes on and every job leaves its results, and
shares the machine between jobs run in parallel: TensorFlow's thread pools sized so that they do
not fight over the cores, and one GPU per job where there are several (on one GPU, memory growth
lets the jobs fit next to each other).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

import tensorflow as tf

from convlearn.errors import ConvlearnError
from convlearn.perf import set_threads
from convlearn.results import write_json

# Metrics a sweeper can minimise; all are "lower is better".
OBJECTIVES = ("final_loss", "best_loss", "rel_mse")

# What a failed job returns. The Optuna sweeper (optuna 2.x) refuses NaN but accepts inf, and its
# TPE sampler itself ranks failed trials as inf; the basic sweeper ignores the value.
FAILED = math.inf

log = logging.getLogger("convlearn")


def check_objective(name: str) -> str:
    """``name`` if it is a metric that sweeps can minimise, else a one-line error."""
    if name not in OBJECTIVES:
        raise ConvlearnError(f"objective: unknown metric '{name}'; choose one of {', '.join(OBJECTIVES)}")
    return name


def objective(summary: Mapping, name: str) -> float:
    """The value a sweeper minimises: the metric ``name``, or :data:`FAILED` if the run failed."""
    if summary.get("status") != "completed":
        return FAILED
    value = float(summary[check_objective(name)])
    return value if math.isfinite(value) else FAILED


def record_failure(run_dir: Path, reason: str, status: str = "failed") -> dict:
    """Write the ``metrics.json`` of a run that ended without its own (status and reason), keeping
    the path of its newest checkpoint if it has one, and return it.

    A run dir that cannot be written is reported in the log; the summary is still returned, so
    that the caller's exit status and the sweep go on."""
    summary: dict = {"status": status, "reason": reason}
    index = run_dir / "checkpoints" / "checkpoint"
    if index.is_file():
        summary["checkpoint"] = str(index.parent)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "metrics.json", summary)
    except OSError as err:
        log.error("cannot write %s: %s", run_dir / "metrics.json", err)
    return summary


def record_crash(run_dir: Path, err: BaseException) -> dict:
    """Record an unexpected exception (a bug in convlearn or a library) as ``"status": "crashed"``
    with the error, before it ends the run with its traceback or, in a sweep, the job."""
    return record_failure(run_dir, f"{type(err).__name__}: {err}", status="crashed")


def parallel_jobs(n_jobs: int | None, cpus: int) -> int:
    """How many jobs a launcher with joblib-style ``n_jobs`` runs at once on ``cpus`` cores.

    ``None`` means one at a time (Hydra's basic launcher); -1 means one per core, -2 all but one...
    """
    if n_jobs is None or n_jobs == 0:
        return 1
    if n_jobs < 0:
        return max(1, cpus + 1 + n_jobs)
    return n_jobs


def threads_per_job(jobs: int, cpus: int) -> int:
    """Cores per job when ``jobs`` run at once, so that together they use every core once."""
    return max(1, cpus // max(1, jobs))


def share_cores(n_jobs: int | None, cpus: int | None = None) -> int | None:
    """Size TensorFlow's thread pools for a job run next to others; returns the threads chosen.

    TensorFlow reads these settings once, when it starts; a worker process that runs several jobs
    keeps the first job's setting, the same for every job of a sweep. Where TensorFlow already
    runs with another size nothing is done and None is returned. Jobs run one at a time keep
    TensorFlow's defaults (all cores).
    """
    cpus = cpus or len(os.sched_getaffinity(0))  # the cores this process may use, not the machine's
    jobs = parallel_jobs(n_jobs, cpus)
    if jobs == 1:
        return None
    threads = threads_per_job(jobs, cpus)
    try:
        set_threads([threads, threads])
    except ConvlearnError:  # TensorFlow already runs here with another size
        return None
    return threads


def gpu_for_job(job: int, gpus: int) -> int:
    """The GPU (an index) of sweep job number ``job`` on a machine with ``gpus`` GPUs: round robin,
    so that the first ``gpus`` jobs, which start together, each get their own."""
    return job % gpus


def share_gpus(job: int, n_jobs: int | None) -> str | None:
    """Give this job of a parallel sweep one GPU of several; returns the GPU's name, or None
    where nothing was changed (jobs one at a time, fewer than two GPUs, or TensorFlow already
    using the GPUs in this worker process, which then keeps its first job's GPU)."""
    gpus = tf.config.list_physical_devices("GPU")
    if parallel_jobs(n_jobs, len(os.sched_getaffinity(0))) == 1 or len(gpus) < 2:
        return None
    chosen = gpus[gpu_for_job(job, len(gpus))]
    try:
        tf.config.set_visible_devices([chosen], "GPU")
    except RuntimeError:  # the runtime already started in this worker
        return None
    return chosen.name
