import numpy as np
import pytest
import tensorflow as tf

from convlearn import geometry
from convlearn.errors import ConvlearnError


def _valid_conv(image, size):
    kernel = tf.ones((*size, 1, 1))
    return tf.nn.conv2d(image[None, ..., None], kernel, 1, "VALID")[0, ..., 0].numpy()


def test_valid_footprints_compose():
    two = geometry.conv((2, 2))
    five = geometry.conv((5, 5))
    total = geometry.chain([two, five, five])
    assert total.shrink == (9, 9) and total.shift2 == (9, 9) and total.extent == (10, 10)


def test_same_padding_keeps_size_and_even_kernels_shift_half_a_pixel():
    assert geometry.conv((3, 3), "same").shrink == (0, 0)
    assert geometry.conv((3, 3), "same").shift2 == (0, 0)
    assert geometry.conv((2, 4), "same").shift2 == (1, 1)
    assert geometry.conv((3, 3), "valid", dilation=(2, 2)).extent == (5, 5)


def test_align_crops_the_same_input_pixels():
    """A 3x3 and a 7x7 box sum over a ramp agree at the centre of each output pixel."""
    image = np.add.outer(np.arange(20.0), 10 * np.arange(24.0))
    small, large = _valid_conv(image, (3, 3)) / 9, _valid_conv(image, (7, 7)) / 49
    crops = geometry.align(geometry.conv((3, 3)), geometry.conv((7, 7)), image.shape)
    # On a linear ramp a centred box mean equals the centre pixel, so the crops must match.
    assert np.allclose(small[crops.model], large[crops.target])
    assert np.allclose(image[crops.inputs], large[crops.target])
    assert crops.shape == (14, 18)


def test_align_refuses_half_pixel_shifts_and_tiny_images():
    with pytest.raises(ConvlearnError, match="half a pixel apart"):
        geometry.align(geometry.conv((2, 2)), geometry.conv((3, 3)), (20, 20))
    with pytest.raises(ConvlearnError, match="image is too small for the model"):
        geometry.align(geometry.conv((9, 9)), geometry.conv((3, 3)), (8, 30))
