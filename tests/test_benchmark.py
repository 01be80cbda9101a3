"""Performance settings (trainer.precision, trainer.threads), FLOP counting and scripts/benchmark.py."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import keras
import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, load_script
from hydra import compose, initialize_config_dir

from convlearn import perf
from convlearn.config import build
from convlearn.config_checks import validate
from convlearn.errors import ConvlearnError
from convlearn.geometry import Crops
from convlearn.models import linear, sequential
from convlearn.optim import current_lr
from convlearn.pipeline import run_experiment
from convlearn.training import Trainer, compiled_step


@pytest.fixture
def keep_policy():
    """bf16 sets Keras' global dtype policy; later tests must get float32 models again."""
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


@pytest.fixture(scope="module")
def benchmark():
    return load_script("benchmark")


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu avx2 amx_bf16\n")
    assert perf.cpu_flags(cpuinfo) == {"fpu", "avx2", "amx_bf16"}
    assert perf.cpu_flags(tmp_path / "missing") == set()


def test_peak_memory_is_this_process_own_high_water_mark(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmPeak:\t 9999999 kB\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n")
    assert perf.peak_rss_mb(status) == 200.0
    # Without /proc: the resource module's figure, which is at least what this process holds now.
    current = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmRSS:"))) / 1024
    assert perf.peak_rss_mb(tmp_path / "missing") >= current * 0.9


@pytest.mark.slow
def test_bf16_trains_with_float32_weights_and_loss(make_cfg, tmp_path, monkeypatch, keep_policy):
    monkeypatch.setattr(perf, "cpu_flags", lambda: {"avx512_bf16"})  # run the bf16 path on any CPU
    summary = run_experiment(make_cfg("trainer.precision=bf16", "trainer.steps=4"), tmp_path).metrics
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert summary["status"] == "completed" and all(math.isfinite(loss) for loss in summary["losses"])
    assert isinstance(summary["final_loss"], float) and summary["final_loss"] < summary["losses"][0] * 10
    model = keras.models.load_model(tmp_path / "model.keras", safe_mode=True)
    # bfloat16 layers but the last, whose output the loss compares with the target (perf.float32_output)
    assert [layer.compute_dtype for layer in model.layers] == ["bfloat16"] * (len(model.layers) - 1) + ["float32"]
    assert {w.dtype for w in model.weights} == {"float32"}
    with np.load(tmp_path / "kernels.npz", allow_pickle=False) as kernels:
        assert all(kernels[name].dtype == np.float32 for name in kernels.files)


def test_bf16_is_refused_on_a_cpu_without_bf16(make_cfg, tmp_path, monkeypatch, keep_policy):
    monkeypatch.setattr(perf, "cpu_flags", lambda: {"avx2"})
    with pytest.raises(ConvlearnError, match=r"trainer\.precision: 'bf16' needs a CPU with bfloat16.*float32"):
        run_experiment(make_cfg("trainer.precision=bf16"), tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_precision_and_threads_values_are_checked(make_cfg):
    with pytest.raises(ConvlearnError, match=r"trainer\.precision: must be one of 'float32', 'bf16', 'fp16', got 'fp8'"):
        validate(make_cfg("trainer.precision=fp8"))
    with pytest.raises(ConvlearnError, match=r"trainer\.threads.*\[intra, inter\].*\[2\]"):
        perf.set_threads([2])


@pytest.mark.slow
def test_threads_apply_in_a_fresh_process_and_are_refused_once_tensorflow_runs():
    code = (
        "from convlearn.perf import set_threads; set_threads([1, 2]); import tensorflow as tf; "
        "tf.constant(1.0) + 1.0; t = tf.config.threading; "
        "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["1", "2"]
    tf.constant(1.0) + 1.0  # this process's runtime has started
    current = [tf.config.threading.get_intra_op_parallelism_threads(), tf.config.threading.get_inter_op_parallelism_threads()]
    perf.set_threads(current)  # the same sizes again: nothing to change, no error
    perf.set_threads(None)
    with pytest.raises(ConvlearnError, match=r"trainer\.threads: TensorFlow already runs with .* new process"):
        perf.set_threads([current[0] + 3, current[1] + 3])


def test_training_flops_count_every_conv_layer():
    # 2x2 conv 1->2 on 5x6 gives 4x5; then 1x1 conv 2->3 on 4x5. Forward: 2*4*1*2*20 + 2*1*2*3*20.
    model = sequential([dict(filters=2, kernel_size=2), dict(filters=3, kernel_size=1)])
    assert perf.training_flops(model, (1, 5, 6, 1)) == 3 * (320 + 240)
    assert perf.training_flops(linear(3), (2, 10, 12, 1)) == 3 * 2 * 9 * 80 * 2


def test_rows_are_summarised_against_the_notebook(benchmark):
    times = [1.0 + 0.1 * k for k in range(20)]  # a slow first step, then 10 steps/s
    result = {"times": times, "quality": [1.0 / (k + 1) for k in range(20)], "target_variance": 2.0,
              "flops_per_step": 4e9, "peak_mem_mb": 100.0}
    row = benchmark.summarise("x", result, {"rate": 5.0, "rel_mse": 0.1}, matmul=80.0)
    assert row["steps_per_sec"] == pytest.approx(10.0)
    assert row["ratio_vs_notebook"] == pytest.approx(2.0)
    assert row["seconds_to_notebook_quality"] == pytest.approx(times[4])  # quality 0.2 / variance 2 = 0.1
    assert row["gflops_per_sec"] == pytest.approx(40.0) and row["fraction_of_matmul"] == pytest.approx(0.5)
    never = benchmark.summarise("y", result, {"rate": 5.0, "rel_mse": 1e-3}, matmul=80.0)
    assert never["seconds_to_notebook_quality"] is None


def test_the_rows_are_the_fit_baselines_convlearn_and_its_presets(benchmark):
    names = [name for name, _ in benchmark.main_rows(benchmark.QUICK_DATA, 10, bf16=False, quick=True)]
    assert names[:5] == ["notebook loop", "keras fit", "keras fit steps_per_execution=10", "convlearn",
                         "convlearn bare step"]
    assert "convlearn XLA" in names and set(benchmark.PRESETS) <= set(names) and not any("bf16" in n for n in names)
    with_bf16 = [name for name, _ in benchmark.main_rows(benchmark.QUICK_DATA, 10, bf16=True, quick=True)]
    assert {"convlearn bf16", "experiment=fast bf16"} <= set(with_bf16)
    # The seeds part times every preset, and in bf16 too where the CPU computes in it.
    assert benchmark.seeded(benchmark.main_rows(benchmark.QUICK_DATA, 10, bf16=False, quick=True)) == ["experiment=fast"]
    assert benchmark.seeded(benchmark.main_rows(benchmark.QUICK_DATA, 10, bf16=True, quick=True)) == [
        "experiment=fast", "experiment=fast bf16"]
    only = benchmark.main_rows(benchmark.QUICK_DATA, 10, bf16=False, quick=True, only=["convlearn XLA"])
    assert [name for name, _ in only] == ["notebook loop", "convlearn XLA"]
    with pytest.raises(SystemExit, match="no row 'fastest' here; the rows are: notebook loop, keras fit, "):
        benchmark.main_rows(benchmark.QUICK_DATA, 10, bf16=False, quick=True, only=["experiment=fast", "fastest"])


def test_every_loop_takes_every_place_in_the_turns(benchmark):
    names = ["notebook loop", "keras fit", "convlearn", "convlearn bare step"]
    orders = [benchmark.turn_order(names, r) for r in range(8)]
    assert orders[0] == names and all(sorted(order) == sorted(names) for order in orders)
    for name in names:  # over as many rounds as loops, once in each place; then again
        assert sorted(order.index(name) for order in orders[:4]) == [0, 1, 2, 3]
        assert [order.index(name) for order in orders[4:]] == [order.index(name) for order in orders[:4]]


def test_convlearn_is_held_against_one_fit_loop_not_the_best_fit_of_each_round(benchmark):
    # Two fits that take turns being ahead: the best of them in each round would be 10 in three
    # rounds of four, above what either fit runs; convlearn (9.5 throughout) is held against one fit loop.
    names = [benchmark.NOTEBOOK, "keras fit", benchmark.FIT_PER_EXECUTION, benchmark.FIT_XLA, "convlearn bare step",
             benchmark.PER_CALL, "convlearn", benchmark.LOGGED_PER_CALL, benchmark.other_loop(False)]
    rates = {name: [9.5] * 4 for name in names}
    rates.update({benchmark.NOTEBOOK: [4.0] * 4, "keras fit": [10.0, 8.0, 8.5, 8.5], benchmark.FIT_XLA: [5.0] * 4,
                  benchmark.FIT_PER_EXECUTION: [8.0, 10.0, 8.0, 10.0]})
    measured = benchmark.in_turn_ratios({"steps_per_sec": rates, "convlearn_step": "graph", "rounds": 4,
                                         "steps_per_round": 30})
    assert measured["fastest_fit"] == benchmark.FIT_PER_EXECUTION  # median 9.0, against keras fit's 8.5
    per_round = {"median": pytest.approx((9.5 / 8 + 9.5 / 10) / 2), "min": 9.5 / 10, "max": 9.5 / 8}
    assert measured["ratios"]["convlearn vs the fastest keras fit"] == per_round
    assert measured["ratios"]["convlearn bare step vs the keras fit of its kind"] == per_round
    assert measured["ratios"]["convlearn vs notebook loop"]["median"] == 9.5 / 4.0


@pytest.mark.slow
def test_quick_benchmark_writes_every_field(benchmark, tmp_path, capsys, monkeypatch, keep_policy):
    # --quick runs its rows in this process anyway, so main() here checks the same as a
    # `python scripts/benchmark.py --quick` would, without paying another TensorFlow import. Two rows
    # next to the notebook loop (every kind of loop runs in the turns), the turns and two seeds.
    # On any CPU as on one with bfloat16 instructions: the bf16 loop and preset run too (emulated here).
    monkeypatch.setattr(perf, "cpu_flags", lambda: {"avx512_bf16"})
    out = tmp_path / "bench.json"
    argv = ["--quick", "--rows", "keras fit,convlearn", "--parts", "rows,turns,seeds", "--seeds", "2"]
    assert benchmark.main([*argv, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    stdout = captured.out
    # Progress on stderr, one line per round of the turns (the rows' 10 steps are fewer than a report's).
    rounds = [line for line in captured.err.splitlines() if "round" in line]
    assert [line.split(":")[:3] for line in rounds] == [["benchmark", " in turns", " round 1/2"],
                                                        ["benchmark", " in turns", " round 2/2"]]
    report = json.loads(out.read_text())
    names = [row["name"] for row in report["rows"]]
    # The seeds part adds the presets, and their bf16 twins on a CPU with bfloat16 instructions.
    assert report["machine"]["bf16"] and report["machine"]["matmul_gflops_bf16"] > 0
    assert names == ["notebook loop", "keras fit", "convlearn", "experiment=fast", "experiment=fast bf16"]
    assert list(report["presets"]) == ["experiment=fast", "experiment=fast bf16"]
    for row in report["rows"]:
        assert set(row) >= {"name", "steps_per_sec", "ratio_vs_notebook", "seconds_to_notebook_quality", "peak_mem_mb",
                            "flops_per_step", "gflops_per_sec", "final_rel_mse"}
        assert row["steps"] == benchmark.QUICK_STEPS and row["steps_per_sec"] > 0 and row["peak_mem_mb"] > 0 and row["flops_per_step"] > 0
    notebook = report["rows"][0]
    assert notebook["ratio_vs_notebook"] == 1.0 and 0 < notebook["seconds_to_notebook_quality"] <= notebook["total_seconds"]
    assert report["machine"]["matmul_gflops_float32"] > 0
    assert report["machine"]["tf_cpu_allocator_use_bfc"] == os.environ["TF_CPU_ALLOCATOR_USE_BFC"]  # set on import
    logging = report["logging"]
    assert logging["rounds"] == 2 and logging["logged_steps_per_sec"] > 0 and logging["bare_steps_per_sec"] > 0
    assert logging["overhead"] == pytest.approx(1 - logging["logged_steps_per_sec"] / logging["bare_steps_per_sec"])
    in_turn = report["in_turn"]
    # The turns drawn beside the JSON: every loop per round, and convlearn against the fastest fit.
    picture = benchmark.turns_png(out)
    assert picture == tmp_path / "bench.turns.png" and f"in turns: drawn in {picture}" in stdout
    assert matplotlib.image.imread(picture).shape == (550, 1300, 4)
    assert in_turn["fastest_fit"] in {"keras fit", "keras fit steps_per_execution=10", "keras fit XLA"}
    # Keras refuses XLA while op determinism is on, which an earlier test in this process may have left on.
    assert isinstance(in_turn["keras_fit_xla"], bool)
    assert ("compiled 'keras fit XLA' without XLA" in stdout) is (not in_turn["keras_fit_xla"])
    assert in_turn["convlearn_step"] == "graph"  # debug=tiny pins trainer.jit_compile=false: XLA is the other step
    assert set(in_turn["steps_per_sec"]) == {"notebook loop", "keras fit", "keras fit steps_per_execution=10",
                                             "convlearn bare step", "convlearn bare step, steps_per_call=10", "convlearn",
                                             "convlearn, steps_per_call=10", "keras fit XLA", "convlearn, XLA step",
                                             "convlearn bare step bf16"}
    for ratio in in_turn["ratios"].values():
        assert 0 < ratio["min"] <= ratio["median"] <= ratio["max"]
    for name, rates in in_turn["steps_per_sec_per_round"].items():  # the raw rates behind every spread
        assert len(rates) == 2 and min(rates) == in_turn["steps_per_sec"][name]["min"]
    assert {"convlearn vs the fastest keras fit", "convlearn bare step, steps_per_call=10 vs one step per call",
            "convlearn, steps_per_call=10 vs one step per call", "convlearn, XLA step vs the fastest keras fit",
            "convlearn bare step vs the keras fit of its kind", "convlearn, steps_per_call=10 vs the fastest keras fit",
            "convlearn bare step bf16 vs float32",
            } <= set(in_turn["ratios"])
    assert [row["jit_compile"] for row in report["rows"] if row["name"] == "convlearn"] == [False]
    fast = report["presets"]["experiment=fast"]
    assert fast["seeds"] == [0, 1] and len(fast["seconds_to_notebook_quality"]) == 2
    assert fast["seconds_to_notebook_quality"][0] == next(
        row["seconds_to_notebook_quality"] for row in report["rows"] if row["name"] == "experiment=fast")
    assert "notebook loop" in stdout and "logging: " in stdout and "in turns: convlearn vs notebook loop" in stdout
    assert "in turns: convlearn trains with the graph step here" in stdout


@pytest.mark.slow
def test_thread_sweep_and_scaling_parts(benchmark, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "QUICK_SCALING_SIZES", [48])  # fewer than --quick's, same code
    monkeypatch.setattr(benchmark, "QUICK_LARGE_SIZE", 64)
    monkeypatch.setenv("CONVLEARN_CACHE_DIR", str(tmp_path / "picks"))
    out = tmp_path / "bench.json"
    assert benchmark.main(["--quick", "--rows", "convlearn bare step", "--threads", "--scaling", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [row["name"] for row in report["rows"]] == ["notebook loop", "convlearn bare step"]
    assert "in_turn" not in report and "presets" not in report  # --rows alone: only the rows
    # The thread sweep's row runs in a fresh process, where the pool sizes can still be set.
    assert report["threads"]["results"][0]["applied"] == report["threads"]["results"][0]["threads"] == [1, 1]
    modes = {(entry["size"], entry["mode"].split()[0]) for entry in report["scaling"]}
    assert modes == {(48, "full"), (48, "patches"), (64, "patches")}
    assert all(entry["ns_per_pixel"] > 0 and entry["peak_mem_mb"] > 0 for entry in report["scaling"])
    assert "threads [intra, inter]: best [1, 1]" in capsys.readouterr().out
    assert not (tmp_path / "picks").exists()  # --quick pins the step: no size timed XLA against the graph


def test_fast_preset_is_the_notebook_experiment_on_crops_with_lsuv_and_a_tuned_adam(make_cfg):
    cfg = make_cfg("experiment=fast")
    validate(cfg)
    optimizer = build(cfg, "optimizer")
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert optimizer.epsilon == pytest.approx(1e-10) and current_lr(optimizer) == pytest.approx(5e-3)
    assert optimizer.global_clipnorm == pytest.approx(0.05) and optimizer.beta_2 == pytest.approx(0.99)
    assert cfg.optimizer.decay_steps == cfg.trainer.steps  # the rate decays to zero over the run
    assert cfg.model._target_ == "convlearn.models.notebook" and cfg.target.repeats == 5
    assert cfg.model.edge_init == "zero_mean"
    trainer = build(cfg, "trainer")
    assert trainer.jit_compile is False and trainer.init == "lsuv"
    assert (cfg.data.patch_size, cfg.data.batch_size) == (128, 2)  # cheap steps on random crops
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        assert compose(config_name="train", overrides=["experiment=fast"]).trainer.steps == 250  # fewer than the notebook's 500


@pytest.mark.slow
def test_xla_step_trains_like_the_plain_step_and_repeats_itself(make_cfg, tmp_path):
    # A small non-linear net: XLA compiles it in a fraction of the notebook model's time.
    small = ["model=can", "model.depth=2", "model.width=4", "trainer.steps=6"]
    plain = run_experiment(make_cfg(*small), tmp_path / "plain").metrics
    xla = run_experiment(make_cfg(*small, "trainer.jit_compile=true"), tmp_path / "xla").metrics
    again = run_experiment(make_cfg(*small, "trainer.jit_compile=true"), tmp_path / "again").metrics
    assert xla["losses"] == again["losses"]  # deterministic under XLA too
    # The same arithmetic, fused differently: equal up to float32 rounding.
    np.testing.assert_allclose(xla["losses"], plain["losses"], rtol=1e-3)
    with pytest.raises(ConvlearnError, match=r"trainer\.jit_compile: XLA compiles the single-device step only"):
        build(make_cfg("trainer.jit_compile=true", "trainer.strategy=mirrored"), "trainer")


def test_fastest_step_picks_the_faster_and_puts_the_state_back():
    counter = tf.Variable(0.0)
    matrix = tf.random.stateless_uniform((256, 256), seed=(3, 4))

    @tf.function
    def cheap(inputs, targets):
        counter.assign_add(1.0)
        return counter, inputs, targets

    @tf.function
    def costly(inputs, targets):
        counter.assign_add(1.0)
        product = matrix
        for _ in range(30):
            product = tf.matmul(product, matrix) / 256.0
        return counter + tf.reduce_sum(product) * 0.0, inputs, targets

    steps = {"costly": costly, "cheap": cheap}
    picked, rates = perf.fastest_step(steps, tf.zeros(1), tf.zeros(1), state=[counter], clear=math.inf)
    assert picked == "cheap" and rates["cheap"] > rates["costly"] > 0
    assert float(counter) == 0.0  # 2 * (1 + 3 * 2) steps ran, and none of them counts


def test_fastest_step_stops_timing_once_the_gap_is_clear():
    ran = {"slow": 0, "fast": 0}

    def timed(name, seconds):
        def step(inputs, targets):
            ran[name] += 1
            time.sleep(seconds)
            return tf.constant(0.0), inputs, targets
        return step

    steps = {"slow": timed("slow", 0.03), "fast": timed("fast", 0.001)}
    picked, rates = perf.fastest_step(steps, tf.zeros(1), tf.zeros(1), state=[], rounds=3, per_round=2)
    assert picked == "fast" and rates["fast"] > 1.2 * rates["slow"]
    assert ran == {"slow": 1 + 2, "fast": 1 + 2}  # the first calls, then one round: the gap was clear
    ran.update(slow=0, fast=0)
    perf.fastest_step({"a": timed("slow", 0.05), "b": timed("fast", 0.05)}, tf.zeros(1), tf.zeros(1), state=[])
    assert ran == {"slow": 1 + 3 * 2, "fast": 1 + 3 * 2}  # alike: all three rounds


def test_autos_xla_candidate_is_the_pinned_xla_step():
    # auto's XLA step compiles the graph step's trace rather than tracing the model again: it must
    # train exactly as a step pinned to XLA from the start does.
    def losses(steps):
        keras.utils.set_random_seed(0)
        model = sequential([{"filters": 3, "kernel_size": 3, "activation": "elu"}, {"filters": 1, "kernel_size": 3}])
        optimizer = keras.optimizers.Adam(1e-2)
        inputs = tf.random.stateless_normal((1, 12, 12, 1), seed=(1, 2))
        targets = tf.random.stateless_normal((1, 8, 8, 1), seed=(3, 4))
        step = steps(model, optimizer, Crops(model=(slice(None),) * 2, target=(), inputs=()))
        return [float(step(inputs, targets)[0]) for _ in range(4)]

    auto = Trainer(jit_compile="auto", progress=False)
    via_graph = losses(lambda model, optimizer, crops: auto._steps(model, optimizer, crops)[True])
    pinned = losses(lambda model, optimizer, crops: compiled_step(model, optimizer, crops, jit_compile=True))
    assert via_graph == pinned and via_graph[-1] < via_graph[0]


@pytest.mark.slow
def test_auto_jit_trains_exactly_like_the_step_it_picked(make_cfg, tmp_path, caplog):
    # The timing steps run on the LSUV-rescaled model and are undone, model and optimizer alike:
    # the run then equals one pinned to the picked step from the start.
    with caplog.at_level("INFO", logger="convlearn"):
        small = ["model=can", "model.depth=2", "model.width=4", "trainer.steps=6", "trainer.init=lsuv"]
        auto = run_experiment(make_cfg(*small, "trainer.jit_compile=auto"), tmp_path / "auto").metrics
    picked = auto["jit_compile"]
    assert isinstance(picked, bool)
    assert f"training with {'XLA' if picked else 'the graph'}" in caplog.text
    pinned = make_cfg(*small, f"trainer.jit_compile={str(picked).lower()}")
    assert run_experiment(pinned, tmp_path / "pinned").metrics["losses"] == auto["losses"]
    with pytest.raises(ConvlearnError, match=r"trainer\.jit_compile: .*true or false.*'auto'"):
        validate(make_cfg("trainer.jit_compile=sometimes"))


def test_step_clock_measures_the_whole_image_after_each_step_with_the_clock_stopped(benchmark):
    calls = []

    def evaluate():  # a slow measurement of the model, as a whole-image loss is
        time.sleep(0.2)
        calls.append(len(calls))
        return float(len(calls))

    clock = benchmark.StepClock(evaluate=evaluate)
    clock.start()
    for step in range(3):
        clock.on_step(step, {}, None)
    assert clock.evaluated == [1.0, 2.0, 3.0]
    # three evaluations took 0.6 s; the steps themselves almost nothing
    assert clock.times[-1] < 0.1 and clock.times == sorted(clock.times)


def test_a_labelled_clock_reports_its_progress_on_stderr(benchmark, monkeypatch, capsys):
    monkeypatch.setattr(benchmark, "PROGRESS_EVERY", 2)
    clock = benchmark.StepClock(label="keras fit")
    for _ in range(5):
        clock.tick()
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert captured.out == "" and len(lines) == 2
    assert lines[0].startswith("benchmark: keras fit: 2 steps in ")
    assert lines[1].startswith("benchmark: keras fit: 4 steps in ")
    assert all(line.endswith(" s") for line in lines)


def test_a_row_process_s_progress_is_passed_on_as_it_comes_and_its_other_stderr_kept(benchmark, capfd, monkeypatch):
    # A child that reports, makes noise, pauses, reports again and prints its result.
    relayed = []

    def timed_print(*args, **kwargs):  # when each line was passed on
        relayed.append(time.perf_counter())
        print(*args, **kwargs)

    monkeypatch.setattr(benchmark, "print", timed_print, raising=False)
    child = (
        "import sys, time\n"
        "print('benchmark: first', file=sys.stderr, flush=True)\n"
        "print('TensorFlow noise', file=sys.stderr, flush=True)\n"
        "time.sleep(0.5)\n"
        "print('benchmark: second', file=sys.stderr, flush=True)\n"
        "print('{\"rate\": 1.5}')\n"
    )
    returncode, stdout, stderr = benchmark.run_child([sys.executable, "-c", child])
    captured = capfd.readouterr()
    assert returncode == 0 and json.loads(stdout) == {"rate": 1.5}
    assert captured.err == "benchmark: first\nbenchmark: second\n" and captured.out == ""
    assert relayed[1] - relayed[0] > 0.4  # the first line was on screen while the child slept
    assert stderr == "TensorFlow noise\n"
    failed = benchmark.run_child([sys.executable, "-c", "import sys; sys.exit('broken')"])
    assert failed == (1, "", "broken\n")


def test_a_fit_round_is_timed_to_the_end_of_its_last_step(benchmark):
    ends = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    model = sequential(layers=[{"filters": 1, "kernel_size": 3}])
    dataset = benchmark.compile_for_fit(model, tf.ones([1, 8, 8, 1]), tf.zeros([1, 6, 6, 1]), 1)
    last_step = benchmark._LastStep()
    model.fit(dataset, epochs=1, steps_per_epoch=3, verbose=0, callbacks=[last_step, record], shuffle=False)
    returned = time.perf_counter()
    assert len(ends) == 3 and ends[1] < last_step.at <= ends[2] <= returned
