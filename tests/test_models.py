import keras
import numpy as np
import pytest

from convlearn import analysis, geometry, models
from convlearn.config import build
from convlearn.errors import ConvlearnError
from convlearn.kernels import edge_horizontal, edge_vertical, gaussian_273
from convlearn.targets import Combine, Convolve, Pipeline, Repeat


def test_notebook_model_is_the_notebooks_13_layers():
    model = models.notebook()
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
    assert [l.name for l in models.conv_layers(models.notebook())] == [f"conv_{i:02d}" for i in range(13)]
    assert [l.name for l in models.conv_layers(models.notebook())] == [f"conv_{i:02d}" for i in range(13)]


def test_yaml_sequential_builds_the_notebooks_model(make_cfg):
    model = build(make_cfg("model=sequential"), "model")
    notebook = models.notebook()
    assert model.count_params() == 1672
    assert [l.kernel.shape for l in models.conv_layers(model)] == [l.kernel.shape for l in models.conv_layers(notebook)]
    assert [l.activation for l in models.conv_layers(model)] == [keras.activations.elu] * 13
    assert models.footprint(model) == models.footprint(notebook)


def test_sequential_takes_padding_dilation_initializer_and_magnitude_layers():
    model = models.sequential(
        [
            dict(filters=3, kernel_size=3, dilation_rate=2, padding="valid", kernel_initializer="ones", use_bias=False),
            dict(type="magnitude"),
            dict(filters=1, kernel_size=2, padding="same", activation="relu"),
        ]
    )
    first, last = models.conv_layers(model)
    assert [first.name, last.name] == ["conv_00", "conv_01"]
    assert np.all(first.kernel.numpy() == 1.0) and tuple(first.dilation_rate) == (2, 2)
    # Dilation 2 spreads the 3x3 taps over 5x5; 'same' and the magnitude layer keep the size.
    fp = models.footprint(model)
    assert fp.shrink == (4, 4) and fp.extent == (6, 6)
    assert model(np.ones((1, 11, 12, 1), np.float32)).shape == (1, 7, 8, 1)


def test_unknown_layer_type_is_a_user_error():
    with pytest.raises(ConvlearnError, match="layer 1 type must be one of \\['conv', 'magnitude'\\], got 'pool'"):
        models.sequential([dict(filters=1, kernel_size=3), dict(type="pool")])


def test_can_receptive_field_grows_with_dilation():
    model = models.can(depth=4, width=4)
    dilations = [tuple(l.dilation_rate) for l in models.conv_layers(model)]
    assert dilations == [(1, 1), (2, 2), (4, 4), (1, 1), (1, 1)]
    # 3x3 at dilations 1, 2, 4, then 1: 2 * (1 + 2 + 4 + 1) = 16 pixels of shrink.
    assert models.footprint(model).shrink == (16, 16)
    assert model(np.zeros((1, 20, 21, 1), np.float32)).shape == (1, 4, 5, 1)
    same = models.can(depth=4, width=4, padding="same", head_kernel_size=2)
    assert models.footprint(same).shrink == (0, 0) and models.footprint(same).extent == (18, 18)


def test_edge_blur_structured_represents_edge_blur_exactly_and_reloads(tmp_path):
    target = Pipeline([Combine([edge_vertical(), edge_horizontal()]), Repeat(Convolve(gaussian_273()), 5)])
    model = models.edge_blur_structured()
    edge, *blurs = models.conv_layers(model)
    edge.kernel.assign(np.stack([edge_vertical(), edge_horizontal()], -1)[:, :, None, :])
    for blur in blurs:
        blur.kernel.assign(gaussian_273()[:, :, None, None])
    assert models.footprint(model) == target.footprint

    image = np.random.default_rng(0).random((30, 32)).astype(np.float32)
    out = model(image[None, ..., None])[0, ..., 0].numpy()
    assert np.allclose(out, target.apply(image), atol=1e-5)

    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert np.array_equal(reloaded(image[None, ..., None])[0, ..., 0].numpy(), out)


def test_deep_linear_shapes():
    model = models.deep_linear(depth=3, width=2, kernel_size=3)
    assert [l.kernel.shape for l in models.conv_layers(model)] == [(3, 3, 1, 2), (3, 3, 2, 2), (3, 3, 2, 1)]
    assert all(l.activation is keras.activations.linear and not l.use_bias for l in models.conv_layers(model))
    assert models.footprint(model).extent == (7, 7)


def test_split_delta_starts_at_opposite_corners_and_composes_to_the_identity(tmp_path):
    model = models.deep_linear(depth=3, width=2, kernel_size=3, kernel_initializer="split_delta")
    taps = [np.unravel_index(np.abs(l.kernel.numpy()[:, :, 0, 0]).argmax(), (3, 3)) for l in models.conv_layers(model)]
    assert taps == [(0, 0), (1, 1), (2, 2)]
    composed = analysis.composed_kernel(model)[:, :, 0, 0]
    assert np.abs(composed - np.pad([[1.0]], 3)).max() < 0.1  # the centred 7x7 identity, plus the noise
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert [l.kernel_initializer.tap for l in models.conv_layers(reloaded)] == [(0, 0), (1, 1), (2, 2)]


@pytest.mark.parametrize("seed", range(5))
def test_zero_mean_edge_filters_sum_to_zero_and_answer_only_edges(seed, tmp_path):
    keras.utils.set_random_seed(seed)
    model = models.notebook(edge_init="zero_mean")
    edge = models.conv_layers(model)[0]
    kernel = edge.kernel.numpy()
    assert np.abs(kernel.sum(axis=(0, 1, 2))).max() < 1e-6 and np.abs(kernel).max(axis=(0, 1, 2)).min() > 0.01
    flat = np.full((1, 6, 6, 1), 0.7, np.float32)
    assert np.abs(edge.convolution_op(flat, edge.kernel).numpy()).max() < 1e-6  # a flat region gives nothing
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    assert isinstance(models.conv_layers(reloaded)[0].kernel_initializer, models.ZeroMean)


def test_auto_sizes_line_the_model_up_with_the_target() -> None:
    odd_kernel = geometry.conv((3, 3))  # e.g. sobel: output centres on whole pixels
    edge_blur = geometry.chain([geometry.conv((2, 2)), geometry.conv((5, 5))])  # centres on half pixels
    mixed = geometry.conv((3, 4))
    for target, edge in [(odd_kernel, (3, 3)), (edge_blur, (2, 2)), (mixed, (3, 2))]:
        model = models.notebook(edge_size="auto", target=target)
        assert tuple(models.conv_layers(model)[0].kernel_size) == edge
        geometry.align(models.footprint(model), target, (60, 60))  # raises if half a pixel apart
        head = models.conv_layers(models.can(depth=3, width=2, head_kernel_size="auto", target=target))[-1]
        assert tuple(head.kernel_size) == edge
    assert tuple(models.conv_layers(models.linear("auto", target=edge_blur))[0].kernel_size) == (6, 6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: models.notebook(edge_size="auto"), "model 'notebook': kernel_size auto needs the target's footprint"),
        (lambda: models.linear("auto", target=geometry.Footprint()), "model.kernel_size: auto takes the target"),
        (
            lambda: models.sequential([{"filters": 1, "kernel_size": "auto"}] * 2, target=geometry.Footprint()),
            "model 'sequential': at most one layer may have kernel_size auto, got layers [0, 1]",
        ),
        (
            lambda: models.sequential(
                [{"filters": 1, "kernel_size": "auto", "dilation_rate": 2}], target=geometry.conv((2, 2))
            ),
            "model 'sequential': layer 0 has kernel_size auto but an even dilation_rate 2",
        ),
    ],
)
def test_auto_size_mistakes_are_one_line_errors(make, message: str) -> None:
    with pytest.raises(ConvlearnError) as info:
        make()
    assert str(info.value).startswith(message)
