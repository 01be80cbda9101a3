"""Where a result came from: the code, the libraries and the device that produced it.

``metrics.json`` carries this next to the numbers, so that a result read months later (or one
that differs from a colleague's) can be traced to convlearn's version and git commit, the
TensorFlow, Keras and Hydra it ran with, and the device that trained.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import hydra
import keras
import tensorflow as tf

import convlearn
from convlearn.perf import training_device

# The checkout convlearn runs from, if it runs from one (not from an installed copy).
CHECKOUT = Path(convlearn.__file__).resolve().parents[1]


def git_state(root: Path = CHECKOUT) -> dict:
    """The commit of the git checkout at ``root`` and whether tracked files differ from it; empty
    where ``root`` is no checkout's top (an installed copy) or git is missing."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() != root.resolve():
            return {}  # a folder inside some other repository
        return {"git_commit": git("rev-parse", "HEAD"), "git_dirty": bool(git("status", "--porcelain", "-uno"))}
    except (OSError, subprocess.SubprocessError):
        return {}


def provenance() -> dict:
    """Versions, commit and training device, for ``metrics.json``."""
    return {
        "convlearn": convlearn.__version__,
        **git_state(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "hydra": hydra.__version__,
        "device": training_device().describe(),
    }
