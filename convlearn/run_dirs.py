"""Taking a run directory before anything is written into it.

Hydra writes a run's ``.hydra/`` files (its config and overrides) into the run dir before the
task starts, so a second run started on the same explicit ``hydra.run.dir`` would overwrite the
first run's record before convlearn could refuse it, and a run dir that cannot be written would
fail inside Hydra with a traceback. :class:`ClaimRunDir`, a Hydra callback (registered in
``configs/hydra/default.yaml``), checks the directory and claims it first, in one line on error.

A claim is the run dir's ``checkpoints/`` folder, created atomically (of two runs, exactly one gets
it), holding a marker ``.claim-<pid>`` until the run writes its first files there
(:func:`convlearn.checkpoints.claim_run_dir`). A marker whose process is gone (a run refused for a
config mistake, a killed one) does not keep the directory taken.

This module imports no TensorFlow: it runs before the config's mistakes are reported.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from convlearn.errors import ConvlearnError

FOLDER = "checkpoints"  # the claim, and later the run's checkpoints
MARKER = ".claim-"


def check_writable(path: Path, key: str) -> None:
    """Refuse a directory that cannot be created or written: a file in its place or on its path,
    or a nearest existing folder without write permission."""
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ConvlearnError(f"{key}: {existing} is a file, so the run dir {path} cannot be created; pick another")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConvlearnError(f"{key}: cannot write in {existing} (permission denied); pick another directory")


def claim(run_dir: Path) -> bool:
    """Claim ``run_dir`` for this process; False if another run holds it (see :func:`held_by_other`)."""
    folder = run_dir / FOLDER
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        if held_by_other(folder):
            return False
        _release_stale(folder)
    marker = folder / f"{MARKER}{os.getpid()}"
    marker.touch()
    atexit.register(_release_unused, marker)
    return True


def _release_unused(marker: Path) -> None:
    """At exit: a claim the run never used (refused for a config mistake) leaves no folder behind."""
    if marker.exists():
        marker.unlink()
        with contextlib.suppress(OSError):
            marker.parent.rmdir()  # only if empty


def held_by_other(folder: Path) -> bool:
    """Whether ``folder`` belongs to another run: it holds that run's files, or the claim marker of
    a process that is still alive. An empty folder, or one holding only markers of processes that
    are gone, is free again."""
    for entry in folder.iterdir():
        if not entry.name.startswith(MARKER):
            return True
        pid = int(entry.name[len(MARKER):])
        if pid != os.getpid() and _alive(pid):
            return True
    return False


def take_over(folder: Path) -> bool:
    """For the run that claimed ``folder`` (this process, through the callback) or finds it free:
    remove the markers and return True; False if another run holds it."""
    if held_by_other(folder):
        return False
    _release_stale(folder)
    return True


def _release_stale(folder: Path) -> None:
    for marker in folder.glob(f"{MARKER}*"):
        marker.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class ClaimRunDir(Callback):
    """Checks that the run (or sweep) directory can be written and, for a new run on an explicit
    ``hydra.run.dir``, claims it before Hydra writes into it.

    Hydra turns an exception in a callback into a warning and goes on, so a refusal exits here,
    with the one line convlearn prints for any user mistake."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))
        explicit = any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)
        # A resumed run writes into its own directory; a generated one is unique to the microsecond.
        new_run = explicit and not OmegaConf.select(config, "trainer.resume", default=False)
        with _exit_on_refusal():
            check_writable(run_dir, "hydra.run.dir")
            if new_run and not claim(run_dir):
                raise ConvlearnError(
                    f"hydra.run.dir: {run_dir} already holds a run; "
                    "continue it with trainer.resume=true or pick a new directory"
                )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with _exit_on_refusal():
            check_writable(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))), "hydra.sweep.dir")


@contextlib.contextmanager
def _exit_on_refusal() -> Iterator[None]:
    try:
        yield
    except ConvlearnError as err:
        sys.exit(f"convlearn: error: {err}")
