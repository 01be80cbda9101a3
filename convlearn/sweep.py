"""What a job of a sweep needs beyond a single run.

A sweeper minimises the number ``train.py`` returns, so this module picks that number (the
``objective`` metric, or :data:`FAILED` for a job that failed), records a failed job in its
``metrics.json`` so that the sweep goes on, and sizes TensorFlow's thread pools so that jobs run
in parallel do not fight over the cores.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

from convlearn.errors import ConvlearnError
from convlearn.perf import set_threads
from convlearn.results import write_json

# Metrics a sweeper can minimise; all are "lower is better".
OBJECTIVES = ("final_loss", "best_loss", "rel_mse")

# What a failed job returns. The Optuna sweeper (optuna 2.x) refuses NaN but accepts inf, and its
# TPE sampler itself ranks failed trials as inf; the basic sweeper ignores the value.
FAILED = math.inf


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


def record_failure(run_dir: Path, reason: str) -> dict:
    """Write a failed job's ``metrics.json`` (status and reason) and return it."""
    summary = {"status": "failed", "reason": reason}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "metrics.json", summary)
    return summary


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
