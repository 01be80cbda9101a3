"""Train from Python, in a notebook or a script, with the configs and overrides of the command line.

    from convlearn.api import train
    result = train("model=linear", "target=gaussian", "target.size=5", "trainer=lstsq")
    result.metrics["rel_mse"], result.kernels["conv_00"], result.history.losses, result.run_dir

:func:`compose` builds the config exactly as ``python train.py`` does (``configs/train.yaml``, the
same defaults, presets and checks); :func:`train` runs it through :func:`convlearn.pipeline.run_experiment`
into a fresh run dir under ``outputs/`` and returns its :class:`~convlearn.pipeline.RunResult`. A
mistake raises :class:`~convlearn.errors.ConvlearnError` with the one line the command line prints;
nothing calls ``sys.exit``. TensorFlow is imported on the first :func:`train`, not with this module.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import DictConfig

from convlearn.config import composition_error
from convlearn.errors import ConvlearnError

if TYPE_CHECKING:
    from convlearn.pipeline import RunResult

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def compose(*overrides: str) -> DictConfig:
    """The run's config from ``configs/train.yaml`` and ``key=value`` overrides, as ``train.py`` composes it."""
    if not CONFIGS.is_dir():
        raise ConvlearnError(f"convlearn.api: no configs folder at {CONFIGS}; use convlearn from its checkout")
    sweeps = [o for o in overrides if o.startswith(("hparams_search=", "-m", "--multirun"))]
    if sweeps:
        raise ConvlearnError(f"{sweeps[0]}: sweeps run from the command line (python train.py -m ...); "
                             "train() runs one experiment")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        try:
            return hydra_compose(config_name="train", overrides=list(overrides))
        except (ConfigCompositionException, OverrideParseException) as err:
            raise composition_error(err) from None


def train(*overrides: str, run_dir: str | Path | None = None) -> RunResult:
    """Compose the config from ``overrides`` and run it into ``run_dir`` (default: a new
    ``outputs/<date>/<time>`` folder, as the command line makes)."""
    cfg = compose(*overrides)
    from convlearn.pipeline import run_experiment  # imports TensorFlow (seconds)

    return run_experiment(cfg, Path(run_dir) if run_dir is not None else new_run_dir(), overrides)


def new_run_dir(root: Path = Path("outputs")) -> Path:
    """``outputs/<date>/<time with microseconds>``, the command line's pattern (configs/hydra/default.yaml)."""
    now = datetime.now()
    return root / now.strftime("%Y-%m-%d") / now.strftime("%H-%M-%S-%f")
