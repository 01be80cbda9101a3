"""Runtime settings that decide how fast training runs, and the numbers that show how fast it is.

Three settings must be applied before TensorFlow does any work: the size of its op thread pools
(fixed once the runtime starts), GPU memory growth (fixed once a GPU is in use) and the Keras dtype
policy (read when layers are built); :func:`configure_tensorflow` applies them, and the run pipeline
calls it before building anything. A reduced precision only pays off on a device that computes in
it: a GPU from compute capability 8.0 (bfloat16) or 7.0 (float16), a CPU with bfloat16 or float16
instructions; elsewhere TensorFlow emulates it, slower than float32, so asking for it there is
refused rather than quietly slowing the run down. The device that trains is the first visible GPU,
else the CPU (:func:`training_device`); ``metrics.json`` records it.

Whether XLA or TensorFlow's own graph runs a step faster depends on the CPU (for the notebook's
model XLA was 1.3x faster on one 2-core machine and 2.4x slower on another), so
``trainer.jit_compile=auto`` times both on the first batch (:func:`fastest_step`) and keeps the
faster (once per workload and machine: :mod:`convlearn.step_cache`).

The counting helpers (FLOPs of a conv stack, a plain matmul's GFLOP/s, peak memory) serve
``scripts/benchmark.py``: they put a model's speed next to what the hardware can do.
"""

from __future__ import annotations

import contextlib
import platform
import resource
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from convlearn.errors import ConvlearnError
from convlearn.models import conv_layers

# trainer.precision -> Keras dtype policy. Variables stay float32 under the mixed policies.
POLICIES = {"float32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
# CPU flags (as /proc/cpuinfo spells them) of instructions that compute in each reduced precision.
CPU_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}
# The lowest GPU compute capability with tensor cores for each reduced precision (TensorFlow's own
# mixed-precision check warns below 7.0 for float16; bfloat16 arrived with Ampere, 8.0).
GPU_CAPABILITY = {"bf16": (8, 0), "fp16": (7, 0)}


@dataclass(frozen=True)
class Device:
    """The device that trains: the first visible GPU (``count`` of them visible), else the CPU.
    ``capability`` is the lowest compute capability of the visible GPUs; ``flags`` the CPU's."""

    kind: str  # "GPU" or "CPU"
    name: str
    count: int = 1
    capability: tuple[int, int] | None = None
    flags: frozenset[str] = frozenset()

    def describe(self) -> dict:
        """What ``metrics.json`` records about the device."""
        described: dict = {"kind": self.kind, "name": self.name, "count": self.count}
        if self.capability is not None:
            described["compute_capability"] = ".".join(map(str, self.capability))
        return described


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags; empty where ``/proc/cpuinfo`` does not exist (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name, where ``/proc/cpuinfo`` says it, else what Python's platform module says."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def enable_memory_growth() -> None:
    """Let every visible GPU's memory grow as needed instead of TensorFlow taking all of it at the
    start, so that parallel jobs on one GPU fit next to each other. Where a GPU is already in use
    in this process, its setting is kept."""
    for gpu in tf.config.get_visible_devices("GPU"):
        with contextlib.suppress(RuntimeError, ValueError):  # the runtime is already up
            tf.config.experimental.set_memory_growth(gpu, True)


def training_device() -> Device:
    """The device TensorFlow trains on in this process: the visible GPUs, else the CPU."""
    gpus = tf.config.get_visible_devices("GPU")
    if not gpus:
        return Device("CPU", cpu_name(), flags=frozenset(cpu_flags()))
    details = [tf.config.experimental.get_device_details(gpu) for gpu in gpus]
    capabilities = [tuple(d["compute_capability"]) for d in details if d.get("compute_capability")]
    return Device(
        "GPU", details[0].get("device_name", gpus[0].name), len(gpus), min(capabilities) if capabilities else None
    )


def precision_refusal(precision: str, device: Device) -> str | None:
    """Why ``device`` cannot train in ``precision`` at full speed (the one-line reason), or None."""
    if precision not in POLICIES:
        return f"must be one of {', '.join(POLICIES)}, got '{precision}'"
    if precision == "float32":
        return None
    if device.kind == "GPU":
        needed = GPU_CAPABILITY[precision]
        if device.capability is None or device.capability < needed:
            have = ".".join(map(str, device.capability)) if device.capability else "unknown"
            return (
                f"'{precision}' needs a GPU of compute capability {needed[0]}.{needed[1]} or higher and {device.name} "
                f"has {have}, so it would run slower than float32; use trainer.precision=float32"
            )
        return None
    flags = CPU_FLAGS[precision]
    if device.flags.isdisjoint(flags):
        kind = "bfloat16" if precision == "bf16" else "float16"
        return (
            f"'{precision}' needs a CPU with {kind} instructions ({' or '.join(flags)} in /proc/cpuinfo) or a GPU; "
            "this CPU has none and no GPU is visible, so it would run slower than float32; "
            "use trainer.precision=float32"
        )
    return None


def set_precision(precision: str, device: Device | None = None) -> None:
    """Set the Keras dtype policy for models built from now on, if ``device`` (default: the one
    that trains) computes in ``precision``. ``bf16``/``fp16``: layers compute in bfloat16/float16
    with float32 weights; the trainer keeps the loss and the metrics in float32, and scales the
    loss for ``fp16`` (:func:`loss_scaled`)."""
    refusal = precision_refusal(precision, device or training_device())
    if refusal:
        raise ConvlearnError(f"trainer.precision: {refusal}")
    keras.config.set_dtype_policy(POLICIES[precision])


def configure_tensorflow(threads: Sequence[int] | None = None, precision: str = "float32") -> None:
    """Apply a run's process-wide TensorFlow settings (``trainer.threads``, GPU memory growth and ``trainer.precision``).

    Call it first, before TensorFlow runs an op (the thread pools are fixed then) and before a
    model is built (layers read the dtype policy when they are built)."""
    set_threads(threads)
    enable_memory_growth()
    set_precision(precision)


def uses_leaky_relu(model: keras.Model) -> bool:
    """Whether a layer of ``model`` (nested models included) computes a leaky ReLU."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.LeakyReLU) or getattr(layer, "activation", None) is keras.activations.leaky_relu:
            return True
        if isinstance(layer, keras.Model) and uses_leaky_relu(layer):
            return True
    return False


def set_remapping(model: keras.Model) -> None:
    """Turn grappler's remapper (its op fusions) off for a model with leaky ReLUs, on for others.

    With oneDNN (TensorFlow's default on CPUs with AVX-512 VNNI or AMX) the remapper fuses a
    convolution, its bias and a leaky ReLU into one op, but in a training step the leaky ReLU's
    gradient still reads the bias output that the fusion removes: the pass fails, TensorFlow logs
    ``remapper failed: INVALID_ARGUMENT: Mutation::Apply error: fanout ... exist for missing node``
    and keeps the graph without any of the pass's changes. Without the remapper the same graph
    trains, as fast (the can model, 96x96 image: the same steps/s with and without oneDNN), and
    no error is printed. The setting is process-wide, so every run sets it for its own model."""
    tf.config.optimizer.set_experimental_options({"remapping": not uses_leaky_relu(model)})


def float32_output(model: keras.Model) -> None:
    """Under a reduced-precision policy (``trainer.precision`` bf16 or fp16), let the model's last
    layer compute in float32, as Keras' mixed-precision guide advises for a model's output. The
    output is what the loss compares with the target, and bfloat16 keeps 8 significant bits: with
    the last layer in bfloat16, the slowest seed of ``experiment=fast`` needed 212-218 steps to the
    notebook's quality on both images and ended just under it; with it in float32, at most 180, and
    the other seeds moved by a few dozen steps either way (bfloat16 emulated on a CPU without it, so
    steps, not speed; float32 throughout: at most 181). The last layer is the smallest part of the
    notebook's step (4 channels in, 1 out)."""
    if keras.config.dtype_policy().name != "float32" and model.layers:
        model.layers[-1].dtype_policy = "float32"


def loss_scaled(optimizer: keras.optimizers.Optimizer, precision: str) -> keras.optimizers.Optimizer:
    """``optimizer`` wrapped in Keras' dynamic loss scaling for ``fp16`` (float16 gradients of a
    small loss underflow to zero without it); as it is for other precisions or when already wrapped."""
    if precision != "fp16" or isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer
    return keras.optimizers.LossScaleOptimizer(optimizer)


def set_threads(threads: Sequence[int] | None) -> None:
    """Size TensorFlow's op thread pools: ``[intra, inter]`` (0: TensorFlow's choice, all cores);
    ``None`` leaves them alone. The pools are fixed when TensorFlow runs its first op, so a
    different size later in the same process is refused."""
    if threads is None:
        return
    if len(threads) != 2 or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in threads):
        raise ConvlearnError(f"trainer.threads: must be [intra, inter] with integers >= 0 or null, got {list(threads)}")
    intra, inter = threads
    pools = tf.config.threading
    current = [pools.get_intra_op_parallelism_threads(), pools.get_inter_op_parallelism_threads()]
    if current == [intra, inter]:
        return
    try:
        pools.set_intra_op_parallelism_threads(intra)
        pools.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        raise ConvlearnError(
            f"trainer.threads: TensorFlow already runs with {current} threads in this process; {[intra, inter]} "
            "can only be set before its first op (run it in a new process)"
        ) from None


def fastest_step(
    steps: Mapping[Hashable, Callable],
    inputs: tf.Tensor,
    targets: tf.Tensor,
    state: Sequence[tf.Variable],
    rounds: int = 3,
    per_round: int = 2,
    clear: float = 1.2,
) -> tuple[Hashable, dict[Hashable, float]]:
    """Time training steps on the same batch and return the fastest one's key and every one's
    steps/s. Each is traced and compiled first, outside the clock; then up to ``rounds`` turns of
    ``per_round`` steps each, so that a drift of the machine's speed falls on all alike, ending
    early once the fastest is ``clear`` times as fast as every other (steps of one kind vary by a
    few percent on a quiet machine, so one round settles a gap that large, and the turns that are
    not taken save a second or two of start-up). The ``state`` variables (the model's and the
    optimizer's) are put back afterwards: the timing steps leave no trace in the training."""
    saved = [variable.numpy() for variable in state]
    seconds = dict.fromkeys(steps, 0.0)
    done = 0
    try:
        for step in steps.values():
            step(inputs, targets)[0].numpy()
        while done < rounds:
            for key, step in steps.items():
                start = time.perf_counter()
                for _ in range(per_round):
                    float(step(inputs, targets)[0])  # waits for the step to finish
                seconds[key] += time.perf_counter() - start
            done += 1
            fastest, *others = sorted(seconds.values())
            if all(other >= clear * fastest for other in others):
                break
    finally:
        for variable, value in zip(state, saved):
            variable.assign(value)
    rates = {key: done * per_round / max(elapsed, 1e-9) for key, elapsed in seconds.items()}
    return max(rates, key=rates.get), rates


def training_flops(model: keras.Model, input_shape: Sequence[int]) -> int:
    """FLOPs of one training step of a stack of Conv2D layers on ``(batch, height, width,
    channels)`` inputs: ``2*kh*kw*cin*cout`` per output pixel forward, and about twice that again
    backward (gradients of the inputs and of the kernels). Biases and activations are left out."""
    shape = tuple(input_shape)
    forward = 0
    for layer in conv_layers(model):
        out = tuple(layer.compute_output_shape(shape))
        kh, kw = layer.kernel_size
        forward += 2 * kh * kw * shape[-1] * out[-1] * out[0] * out[1] * out[2]
        shape = out
    return 3 * forward


def matmul_gflops(size: int = 1024, repeats: int = 10, dtype: tf.DType = tf.float32) -> float:
    """GFLOP/s of a plain ``size``x``size`` matrix product: a practical ceiling for this machine."""
    a = tf.random.stateless_uniform((size, size), seed=(1, 2), dtype=tf.float32)
    a = tf.cast(a, dtype)
    product = tf.function(lambda x: tf.matmul(x, x))
    product(a).numpy()  # trace and warm up outside the timing
    start = time.perf_counter()
    for _ in range(repeats):
        result = product(a)
    result.numpy()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def peak_rss_mb(status: Path = Path("/proc/self/status")) -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's ``VmHWM`` belongs to the process's own memory map. ``ru_maxrss`` (the fallback where
    there is no ``/proc``) survives ``exec``: a child started by a large parent reports at least
    the parent's size at the fork, which would hide the benchmark rows' own peaks."""
    try:
        lines = status.read_text().splitlines()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return next(int(line.split()[1]) for line in lines if line.startswith("VmHWM:")) / 1024  # in kB
