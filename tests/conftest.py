"""Shared test fixtures: configs composed exactly as ``train.py`` composes them, on tiny images."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from convlearn.config import flatten, one_line_composition_errors

ROOT = Path(__file__).resolve().parents[1]

TINY_YAML = ROOT / "configs" / "debug" / "tiny.yaml"
# Small and fast (a 40x48 generated image, a handful of steps): configs/debug/tiny.yaml as overrides, so that
# tests can drop the keys that another data or trainer option does not take.
TINY = [f"{key}={str(value).lower() if isinstance(value, bool) else value}"
        for key, value in flatten(OmegaConf.to_container(OmegaConf.load(TINY_YAML))).items()]

# A small non-linear model (two 3x3 context-aggregation layers of 2 channels): the behaviour of
# the trainer around any model, at a fraction of the notebook model's tracing and compile time.
SMALL_MODEL = ["model=can", "model.depth=2", "model.width=2"]


def load_script(name: str) -> ModuleType:
    """Import ``scripts/<name>.py`` as a module (scripts are not part of the package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def root_logger_kept() -> Iterator[None]:
    """Put the root logger's handlers and level back as they were once the block ends.

    Hydra's job logging is set up for a process that runs one job: it gives the root logger a
    console handler on the ``sys.stdout`` of that moment (in a test, the test's capture, closed
    when the test ends) and a handler on the run's ``train.log``, and leaves them there. After a
    ``main()`` in this process, every later log record would hit the closed capture and print
    ``--- Logging error --- ValueError: I/O operation on closed file`` into a later test's stderr.
    """
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        for handler in root.handlers[:]:
            if handler not in handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(level)


def run_main(monkeypatch: pytest.MonkeyPatch, *args: str) -> None:
    """Run ``train.py``'s ``main()`` in this process on the command line ``args``, as ``python train.py`` would.

    In-process is seconds faster than a real ``python train.py`` per case. Imported, train.py is a
    module whose ``config_path`` Hydra would look up as a package, so ``--config-path`` names the folder.
    The logging Hydra sets up for the run ends with it (:func:`root_logger_kept`).
    """
    from train import main  # imports TensorFlow: only the tests that run it pay for it

    monkeypatch.setattr(sys, "argv", ["train.py", f"--config-path={ROOT / 'configs'}", *args])
    with root_logger_kept(), one_line_composition_errors():
        main()


def tiny_cfg(*overrides: str) -> DictConfig:
    """Compose ``configs/train.yaml`` with the tiny defaults plus ``overrides``."""
    tiny = TINY
    if any(o.startswith("data=") for o in overrides):
        # TINY's data keys size the generated image; other data sources have none of them.
        tiny = [t for t in tiny if not t.startswith("data.")]
    if "trainer=lstsq" in overrides:
        # trainer=lstsq has no progress bar and always one step.
        tiny = [t for t in tiny if not t.startswith("trainer.")]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(config_name="train", overrides=[*tiny, *overrides])


@pytest.fixture(autouse=True, scope="session")
def step_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The suite's own record of ``trainer.jit_compile=auto``'s picks, empty at the start: the tests
    neither read nor write the user's (convlearn/step_cache.py)."""
    folder = tmp_path_factory.mktemp("step_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONVLEARN_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture
def make_cfg():
    """:func:`tiny_cfg`, for tests that take it as a fixture."""
    return tiny_cfg
