"""Choosing the precision from the device that trains, and describing that device."""

from __future__ import annotations

import subprocess
import sys

import keras
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st

from conftest import ROOT
from convlearn import perf
from convlearn.errors import ConvlearnError

AVX2_CPU = perf.Device("CPU", "some CPU", flags=frozenset({"avx2", "fma"}))
GPUS = {  # compute capabilities of real GPU generations
    "Tesla P100": (6, 0), "Tesla V100": (7, 0), "T4": (7, 5), "A100": (8, 0), "RTX 4090": (8, 9), "H200": (9, 0),
}

requires_gpu = pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="needs a GPU")


@pytest.fixture
def keep_policy():
    """set_precision sets Keras' global dtype policy; later tests must get float32 models again."""
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


def gpu(name: str) -> perf.Device:
    return perf.Device("GPU", name, capability=GPUS[name])


@pytest.mark.parametrize(
    "name, bf16, fp16",
    [("Tesla P100", False, False), ("Tesla V100", False, True), ("T4", False, True), ("A100", True, True),
     ("RTX 4090", True, True), ("H200", True, True)],
)
def test_gpu_precisions_follow_compute_capability(name, bf16, fp16):
    device = gpu(name)
    assert perf.precision_refusal("float32", device) is None
    assert (perf.precision_refusal("bf16", device) is None) == bf16
    assert (perf.precision_refusal("fp16", device) is None) == fp16


def test_refusal_names_the_gpu_and_what_it_lacks():
    refusal = perf.precision_refusal("bf16", gpu("T4"))
    assert refusal == (
        "'bf16' needs a GPU of compute capability 8.0 or higher and T4 has 7.5, so it would run slower than "
        "float32; use trainer.precision=float32"
    )
    assert "has unknown" in perf.precision_refusal("fp16", perf.Device("GPU", "mystery GPU"))


@pytest.mark.parametrize(
    "flags, bf16, fp16",
    [({"avx2"}, False, False), ({"avx512_bf16"}, True, False), ({"amx_bf16", "amx_fp16"}, True, True),
     ({"avx512_fp16"}, False, True)],
)
def test_cpu_precisions_follow_its_instructions(flags, bf16, fp16):
    device = perf.Device("CPU", "cpu", flags=frozenset(flags))
    assert (perf.precision_refusal("bf16", device) is None) == bf16
    assert (perf.precision_refusal("fp16", device) is None) == fp16
    assert perf.precision_refusal("float32", device) is None


@given(st.text(min_size=1).filter(lambda name: name not in perf.POLICIES))
def test_unknown_precisions_are_refused_on_every_device(name):
    for device in (AVX2_CPU, gpu("H200")):
        assert perf.precision_refusal(name, device).startswith("must be one of float32, bf16, fp16")


def test_set_precision_refuses_with_one_line_and_keeps_the_policy(keep_policy):
    keras.config.set_dtype_policy("float32")
    with pytest.raises(ConvlearnError, match=r"^trainer\.precision: 'fp16' needs a CPU with float16 .*float32$"):
        perf.set_precision("fp16", AVX2_CPU)
    assert keras.config.dtype_policy().name == "float32"
    perf.set_precision("fp16", gpu("A100"))
    assert keras.config.dtype_policy().name == "mixed_float16"


def conv_stack(**conv) -> keras.Model:
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, **conv), keras.layers.Conv2D(1, 1)])


@pytest.mark.parametrize(("model", "remapping"), [
    (lambda: conv_stack(activation="relu"), True),
    (lambda: conv_stack(activation="leaky_relu"), False),
    (lambda: keras.Sequential([conv_stack(), keras.layers.LeakyReLU()]), False),
    (lambda: keras.Sequential([keras.Input((8, 8, 1)), conv_stack(activation="leaky_relu")]), False),
])
def test_the_remapper_is_off_only_for_models_with_leaky_relus(model, remapping):
    try:
        perf.set_remapping(model())
        assert tf.config.optimizer.get_experimental_options()["remapping"] is remapping
    finally:
        tf.config.optimizer.set_experimental_options({"remapping": True})  # TensorFlow's default, for later tests


def test_fp16_wraps_the_optimizer_in_loss_scaling_once():
    adam = keras.optimizers.Adam(1e-3)
    assert perf.loss_scaled(adam, "float32") is adam and perf.loss_scaled(adam, "bf16") is adam
    scaled = perf.loss_scaled(adam, "fp16")
    assert isinstance(scaled, keras.optimizers.LossScaleOptimizer) and scaled.inner_optimizer is adam
    assert perf.loss_scaled(scaled, "fp16") is scaled


def test_the_device_description_is_what_metrics_record(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu avx2\n")
    assert perf.cpu_name(cpuinfo) == "AMD EPYC 7B13"
    assert perf.cpu_name(tmp_path / "missing")  # the platform module's name, never empty
    assert gpu("H200").describe() == {"kind": "GPU", "name": "H200", "count": 1, "compute_capability": "9.0"}
    assert AVX2_CPU.describe() == {"kind": "CPU", "name": "some CPU", "count": 1}
    if not tf.config.list_physical_devices("GPU"):
        monkeypatch.setattr(perf, "cpu_flags", lambda: {"avx512_bf16"})
        device = perf.training_device()
        assert device.kind == "CPU" and device.flags == {"avx512_bf16"} and device.name == perf.cpu_name()


@requires_gpu
def test_the_training_device_is_the_gpu_with_its_compute_capability():
    device = perf.training_device()
    assert device.kind == "GPU" and device.count == len(tf.config.get_visible_devices("GPU"))
    assert device.capability is not None and device.capability >= (3, 5)


@requires_gpu
def test_the_trainer_turns_memory_growth_on_before_the_gpu_is_used():
    # In a new process: memory growth can only be set before TensorFlow first uses the GPU, which
    # this test process has long done.
    code = (
        "import tensorflow as tf; import train; from convlearn.training import Trainer; Trainer(steps=1); "
        "tf.constant(1.0) + 1; "
        "print(all(tf.config.experimental.get_memory_growth(g) for g in tf.config.get_visible_devices('GPU')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.stdout.strip().splitlines()[-1] == "True", result.stderr[-2000:]
