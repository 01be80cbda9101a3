"""convlearn: can a conv net learn this image transform, and what kernels does it learn?"""

__version__ = "0.1.0"  # the package's version (pyproject.toml reads it from here)
