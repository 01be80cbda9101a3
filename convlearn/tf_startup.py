"""What must be settled before TensorFlow loads: which of its start-up lines a run hides (and why
that takes more than a log level), and which allocator gives its CPU tensors their memory.

``TF_CPP_MIN_LOG_LEVEL=2`` (set here unless the user chose a level) hides TensorFlow's C++ INFO and
WARNING lines, but only from the moment TensorFlow's logging initializer has read it. The full
``tensorflow`` wheel (built for CUDA) logs earlier than that on a machine without an NVIDIA
driver: while ``import tensorflow`` loads its libraries, their CUDA constructors look for
``libcudart`` and log ``cudart_stub.cc] Could not find cuda drivers on your machine`` at INFO,
once per library, each after absl's ``WARNING: All log messages before absl::InitializeLog() is
called are written to STDERR``. No environment variable reaches absl at that point, so on such a
machine the first import of TensorFlow runs with the process's stderr passed through a filter
that drops exactly the absl lines below the chosen level (and the banner); errors, Python warnings
and everything else pass. Later, listing the devices would call ``cuInit`` and log its failure
(``cuda_platform.cc] failed call to cuInit ... (303)``) as an ERROR; ``TF_ENABLED_DEVICE_TYPES=CPU``
keeps TensorFlow from asking for a CUDA device at all there.

Both apply only where no GPU can be used: Linux without ``/proc/driver/nvidia`` (the NVIDIA
driver), without ``/dev/kfd`` (ROCm) and without a TensorFlow device plugin. On a machine with a
driver the same lines mean a broken CUDA setup (its GPU would go unused), so they stay visible.

Without oneDNN (which TensorFlow turns on by default only on CPUs with AVX-512 VNNI or AMX, and
which then pools CPU memory with its own allocator), TensorFlow's CPU allocator is a plain
``malloc`` per tensor. A full-frame step of the notebook's model allocates and frees several 48 MB
activations (the 100-filter 1x1 block on a 300x400 image); glibc serves blocks that large with a
fresh ``mmap`` every time and the kernel zero-fills each of their pages again at first touch.
TensorFlow's own BFC allocator keeps freed memory in a pool and hands it out again: on a 2-core AMD
EPYC with AVX2 the notebook's full-frame step ran 1.2-1.4x as fast with it (graph and XLA alike,
the same losses bit for bit, no higher peak memory). TensorFlow reads ``TF_CPU_ALLOCATOR_USE_BFC``
once, when it makes the allocator, so :func:`pool_cpu_memory` sets it (unless the user chose)
before TensorFlow loads.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import re
import site
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType

# What the user sees of TensorFlow's C++ logs unless they chose otherwise: errors only.
DEFAULT_LOG_LEVEL = "2"
# absl's banner before its first line, and the prefix of each absl line by severity (I0000
# 00:00:1796247896.096008   13806 cudart_stub.cc:31] ...): severity, month and day, time (before
# absl knows the time zone: the seconds since 1970), thread, file:line.
ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ABSL_LINE = r"{severities}\d{{4}} \d\d:\d\d:\d+\.\d+ +\d+ [^ \]]+:\d+\] "
SEVERITIES = "IW"  # absl's INFO and WARNING, TF_CPP_MIN_LOG_LEVEL 0 and 1
# The filter between TensorFlow and stderr: a separate process, so that what it has been given
# still reaches stderr if the import crashes (an abort for a missing CPU instruction, say).
FILTER = """\
import re, sys
drop = re.compile(sys.argv[1].encode())
for line in sys.stdin.buffer:
    if not drop.match(line):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""


def gpu_possible(root: Path = Path("/"), plugin_dirs: Sequence[str] | None = None) -> bool:
    """Whether TensorFlow could find a GPU on this machine: anything but Linux (Metal on macOS,
    DirectML elsewhere), an NVIDIA driver, ROCm's device, or a TensorFlow device plugin."""
    if sys.platform != "linux":
        return True
    if (root / "proc/driver/nvidia").exists() or (root / "dev/kfd").exists():
        return True
    dirs = plugin_dirs if plugin_dirs is not None else [*sys.path, *site.getsitepackages()]
    return any((Path(d) / "tensorflow-plugins").is_dir() for d in dirs)


def early_lines(min_log_level: str) -> re.Pattern[str] | None:
    """The lines TensorFlow prints before its log level applies that ``min_log_level`` hides
    (a ``TF_CPP_MIN_LOG_LEVEL`` value), or None when it hides none of them."""
    try:
        level = int(min_log_level)
    except ValueError:
        return None  # TensorFlow reads an unparsable level as no level
    hidden = SEVERITIES[: max(0, min(level, len(SEVERITIES)))]
    if not hidden:
        return None
    return re.compile(f"(?:{re.escape(ABSL_BANNER)}$|{ABSL_LINE.format(severities=f'[{hidden}]')})")


@contextlib.contextmanager
def stderr_without(lines: re.Pattern[str]) -> Iterator[None]:
    """Pass everything written to file descriptor 2 (C++ code's stderr too) through a filter
    process that drops the lines matching ``lines``; as it is where that cannot be set up."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    try:
        filter_ = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", FILTER, lines.pattern], stdin=subprocess.PIPE, stdout=saved, stderr=saved
        )
    except OSError:
        os.close(saved)
        yield
        return
    os.dup2(filter_.stdin.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        filter_.stdin.close()
        filter_.wait()
        os.close(saved)


class _FilteredLoader(importlib.abc.Loader):
    """Runs a module's own loader with stderr filtered, and leaves the module that loader."""

    def __init__(self, loader: importlib.abc.Loader, lines: re.Pattern[str]) -> None:
        self.loader, self.lines = loader, lines

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = module.__spec__.loader = self.loader
        with stderr_without(self.lines):
            self.loader.exec_module(module)


class FilteredTensorFlowImport(importlib.abc.MetaPathFinder):
    """The first ``import tensorflow`` of the process (whoever asks: convlearn, Keras, a script)
    with its early lines filtered. The top package's import loads all of TensorFlow's libraries."""

    def __init__(self, lines: re.Pattern[str]) -> None:
        self.lines = lines

    def find_spec(self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # once; and the search below must not find this finder again
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader, self.lines)
        return spec


def quiet_start() -> None:
    """Set TensorFlow's log level (unless the user chose one) and, where no GPU can be used, keep
    its start-up lines about the missing CUDA driver off stderr. Call before TensorFlow loads."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", DEFAULT_LOG_LEVEL)
    if gpu_possible():
        return
    os.environ.setdefault("TF_ENABLED_DEVICE_TYPES", "CPU")
    lines = early_lines(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    if lines is not None and "tensorflow" not in sys.modules:
        sys.meta_path.insert(0, FilteredTensorFlowImport(lines))


def pool_cpu_memory() -> None:
    """Have TensorFlow give CPU tensors memory from its BFC pool (see the module's docstring),
    unless ``TF_CPU_ALLOCATOR_USE_BFC`` is already set. Call before TensorFlow loads."""
    os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")


def keep_streams_open() -> None:
    """absl (TensorFlow's logging) makes a handler at import on the sys.stderr of that moment and, when
    logging shuts its handlers down (Hydra reconfigures logging at every run), closes that stream
    unless it is still sys.stderr. Where sys.stderr is swapped (pytest's captures, notebooks), a later
    run closed a stream that was in use. Its handler is attached to no logger, so pointing it at the
    process's own stderr, which it never closes, changes no output."""
    from absl import logging as absl_logging  # light: absl, not TensorFlow

    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__
