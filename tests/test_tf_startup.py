"""TensorFlow's start-up lines on a machine without a GPU: which are hidden, and that nothing else is;
and the CPU allocator convlearn picks before TensorFlow loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

from convlearn import tf_startup
from convlearn.tf_startup import ABSL_BANNER, early_lines, gpu_possible, stderr_without

# The lines TensorFlow 2.21 prints on a machine without an NVIDIA driver (issue #18), and the kind
# that must stay: an absl ERROR, and text that is not absl's.
STUB = ("I0000 00:00:1796247896.096008   13806 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
        "GPU will not be used.")
ONEDNN = "I0000 00:00:1796248192.900555   15003 port.cc:153] oneDNN custom operations are on."
WARNING = "W0000 00:00:1796248192.900555   15003 some_file.cc:12] a warning"
CUINIT = ("E0000 00:00:1796247899.924008   13806 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
          "Failed call to cuInit: UNKNOWN ERROR (303)")
PLAIN = "UserWarning: something Python says"

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the CUDA driver check is Linux's")


@linux_only
def test_only_a_linux_machine_without_any_gpu_stack_counts_as_gpu_less(tmp_path):
    assert not gpu_possible(tmp_path, plugin_dirs=[str(tmp_path)])
    for path in ("proc/driver/nvidia", "dev/kfd", "tensorflow-plugins"):
        (tmp_path / path).mkdir(parents=True)
        assert gpu_possible(tmp_path, plugin_dirs=[str(tmp_path)]), path
        (tmp_path / path).rmdir()


@pytest.mark.parametrize(("level", "hidden"), [
    ("2", {ABSL_BANNER, STUB, ONEDNN, WARNING}), ("1", {ABSL_BANNER, STUB, ONEDNN}), ("3", {ABSL_BANNER, STUB, ONEDNN, WARNING}),
])
def test_the_early_lines_hidden_are_those_below_the_log_level(level, hidden):
    lines = early_lines(level)
    assert {line for line in (ABSL_BANNER, STUB, ONEDNN, WARNING, CUINIT, PLAIN) if lines.match(line)} == hidden


@pytest.mark.parametrize("level", ["0", "", "verbose"])
def test_a_level_that_shows_info_hides_nothing(level):
    assert early_lines(level) is None


def test_the_filter_drops_only_its_lines_even_from_cpp_code(capfd):
    with stderr_without(early_lines("2")):
        # as C++ code writes: to the file descriptor, not through sys.stderr
        os.write(2, f"{ABSL_BANNER}\n{STUB}\n{CUINIT}\n{WARNING.replace('W0000', 'W1202')}\n{PLAIN}\n".encode())
    assert capfd.readouterr().err.splitlines() == [CUINIT, PLAIN]  # a warning with a date is hidden too


def test_without_a_stderr_to_filter_the_code_runs_as_is(monkeypatch):
    def no_stderr(fd):
        raise OSError("bad file descriptor")

    monkeypatch.setattr(tf_startup.os, "dup", no_stderr)
    with stderr_without(early_lines("2")):
        ran = True
    assert ran


@pytest.mark.slow
@pytest.mark.skipif(gpu_possible(), reason="on a machine with a GPU driver these lines are kept, as real problems")
def test_importing_tensorflow_through_convlearn_prints_nothing():
    code = "import convlearn, tensorflow as tf; tf.config.list_physical_devices(); print(tf.reduce_sum(tf.ones(3)).numpy())"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert (result.returncode, result.stdout, result.stderr) == (0, "3.0\n", "")


@pytest.mark.slow
@pytest.mark.parametrize(("chosen", "pooled"), [(None, True), ("false", False)])
def test_tensorflow_gives_cpu_tensors_pooled_memory_unless_the_user_chose_otherwise(chosen, pooled):
    # Only TensorFlow's BFC allocator keeps statistics: the CPU device reports them exactly when it is in use.
    # With oneDNN (TensorFlow's default on CPUs with AVX-512 VNNI or AMX) CPU memory comes from oneDNN's
    # own pooling allocator whatever the variable says, so the check runs without it, on any CPU.
    code = (
        "import convlearn, tensorflow as tf\n"
        "kept = tf.ones([256, 1024])\n"
        "try:\n    print(tf.config.experimental.get_memory_info('CPU:0')['current'] >= kept.shape.num_elements() * 4)\n"
        "except ValueError:\n    print('no pool')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    if chosen is not None:
        env["TF_CPU_ALLOCATOR_USE_BFC"] = chosen
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT, env=env,
                          timeout=120)
    assert done.stdout.split() == (["True"] if pooled else ["no", "pool"])


def test_reconfiguring_logging_never_closes_a_stream_in_use(tmp_path):
    # Hydra reconfigures logging at every run, which shuts down every handler, absl's too; absl's once
    # closed the sys.stderr of its import time, a stream pytest or a notebook may still use.
    code = (
        "import io, logging.config, sys\n"
        "sys.stderr = first = io.StringIO()\n"
        "import absl.logging, convlearn\n"  # as when TensorFlow comes first
        "sys.stderr = io.StringIO()\n"
        "logging.config.dictConfig({'version': 1})\n"
        "print(first.closed)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert done.stdout.split() == ["False"]
