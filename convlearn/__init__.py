"""convlearn: can a conv net learn this image transform, and what kernels does it learn?"""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

import os

# TensorFlow's C++ start-up lines (CUDA stubs, CPU instructions) are noise on every run; set before
# TensorFlow loads, and only where the user has not chosen a level.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
