"""Which compiled step, XLA's or TensorFlow's graph, trains a workload faster on this machine,
measured once and remembered for every later run.

``trainer.jit_compile=auto`` times both steps on the first batch (:func:`convlearn.perf.fastest_step`)
because which one wins depends on the CPU and on the model and image (XLA won 1.3x on the
notebook's 300x400 image on a 2-core AMD EPYC and was slower on the tests' 40x48 one there). A timing
is a measurement, though: two runs of one seed could pick different steps where the two are
close, and the two steps round differently, so the runs would end with different numbers. So the
first run of a workload on a machine records its pick in a small JSON file, and every later run
of it reads the pick instead of timing again: the same seed gives the same result, and only the
first run pays for the timing and for compiling the step it does not take.

A workload is what decides the race and nothing else: the machine (CPU, GPUs, TensorFlow's
version, the environment variables that change its kernels, the op thread pools), the layers and
their settings (not their names, initializers or seeds), the optimizer's class and the batch's
shapes. The file lives in ``$CONVLEARN_CACHE_DIR``, else ``$XDG_CACHE_HOME/convlearn``, else
``~/.cache/convlearn``; deleting it (or an entry) makes the next run measure again.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import tensorflow as tf

from convlearn.perf import training_device

try:  # POSIX: concurrent runs (a sweep's jobs) take turns at the file
    import fcntl
except ImportError:  # Windows: the last writer wins
    fcntl = None

log = logging.getLogger("convlearn")

FILE_NAME = "compiled_steps.json"
# Environment variables that change which kernels TensorFlow or XLA run (oneDNN, the CPU allocator,
# XLA's own flags): a pick measured under one setting says nothing about another.
KERNEL_SETTINGS = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPU_ALLOCATOR_USE_BFC", "XLA_FLAGS", "TF_XLA_FLAGS")
# Layer settings that do not change a step's speed: a seed sweep is one workload.
UNTIMED_SETTINGS = ("name", "seed")


def cache_dir() -> Path:
    """The folder of the remembered picks (see the module's docstring)."""
    if os.environ.get("CONVLEARN_CACHE_DIR"):
        return Path(os.environ["CONVLEARN_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "convlearn"


def workload(model: keras.Model, optimizer: keras.optimizers.Optimizer, inputs: tf.Tensor, targets: tf.Tensor) -> dict:
    """Everything that decides whether XLA or the graph runs this training step faster here."""
    pools = tf.config.threading
    return {
        "device": training_device().describe(),
        "tensorflow": tf.__version__,
        "settings": {name: os.environ[name] for name in KERNEL_SETTINGS if name in os.environ},
        "threads": [pools.get_intra_op_parallelism_threads(), pools.get_inter_op_parallelism_threads()],
        "model": _layers(model),
        "optimizer": type(optimizer).__name__,
        "batch": [[list(tensor.shape), tensor.dtype.name] for tensor in (inputs, targets)],
    }


def _layers(model: keras.Model) -> list:
    """The model's layers in order, each as its class and its settings that bear on speed."""
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.append(_layers(layer))
            continue
        settings = {key: value for key, value in layer.get_config().items()
                    if key not in UNTIMED_SETTINGS and not key.endswith("initializer")}
        layers.append([type(layer).__name__, settings])
    return layers


def workload_key(described: dict) -> str:
    """A short, stable name for a :func:`workload` (a hash of its JSON)."""
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def recall(described: dict, folder: Path | None = None) -> bool | None:
    """The remembered pick for this workload (True: XLA), or None when none was measured here."""
    return _pick(_read(cache_file(folder)).get(workload_key(described)))


def remember(described: dict, pick: bool, rates: dict[bool, float], folder: Path | None = None) -> bool:
    """Record ``pick`` (True: XLA) for this workload, with the ``rates`` (steps/s by pick) it was
    measured at, and return the pick later runs will use: a pick another run recorded meanwhile
    (a sweep's jobs start together) is kept, so that every run of the workload agrees. Where the
    file cannot be written the pick still holds for this run, and a warning says so."""
    path = cache_file(folder)
    key = workload_key(described)
    try:
        with _locked(path):
            picks = _read(path)
            recorded = _pick(picks.get(key))
            if recorded is not None:
                return recorded
            picks[key] = {
                "jit_compile": pick,
                "steps_per_sec": {"xla": round(rates[True], 3), "graph": round(rates[False], 3)},
                "measured": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "device": described["device"]["name"],
                "batch": described["batch"][0][0],
            }
            _write(path, picks)
    except OSError as err:
        log.warning("trainer.jit_compile=auto: cannot record the pick in %s (%s); the next run times the steps again",
                    path, err.strerror or err)
    return pick


def _pick(entry: object) -> bool | None:
    """An entry's pick, or None for a missing or malformed entry."""
    pick = entry.get("jit_compile") if isinstance(entry, dict) else None
    return pick if isinstance(pick, bool) else None


def cache_file(folder: Path | None = None) -> Path:
    """The file of the remembered picks, in ``folder`` (default: :func:`cache_dir`)."""
    return (folder or cache_dir()) / FILE_NAME


def _read(path: Path) -> dict:
    """The file's picks; none where it is missing, and none (with a warning) where it is damaged."""
    try:
        picks = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        log.warning("trainer.jit_compile=auto: ignoring %s, which cannot be read (%s)", path, err)
        return {}
    return picks if isinstance(picks, dict) else {}


def _write(path: Path, picks: dict) -> None:
    """Replace the file in one step, so that a reader never sees half of it."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        json.dump(picks, handle, indent=1, sort_keys=True)
    os.replace(handle.name, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold the folder's lock (where the OS has one) while reading and rewriting ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield
