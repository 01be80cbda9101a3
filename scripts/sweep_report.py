"""Summarise a sweep: one row per job, best objective first, and objective-vs-parameter plots.

    python scripts/sweep_report.py outputs/multirun/2026-01-01/12-00-00-000000
    python scripts/sweep_report.py SWEEP_DIR --objective rel_mse --out report/

Reads every job's ``metrics.json`` and ``.hydra/overrides.yaml`` under SWEEP_DIR, prints the table,
and writes it as ``report.csv`` and ``report.md`` plus ``objective_vs_<parameter>.png`` for every
parameter that takes more than one value in the sweep. Failed jobs (a user mistake, a diverged
loss) and jobs that left no ``metrics.json`` are listed last, with their reason, and not plotted.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: works without a display
import matplotlib.pyplot as plt
from omegaconf import OmegaConf

METRICS = ("final_loss", "best_loss", "rel_mse", "psnr_db", "steps")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Every job directory of a sweep (Hydra writes each job's overrides into it), in job order."""
    dirs = [path.parent.parent for path in sweep_dir.rglob(".hydra/overrides.yaml")]
    # numbered parts in numeric order (job 10 after job 9), named ones after them by name
    return sorted(dirs, key=lambda path: [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.parts])


def read_job(job_dir: Path, objective: str) -> dict:
    """One job's row: its parameters (from its overrides), status, objective and metrics."""
    params = {}
    for override in OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")):
        key, _, value = str(override).partition("=")
        if not key.startswith(("hydra", "~")):
            params[key.lstrip("+")] = value
    metrics_file = job_dir / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    status = metrics.get("status", "missing")
    if status == "completed" and objective not in metrics:
        raise SystemExit(f"sweep_report: error: --objective: job {job_dir} has no metric '{objective}'")
    value = metrics.get(objective)
    finite = status == "completed" and isinstance(value, (int, float)) and math.isfinite(value)
    return {
        "job": job_dir.name,
        "status": status,
        "objective": float(value) if finite else math.inf,
        **{name: metrics.get(name, "") for name in METRICS},
        "params": params,
        "reason": metrics.get("reason", "" if metrics else "no metrics.json: the job crashed or is still running"),
    }


def swept(rows: Sequence[dict]) -> list[str]:
    """The parameters that differ between jobs, in the order they first appear."""
    names = list(dict.fromkeys(name for row in rows for name in row["params"]))
    return [name for name in names if len({row["params"].get(name) for row in rows}) > 1]


def table(rows: Sequence[dict], objective: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells, best objective first (failed jobs, at inf, last)."""
    params = swept(rows)
    header = ["job", "status", objective, *params, *(m for m in METRICS if m != objective), "reason"]
    cells = []
    for row in sorted(rows, key=lambda row: row["objective"]):
        values = [row["job"], row["status"], row["objective"], *(row["params"].get(p, "") for p in params)]
        values += [row[m] for m in METRICS if m != objective] + [row["reason"]]
        cells.append([_cell(value) for value in values])
    return header, cells


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def markdown(header: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells]
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[dict], param: str, objective: str, path: Path) -> None:
    """Objective against one parameter: a log axis for positive numbers spanning a decade or more,
    evenly spaced categories for anything else."""
    done = [row for row in rows if math.isfinite(row["objective"]) and param in row["params"]]
    values = [row["params"][param] for row in done]
    objectives = [row["objective"] for row in done]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    numbers = _numbers(values)
    if numbers is not None:
        ax.scatter(numbers, objectives)
        if min(numbers) > 0 and max(numbers) >= 10 * min(numbers):
            ax.set_xscale("log")
    else:
        categories = sorted(set(values))
        ax.scatter([categories.index(value) for value in values], objectives)
        ax.set_xticks(range(len(categories)), categories)
    failed = len(rows) - len(done)
    title = f"{len(done)} jobs" + (f", {failed} failed (not shown)" if failed else "")
    ax.set(xlabel=param, ylabel=objective, title=title)
    if objectives and min(objectives) > 0:
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _numbers(values: Sequence[str]) -> list[float] | None:
    try:
        return [float(value) for value in values]
    except ValueError:
        return None


def report(sweep_dir: Path, objective: str = "final_loss", out: Path | None = None) -> list[list[str]]:
    """Write ``report.csv``, ``report.md`` and the plots for ``sweep_dir``; return the table's cells."""
    out = out or sweep_dir
    rows = [read_job(job_dir, objective) for job_dir in job_dirs(sweep_dir)]
    if not rows:
        raise SystemExit(f"sweep_report: error: no jobs under {sweep_dir} (expected <job>/.hydra/overrides.yaml)")
    header, cells = table(rows, objective)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "report.csv", "w", newline="") as file:
        csv.writer(file).writerows([header, *cells])
    (out / "report.md").write_text(markdown(header, cells))
    for param in swept(rows):
        plot(rows, param, objective, out / f"objective_vs_{param.replace('/', '_')}.png")
    return [header, *cells]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep's directory (hydra.sweep.dir)")
    parser.add_argument("--objective", default="final_loss", help="metric of metrics.json to sort by, lowest first")
    parser.add_argument("--out", type=Path, help="where to write the report (default: SWEEP_DIR)")
    args = parser.parse_args(argv)
    header, *cells = report(args.sweep_dir, args.objective, args.out)
    sys.stdout.write(markdown(header, cells))


if __name__ == "__main__":
    main()
