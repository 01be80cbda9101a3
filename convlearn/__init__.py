"""convlearn: can a conv net learn this image transform, and what kernels does it learn?"""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)

from convlearn.tf_startup import keep_streams_open, pool_cpu_memory, quiet_start

# TensorFlow's C++ start-up lines (CUDA stubs, CPU instructions) are noise on every run, and its
# default CPU allocator slows full-frame steps down; both are set up before TensorFlow loads
# (convlearn's modules import it lazily, after this).
quiet_start()
pool_cpu_memory()
keep_streams_open()
