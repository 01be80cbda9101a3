"""convlearn: can a conv net learn this image transform, and what kernels does it learn?"""
