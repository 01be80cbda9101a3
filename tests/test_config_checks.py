"""User mistakes in configs and inputs: each fails before training with one exact line."""

import logging
import subprocess
import sys

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from conftest import ROOT, TINY, run_main
from convlearn.errors import ConvlearnError
from convlearn.config_checks import validate
from convlearn.pipeline import run_experiment

TRAINER_KEYS = "checkpoint_every, deterministic, init, jit_compile, keep_checkpoints, on_nonfinite, precision, progress, resume, seed, steps, steps_per_call, strategy, threads, val_every"

# Mistakes the config check finds before anything is built: overrides -> the exact message.
CONFIG_CASES = {
    ("trainer.steps=abc",): "trainer.steps: expected an integer, got 'abc'",
    ("trainer.steps=-5",): "trainer.steps: must be >= 1, got -5",
    ("optimizer.lr=-1e-3",): "optimizer.lr: must be > 0, got -0.001",
    ("+trainer.stepz=3",): f"trainer.stepz: unknown key; convlearn.training.Trainer takes {TRAINER_KEYS}",
    ("trainer.on_nonfinite=ignore",): "trainer.on_nonfinite: must be one of 'stop', 'skip', got 'ignore'",
    ("trainer.resume=maybe",): "trainer.resume: expected true or false, got 'maybe'",
    ("model=linear", "model.kernel_size=0"): "model.kernel_size: must be >= 1, got 0",
    ("model=linear", "model.kernel_size=[3,0]"): "model.kernel_size: must be >= 1, got [3, 0]",
    ("model=linear", "model.use_bias=1"): "model.use_bias: expected true or false, got 1",
    ("model._target_=convlearn.models.bogus",): (
        "model._target_: cannot import 'convlearn.models.bogus'; it must name an importable callable"
    ),
    ("model.activation=3",): "model.activation: expected a string, got 3",
    ("optimizer.lr=inf",): "optimizer.lr: must be a finite number, got inf",
    ("data=noise", "data.std=inf"): "data.std: must be a finite number, got inf",
    ("data=noise", "data.std=nan"): "data.std: must be a finite number, got nan",
    ("model._target_=this.nothing",): (
        "model._target_: 'this.nothing' is outside convlearn, keras; a config only builds their callables "
        "(trust another module with CONVLEARN_TRUSTED_TARGETS=<module>)"
    ),
    ("optimizer.cls=os.system",): (
        "optimizer.cls: must name a class of convlearn, keras (trust another module with "
        "CONVLEARN_TRUSTED_TARGETS=<module>), got 'os.system'"
    ),
    ("data.height=1.5",): "data.height: expected an integer, got 1.5",
    ("data.noise=-1",): "data.noise: must be >= 0, got -1",
    ("+data.brightness=[1]",): "data.brightness: expected a list of 2 values, got [1]",
    ("target.repeats=x",): "target.steps[1].n: expected an integer, got 'x'",
    ("+target.steps.0.kernels.0.bogus=1",): (
        "target.steps[0].kernels[0].bogus: unknown key; convlearn.kernels.edge_vertical takes no arguments"
    ),
    ("logger.scalar_every=0",): "logger.scalar_every: must be >= 1, got 0",
    ("trainer.seed=null",): "trainer.seed: expected an integer, got None",
}


@pytest.mark.parametrize("overrides, message", CONFIG_CASES.items(), ids=[" ".join(k) for k in CONFIG_CASES])
def test_config_mistake_is_named_in_one_line(make_cfg, overrides, message):
    with pytest.raises(ConvlearnError) as caught:
        validate(make_cfg(*overrides))
    assert str(caught.value) == message


def test_a_foreign_target_is_refused_before_its_module_is_imported_unless_trusted(make_cfg, monkeypatch):
    cfg = make_cfg("model._target_=this.nothing")
    with pytest.raises(ConvlearnError, match="outside convlearn"):
        validate(cfg)
    assert "this" not in sys.modules  # importing it would print the Zen of Python
    monkeypatch.setenv("CONVLEARN_TRUSTED_TARGETS", "json, this")
    with pytest.raises(ConvlearnError, match="cannot import 'this.nothing'"):
        validate(cfg)  # trusted now: imported, and found not to hold the callable


def test_missing_values_and_required_arguments_are_named():
    with pytest.raises(ConvlearnError) as caught:
        validate(OmegaConf.create({"data": {"_target_": "convlearn.data.load_image", "path": "???"}}))
    assert str(caught.value) == "data.path: no value given; set it on the command line (data.path=...)"
    with pytest.raises(ConvlearnError) as caught:
        validate(OmegaConf.create({"data": {"_target_": "convlearn.data.load_image"}}))
    assert str(caught.value) == "data.path: missing; convlearn.data.load_image needs it (add data.path=...)"


# What an option needs besides itself to be a whole config: the paths a user gives.
NEEDS = {"data=file": ["data.path=img.npy"], "data=folder": ["data.path=images"],
         "data=pairs": ["data.inputs=before", "data.targets=after"]}


def shipped_options() -> list[str]:
    """``group=option`` for every file in configs/ (Hydra's own settings under configs/hydra aside)."""
    groups = [folder for folder in sorted((ROOT / "configs").iterdir()) if folder.is_dir() and folder.name != "hydra"]
    return [f"{group.name}={option.stem}" for group in groups for option in sorted(group.glob("*.yaml"))]


def test_every_shipped_config_composes_and_is_valid():
    options = shipped_options()
    assert {"model=notebook", "experiment=notebook", "hparams_search=notebook_optuna", "debug=tiny"} <= set(options)
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        validate(compose(config_name="train"))
        for option in options:
            validate(compose(config_name="train", overrides=[option, *NEEDS.get(option, [])]))


def file_cfg(path):
    """The tiny config reading ``path`` instead of generating an image."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        tiny = [o for o in TINY if not o.startswith("data.")]
        return compose(config_name="train", overrides=[*tiny, "data=file", f"data.path={path}"])


def input_cases(folder):
    """Bad images and runs: file, overrides -> the exact message."""
    np.save(folder / "nan.npy", np.full((40, 48), np.nan, np.float32))
    np.save(folder / "flat.npy", np.ones((40, 48), np.float32))
    np.save(folder / "text.npy", np.full((40, 48), "a"))
    np.save(folder / "pickled.npy", np.array([{"a": 1}], dtype=object))
    write_header_only(folder / "huge.npy", (100_000, 100_000), sparse=True)  # 80 GB on paper, no disk
    write_header_only(folder / "truncated.npy", (40, 48), sparse=False)
    np.save(folder / "empty.npy", np.zeros((0, 0), np.float32))
    np.save(folder / "complex.npy", np.ones((40, 48), np.complex64))
    np.save(folder / "loud.npy", np.random.default_rng(0).random((40, 48)) * 1e30)
    long_name = "a" * 300 + ".npy"
    return {
        "empty.npy": f"data.path: {folder}/empty.npy holds an empty 0x0 array; an image needs at least one pixel",
        "complex.npy": (
            f"data.path: {folder}/complex.npy holds complex numbers (complex64); save a real array (its real part or abs)"
        ),
        "loud.npy": (
            "target: the target transform gives non-finite values on this image (its values overflow float32); "
            "scale the image to a smaller range (e.g. data.normalize=unit)"
        ),
        long_name: f"data.path: cannot open {folder}/{long_name}: File name too long",
        "nan.npy": f"data.path: {folder}/nan.npy contains NaN or infinite pixels",
        "flat.npy": (
            "target is constant over the compared region (variance 0), so rel_mse and PSNR are undefined; "
            "use an image with some structure"
        ),
        "text.npy": f"data.path: {folder}/text.npy has non-numeric dtype <U1",
        "pickled.npy": (
            f"data.path: {folder}/pickled.npy holds pickled Python objects; convlearn only reads plain numeric "
            "arrays (np.save without objects)"
        ),
        "missing.npy": f"data.path: no such file: {folder}/missing.npy",
        "huge.npy": (
            f"data.path: {folder}/huge.npy is too large: a 100000x100000 float64 image needs 111.8 GiB, "
            "this machine has 16.0 GiB"
        ),
        "truncated.npy": (
            f"data.path: {folder}/truncated.npy is truncated: its header promises 15360 bytes of data, the file holds 0"
        ),
    }


def write_header_only(path, shape, sparse):
    """An .npy header for float64 ``shape``; with ``sparse`` the data is a hole the size it claims."""
    with open(path, "wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<f8", "fortran_order": False, "shape": shape})
        if sparse:
            file.truncate(file.tell() + 8 * int(np.prod(shape)))


def test_bad_inputs_fail_before_training_and_leave_the_run_dir_empty(tmp_path, monkeypatch):
    monkeypatch.setattr("convlearn.data._physical_memory", lambda: 16 * 2**30)
    for name, message in input_cases(tmp_path).items():
        run_dir = tmp_path / f"run-{name[:20]}"
        with pytest.raises(ConvlearnError) as caught:
            run_experiment(file_cfg(tmp_path / name), run_dir)
        assert str(caught.value) == message
        assert not run_dir.exists()


def test_kernel_larger_than_the_image_is_refused(make_cfg, tmp_path):
    with pytest.raises(ConvlearnError) as caught:
        run_experiment(make_cfg("model=linear", "model.kernel_size=50"), tmp_path / "run")
    assert str(caught.value) == "image is too small for the model: 40x48 pixels, but the model's receptive field is 50x50"
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_run_dir_is_never_shared_and_resume_needs_a_checkpoint(make_cfg, tmp_path):
    run_experiment(make_cfg("model=linear", "trainer.steps=2"), tmp_path)  # the cheapest model: any run claims its dir
    with pytest.raises(ConvlearnError) as caught:
        run_experiment(make_cfg("model=linear", "trainer.steps=2"), tmp_path)
    assert str(caught.value) == (
        f"hydra.run.dir: {tmp_path} already holds a run; continue it with trainer.resume=true or pick a new directory"
    )
    with pytest.raises(ConvlearnError) as caught:
        run_experiment(make_cfg("trainer.resume=true"), tmp_path / "never-ran")
    assert str(caught.value) == (
        f"trainer.resume=true: no checkpoint in {tmp_path}/never-ran/checkpoints; "
        "pass hydra.run.dir=<the directory of the run to resume>"
    )


def run_train_py(*args, cwd):
    """``python train.py *args`` on the tiny image; ``-m`` may lead ``args``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, *TINY], capture_output=True, text=True, cwd=cwd, timeout=120,
    )


@pytest.mark.slow
def test_cli_prints_the_message_without_a_traceback(tmp_path):
    result = run_train_py("optimizer.lr=-1", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "convlearn: error: optimizer.lr: must be > 0, got -1"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "tb").exists()
    assert "convlearn: error: optimizer.lr: must be > 0, got -1" in (tmp_path / "run" / "train.log").read_text()


MODELS = "can, deep_linear, edge_blur_structured, linear, notebook, sequential"
NEW_KEY = "no such key in the config (add it with +{0}=... if it is meant to be new)"

# Mistakes Hydra finds while composing the config, before convlearn's code runs: override -> the exact line.
COMPOSE_CASES = {
    "model=bogus": f"model=bogus: no such option; model is one of {MODELS}",
    "experiment=nope": "experiment=nope: no such option; experiment is one of fast, notebook, recover_kernel",
    "optimizer=bogus": "optimizer=bogus: no such option; optimizer is one of adam, gd, sgd",
    "hydra/launcher=nope": (
        "hydra/launcher=nope: no such option; hydra/launcher is one of basic, joblib, parallel, ray_cluster, "
        "ray_local, slurm, slurm_local, submitit_local, submitit_slurm"
    ),
    "trainer.stepz=3": f"trainer.stepz: {NEW_KEY.format('trainer.stepz')}; trainer has {TRAINER_KEYS}",
    "model.nope=1": (
        f"model.nope: {NEW_KEY.format('model.nope')}; model has activation, blur_filters, blur_layers, "
        "edge_filters, edge_init, edge_size, width"
    ),
    "trainer.foo.bar=1": f"trainer.foo: {NEW_KEY.format('trainer.foo')}; trainer has {TRAINER_KEYS}",
    "bogus=1": (
        f"bogus: {NEW_KEY.format('bogus')}; the config has data, hydra, logger, model, objective, optimizer, "
        "target, trainer"
    ),
    "model=[": (
        "model=[: cannot parse it: no viable alternative at input '['. "
        "See https://hydra.cc/docs/1.2/advanced/override_grammar/basic for details"
    ),
    # No key or value of its own in Hydra's error: Hydra's words, on one line.
    "+trainer.steps=3": (
        "Could not append to config. An item is already at 'trainer.steps'. Either remove + prefix: "
        "'trainer.steps=3'. Or add a second + to add or override 'trainer.steps': '++trainer.steps=3'"
    ),
}


@pytest.mark.parametrize("override, message", COMPOSE_CASES.items(), ids=list(COMPOSE_CASES))
def test_a_config_hydra_cannot_compose_is_named_in_one_line(override, message, monkeypatch, capsys, tmp_path):
    # train.py's command line in this process: Hydra parses sys.argv and fails while composing.
    with pytest.raises(SystemExit) as caught:
        run_main(monkeypatch, *TINY, override, f"hydra.run.dir={tmp_path}/run")
    assert caught.value.code == f"convlearn: error: {message}"  # Python prints it to stderr and exits 1
    assert capsys.readouterr().err == ""
    assert not (tmp_path / "run").exists()


def test_a_refused_run_in_this_process_leaves_no_logging_behind(monkeypatch, tmp_path):
    # Hydra's job logging stays set up after main(): its console handler writes to the sys.stdout
    # of the run (in a test using capsys, a capture closed when that test ends), so later tests' log
    # records printed "--- Logging error --- ValueError: I/O operation on closed file".
    before = logging.getLogger().handlers[:]
    with pytest.raises(SystemExit) as caught:
        run_main(monkeypatch, *TINY, "optimizer.lr=-1", f"hydra.run.dir={tmp_path}/run")
    assert caught.value.code == "convlearn: error: optimizer.lr: must be > 0, got -1"
    assert "optimizer.lr: must be > 0" in (tmp_path / "run" / "train.log").read_text()  # Hydra's logging ran
    assert logging.getLogger().handlers == before


# What the user sees for a few of them, from a real `python train.py`, a sweep (-m) included.
CLI_COMPOSE_CASES = {
    ("model=bogus",): COMPOSE_CASES["model=bogus"],
    ("-m", "experiment=nope,fast"): COMPOSE_CASES["experiment=nope"],
    ("trainer.stepz=3",): COMPOSE_CASES["trainer.stepz=3"],
    ("model=[",): COMPOSE_CASES["model=["],
}


@pytest.mark.slow
@pytest.mark.parametrize("args, message", CLI_COMPOSE_CASES.items(), ids=[" ".join(k) for k in CLI_COMPOSE_CASES])
def test_cli_composition_mistake_prints_one_line_without_a_traceback(args, message, tmp_path):
    result = run_train_py(*args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"convlearn: error: {message}"
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr


@pytest.mark.slow
def test_a_composition_mistake_is_reported_before_tensorflow_loads(tmp_path):
    # TensorFlow takes seconds to import; a typo on the command line should not wait for it.
    command = [sys.executable, "-X", "importtime", str(ROOT / "train.py"), "model=bogus", f"hydra.run.dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == f"convlearn: error: {COMPOSE_CASES['model=bogus']}"
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "hydra" in imported and "tensorflow" not in imported and "keras" not in imported


def test_hydra_full_error_still_shows_hydras_error_and_traceback(monkeypatch, capsys, tmp_path):
    # Hydra's own exception leaves main() unchanged, and Python prints it with its traceback.
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(MissingConfigException, match="In 'train': Could not find 'model/bogus'"):
        run_main(monkeypatch, *TINY, "model=bogus", f"hydra.run.dir={tmp_path}/run")
    assert "convlearn: error" not in capsys.readouterr().err


def test_a_picture_too_large_to_decode_safely_is_refused(tmp_path, monkeypatch):
    from PIL import Image

    Image.fromarray(np.zeros((40, 48), np.uint8)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # as if the picture had billions of pixels
    with pytest.raises(ConvlearnError) as caught:
        run_experiment(file_cfg(tmp_path / "bomb.png"), tmp_path / "run")
    assert str(caught.value) == (
        f"data.path: cannot read image {tmp_path}/bomb.png: Image size (1920 pixels) exceeds limit of 200 pixels, "
        "could be decompression bomb DOS attack."
    )
    assert not (tmp_path / "run").exists()
