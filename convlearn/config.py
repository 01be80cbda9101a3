"""Building objects from the composed Hydra config.

Config groups (``configs/data``, ``configs/model``...) name their classes with ``_target_``;
:func:`build` instantiates one group and turns a user's mistake in it into a one-line
:class:`ConvlearnError` that names the group, instead of Hydra's wrapped traceback.
"""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from convlearn.errors import ConvlearnError


def build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """Instantiate ``cfg[group]`` with extra keyword arguments."""
    try:
        return instantiate(cfg[group], **kwargs)
    except (InstantiationException, OmegaConfBaseException) as err:
        raise _explain(group, err) from err


def _explain(group: str, err: Exception) -> Exception:
    """The user-facing cause of an instantiation failure, or the failure itself if it is a bug."""
    cause: BaseException | None = err
    while cause is not None:
        if isinstance(cause, ConvlearnError):
            return cause
        if isinstance(cause, TypeError) and "argument" in str(cause):
            return ConvlearnError(f"{group}: {cause}")
        if isinstance(cause, OmegaConfBaseException):
            return ConvlearnError(f"{group}: {str(cause).splitlines()[0]}")
        cause = cause.__cause__
    if "Error locating target" in str(err):
        return ConvlearnError(f"{group}: {str(err).splitlines()[0]}")
    return err
