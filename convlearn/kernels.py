"""The kernel library: classic image operators that targets are built from.

Kernels are applied by cross-correlation (as ``tf.nn.conv2d`` does), not flipped convolution.
"""

import numpy as np


def edge_vertical() -> np.ndarray:
    """The notebook's vertical-edge kernel ``[[1, -1], [1, -1]]``."""
    return np.array([[1.0, -1.0], [1.0, -1.0]])


def edge_horizontal() -> np.ndarray:
    """The notebook's horizontal-edge kernel ``[[1, 1], [-1, -1]]``."""
    return np.array([[1.0, 1.0], [-1.0, -1.0]])


def gaussian_273() -> np.ndarray:
    """The notebook's 5x5 integer Gaussian divided by 273 (sums to 1)."""
    weights = [[1, 4, 7, 4, 1], [4, 16, 26, 16, 4], [7, 26, 41, 26, 7], [4, 16, 26, 16, 4], [1, 4, 7, 4, 1]]
    return np.array(weights, dtype=np.float64) / 273
