"""convlearn: can a conv net learn this image transform, and what kernels does it learn?"""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

from convlearn.tf_startup import keep_streams_open, quiet_start

# TensorFlow's C++ start-up lines (CUDA stubs, CPU instructions) are noise on every run; set up
# before TensorFlow loads (convlearn's modules import it lazily, after this).
quiet_start()
keep_streams_open()
