import keras
import numpy as np

from convlearn import models


def test_seed_model_is_the_notebooks_13_layers():
    model = models.seed()
    layers = models.conv_layers(model)
    assert len(layers) == 13
    assert [l.filters for l in layers] == [2, 100, 1] + [4] * 9 + [1]
    assert [tuple(l.kernel_size) for l in layers] == [(2, 2), (1, 1), (1, 1)] + [(3, 3)] * 10
    assert all(l.activation is keras.activations.elu for l in layers)
    assert model.count_params() == 1672
    # Receptive field 22: 1 (2x2) + 10 * 2 (3x3) pixels of shrink, like edge_blur's 1 + 5 * 4.
    assert models.footprint(model).shrink == (21, 21)
    assert model(np.zeros((1, 30, 31, 1), np.float32)).shape == (1, 9, 10, 1)


def test_linear_model_is_one_kernel_without_activation():
    model = models.linear(kernel_size=5, use_bias=False)
    (layer,) = models.conv_layers(model)
    assert layer.kernel.shape == (5, 5, 1, 1) and not layer.use_bias
    kernel = np.random.default_rng(0).normal(size=(5, 5, 1, 1)).astype(np.float32)
    layer.kernel.assign(kernel)
    impulse = np.zeros((1, 9, 9, 1), np.float32)
    impulse[0, 4, 4, 0] = 1.0
    # Cross-correlation: the response to an impulse is the kernel flipped.
    assert np.allclose(model(impulse)[0, ..., 0], kernel[::-1, ::-1, 0, 0])


def test_layer_names_are_stable_across_builds():
    assert [l.name for l in models.conv_layers(models.seed())] == [f"conv_{i:02d}" for i in range(13)]
    assert [l.name for l in models.conv_layers(models.seed())] == [f"conv_{i:02d}" for i in range(13)]
