"""convlearn: can a conv net learn this image transform, and what kernels does it learn?"""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

import os
import sys

# TensorFlow's C++ start-up lines (CUDA stubs, CPU instructions) are noise on every run; set before
# TensorFlow loads, and only where the user has not chosen a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _keep_streams_open() -> None:
    """absl (TensorFlow's logging) makes a handler at import on the sys.stderr of that moment and, when
    logging shuts its handlers down (Hydra reconfigures logging at every run), closes that stream
    unless it is still sys.stderr. Where sys.stderr is swapped (pytest's captures, notebooks), a later
    run closed a stream that was in use. Its handler is attached to no logger, so pointing it at the
    process's own stderr, which it never closes, changes no output."""
    from absl import logging as absl_logging

    absl_logging.get_absl_handler().python_handler.stream = sys.__stderr__


_keep_streams_open()
