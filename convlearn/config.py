"""Composing and building objects from the Hydra config.

Config groups (``configs/data``, ``configs/model``...) name their classes with ``_target_``;
:func:`build` instantiates one group and turns a user's mistake in it into a one-line
:class:`ConvlearnError` that names the group, instead of Hydra's wrapped traceback.
:func:`one_line_composition_errors` does the same for the mistakes Hydra finds while composing
the config from the command line (``model=bogus``, ``trainer.stepz=3``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import hydra._internal.utils as hydra_utils
from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from hydra.utils import instantiate
from omegaconf import DictConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from convlearn.errors import ConvlearnError, full_error_wanted

T = TypeVar("T")


def build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """Instantiate ``cfg[group]`` with extra keyword arguments."""
    try:
        return instantiate(cfg[group], **kwargs)
    except (InstantiationException, OmegaConfBaseException) as err:
        raise _explain(group, err) from err


def flatten(tree: object, prefix: str = "") -> dict[str, object]:
    """A nested dict/list (a config as containers) as ``{"trainer.steps": 12, "target.steps[0].size": 5}``."""
    if isinstance(tree, dict):
        return {k: v for key, child in tree.items() for k, v in flatten(child, f"{prefix}{key}.").items()}
    if isinstance(tree, list):
        return {k: v for i, child in enumerate(tree) for k, v in flatten(child, f"{prefix[:-1]}[{i}].").items()}
    return {prefix[:-1]: tree}


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


@contextmanager
def one_line_composition_errors() -> Iterator[None]:
    """While active, a config Hydra cannot compose stops the program with one ``convlearn: error:`` line.

    ``@hydra.main`` composes the config from the command line before ``main`` runs, so a mistyped
    option never reaches convlearn's own checks, and Hydra prints a multi-line message of its own.
    Hydra 1.3 has no hook for that message: this wraps the function that runs composing and the
    task and reports their errors (``hydra._internal.utils.run_and_report``, stable under the
    pinned hydra-core 1.3.8). Other errors, and these with ``HYDRA_FULL_ERROR=1``, keep Hydra's report.
    """
    report = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], T]) -> T:
        return report(lambda: _exit_on_composition_error(func))

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = report


def _exit_on_composition_error(func: Callable[[], T]) -> T:
    """``func()``, exiting with one line if it fails to compose the config."""
    try:
        return func()
    except (ConfigCompositionException, OverrideParseException) as err:
        if full_error_wanted():
            raise
        sys.exit(f"convlearn: error: {composition_error(err)}")


def composition_error(err: ConfigCompositionException | OverrideParseException) -> ConvlearnError:
    """One line for a config Hydra could not compose: the key or option, the bad value, what is allowed.

    Hydra's errors carry the pieces for the common mistakes: the options of a config group
    (``model=bogus``), the node that lacks a key (``trainer.stepz=3`` without ``+``) and the override
    that does not parse (``model=[``); any other keeps Hydra's own words, on one line."""
    cause = err.__cause__
    if isinstance(err, MissingConfigException) and err.options:
        group, _, option = err.missing_cfg_file.rpartition("/")
        return ConvlearnError(f"{group}={option}: no such option; {group} is one of {', '.join(err.options)}")
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and isinstance(cause.parent_node, DictConfig):
        key = cause.full_key
        message = f"{key}: no such key in the config (add it with +{key}=... if it is meant to be new)"
        keys = sorted(k for k in cause.parent_node if not k.startswith("_"))
        if keys:
            message += f"; {key.rpartition('.')[0] or 'the config'} has {', '.join(keys)}"
        return ConvlearnError(message)
    if isinstance(err, OverrideParseException):
        return ConvlearnError(f"{err.override}: cannot parse it: {_sentences(err.message)}")
    return ConvlearnError(_sentences(str(err) or str(cause)))


def _sentences(text: str) -> str:
    """The first paragraph of a multi-line Hydra message as one line, its lines joined as sentences."""
    lines = text.strip().split("\n\n")[0].splitlines()
    return ". ".join(line.strip().rstrip(".") for line in lines if line.strip())
