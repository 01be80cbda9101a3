"""Check the composed config before anything is built, so a typo fails in a second, in one line.

The schema of every config node is the signature of the callable its ``_target_`` names: its
parameters are the allowed keys, its type hints the allowed types, its parameters without a
default the required keys; a class whose ``__init__`` passes ``**settings`` on to its base class
takes the base's parameters too (:func:`_parameters`). That keeps one source of truth (the code the
config calls) instead of a second copy of every YAML file as dataclasses. What a type hint cannot say (``lr > 0``) is listed
in :data:`RULES`, by callable and parameter, so it applies wherever that callable is used.
Nested nodes (a target's steps, their kernels) are checked the same way, recursively.

A config is code: a ``_target_`` names a callable that building the config will call. Only
callables of convlearn and Keras are built (and imported: the name is checked before anything is
imported); others must be trusted explicitly, by module, in the environment variable
``CONVLEARN_TRUSTED_TARGETS`` (comma-separated, e.g. ``CONVLEARN_TRUSTED_TARGETS=mylab.models``).
Numbers must be finite: ``inf`` and ``nan`` are refused wherever the config has a number.
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from convlearn.errors import ConvlearnError

GROUPS = ("data", "target", "model", "optimizer", "trainer", "logger")

# Hydra's own keys in a node; they are not arguments of the callable.
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


# Modules whose callables a config may name without the user trusting more.
TRUSTED_MODULES = ("convlearn", "keras")

# Where the user lists further trusted modules (comma-separated).
TRUST_VARIABLE = "CONVLEARN_TRUSTED_TARGETS"


def trusted_modules() -> tuple[str, ...]:
    """convlearn, Keras, and the modules the user trusts in ``CONVLEARN_TRUSTED_TARGETS``."""
    extra = [name.strip() for name in os.environ.get(TRUST_VARIABLE, "").split(",") if name.strip()]
    return (*TRUSTED_MODULES, *extra)


def check_trusted(name: str, where: str, modules: Sequence[str]) -> None:
    """Refuse a dotted callable name outside ``modules``, before anything is imported."""
    if not any(name == module or name.startswith(module + ".") for module in modules):
        raise ConvlearnError(
            f"{where}: {name!r} is outside {', '.join(modules)}; a config only builds their callables "
            f"(trust another module with {TRUST_VARIABLE}=<module>)"
        )


def check_targets(node: Any, path: str, modules: Sequence[str]) -> None:
    """Refuse every ``_target_`` in ``node`` (recursively) that is outside ``modules``; imports nothing.

    For configs read from a run dir (``scripts/inspect_run.py``): they are built with
    ``modules=("convlearn",)`` whatever the environment trusts."""
    if isinstance(node, DictConfig):
        for key in node:
            where = f"{path}.{key}"
            if key == "_target_":
                check_trusted(str(_get(node, key, path)), where, modules)
            else:
                check_targets(_get(node, key, path), where, modules)
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            check_targets(_get(node, index, path), f"{path}[{index}]", modules)


def trusted_class(value: Any) -> str | None:
    """A rule for keys that name a class to import (``optimizer.cls``)."""
    modules = trusted_modules()
    if not isinstance(value, str) or any(value.startswith(module + ".") for module in modules):
        return None
    return f"must name a class of {', '.join(modules)} (trust another module with {TRUST_VARIABLE}=<module>)"


def at_least(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if not isinstance(value, (int, float)) or value >= low else f"must be >= {low:g}"

    return check


def above(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if not isinstance(value, (int, float)) or value > low else f"must be > {low:g}"

    return check


# Limits a type hint cannot express, keyed by the callable's import path. Limits that the
# callable already checks itself (data=shapes' sizes, Repeat.n) are not repeated here.
RULES: dict[str, dict[str, Callable[[Any], str | None]]] = {
    "convlearn.training.Trainer": {
        "steps": at_least(1),
        "val_every": at_least(1),
        "checkpoint_every": at_least(0),
        "keep_checkpoints": at_least(1),
    },
    "convlearn.optim.make_optimizer": {
        "lr": above(0), "decay_steps": at_least(1), "warmup_steps": at_least(0), "cls": trusted_class,
    },
    "convlearn.data.generated_shapes": {"noise": at_least(0)},
    "convlearn.data.generated_noise": {"std": above(0)},
    "convlearn.models.linear": {"kernel_size": at_least(1)},
    "convlearn.models.notebook": {
        "edge_filters": at_least(1), "width": at_least(1), "blur_layers": at_least(0), "blur_filters": at_least(1),
    },
    "convlearn.logs.TensorBoardLogger": {"scalar_every": at_least(1), "image_every": at_least(0)},
}


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConvlearnError` for the first mistake in the config groups, naming its key."""
    for group in GROUPS:
        if group not in cfg:
            raise ConvlearnError(f"{group}: missing config group; pick one with {group}=<name>")
        _check_node(cfg[group], group)


def _check_node(node: Any, path: str) -> None:
    """Check one node: a ``_target_`` mapping against its callable, or the nodes it contains."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            _check_call(node, path)
        else:
            for key in node:
                _check_node(_get(node, key, path), f"{path}.{key}")
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            _check_node(_get(node, index, path), f"{path}[{index}]")


def _check_call(node: DictConfig, path: str) -> None:
    target = _get(node, "_target_", path)
    check_trusted(str(target), f"{path}._target_", trusted_modules())
    try:
        fn = _locate(str(target))
    except (ImportError, AttributeError, ValueError):
        raise ConvlearnError(
            f"{path}._target_: cannot import {target!r}; it must name an importable callable"
        ) from None
    if not callable(fn):
        raise ConvlearnError(f"{path}._target_: {target!r} is not callable")
    params, hints = _parameters(fn)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = [name for name, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    rules = _rules(fn, str(target))
    for key in node:
        key = str(key)
        if key in HYDRA_KEYS:
            continue
        where = f"{path}.{key}"
        if key not in params and not takes_any:
            takes = f"takes {', '.join(sorted(named))}" if named else "takes no arguments"
            raise ConvlearnError(f"{where}: unknown key; {target} {takes}")
        value = _get(node, key, path)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConvlearnError(f"{where}: must be a finite number, got {value}")
        if key in hints:
            problem = _type_problem(value, hints[key])
            if problem:
                raise ConvlearnError(f"{where}: {problem}, got {_show(value)}")
        if key in rules:
            problem = _rule_problem(rules[key], value)
            if problem:
                raise ConvlearnError(f"{where}: {problem}, got {_show(value)}")
        _check_node(value, where)
    if not node.get("_partial_", False):
        for name, p in params.items():
            if p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in node:
                raise ConvlearnError(f"{path}.{name}: missing; {target} needs it (add {path}.{name}=...)")


def _locate(dotted: str) -> Any:
    """The object at a dotted path: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


def _get(node: DictConfig | ListConfig, key: str | int, path: str) -> Any:
    """A child with interpolations resolved; a ``???`` or broken interpolation says which key."""
    where = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
    if isinstance(node, DictConfig) and OmegaConf.is_missing(node, key):
        raise ConvlearnError(f"{where}: no value given; set it on the command line ({where}=...)")
    try:
        return node[key]
    except OmegaConfBaseException as err:
        raise ConvlearnError(f"{where}: {str(err).splitlines()[0]}") from None


def _rules(fn: Callable, target: str) -> dict[str, Callable[[Any], str | None]]:
    """The :data:`RULES` of ``target``, and of its base classes: a subclass takes its base's settings."""
    bases = [f"{cls.__module__}.{cls.__qualname__}" for cls in fn.__mro__[::-1]] if inspect.isclass(fn) else []
    return {key: rule for name in [*bases, target] for key, rule in RULES.get(name, {}).items()}


def _parameters(fn: Callable) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    """The parameters ``fn`` takes and their type hints. A class whose ``__init__`` takes
    ``**settings`` hands them to its base class (``super().__init__(**settings)``), so it takes
    the first base's parameters as well, down the classes until one takes no ``**``."""
    params, hints = dict(inspect.signature(fn).parameters), _hints(fn)
    if inspect.isclass(fn):
        for base in fn.__mro__[1:]:
            rest = [name for name, p in params.items() if p.kind is p.VAR_KEYWORD]
            if not rest or base.__init__ is object.__init__:
                break
            del params[rest[0]]
            inherited = inspect.signature(base.__init__).parameters
            params.update({name: p for name, p in inherited.items() if name != "self" and name not in params})
            hints = {**_hints(base), **hints}
    return params, hints


def _hints(fn: Callable) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn.__init__ if inspect.isclass(fn) else fn)
    except Exception:
        # A callable whose hints cannot be resolved is checked for keys only.
        return {}


def _type_problem(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit ``hint``, or None if it does (or the hint is not checkable)."""
    if isinstance(value, DictConfig) and "_target_" in value:
        return None  # built by Hydra; its own arguments are checked recursively
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        problems = [_type_problem(value, arg) for arg in args]
        return None if None in problems else " or ".join(dict.fromkeys(problems))
    if origin is typing.Literal:
        return None if value in args else f"must be one of {', '.join(repr(a) for a in args)}"
    if hint is type(None):
        return None if value is None else "expected null"
    if hint is bool:
        return None if isinstance(value, bool) else "expected true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "expected an integer"
    if hint is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "expected a number"
    if hint is str or hint is Path:
        return None if isinstance(value, str) else "expected a string"
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence) and origin is not str:
        if not isinstance(value, ListConfig):
            return "expected a list"
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                return f"expected a list of {len(args)} values"
            item_hints = list(args)
        else:
            item_hints = [args[0] if args else Any] * len(value)
        for item, item_hint in zip(value, item_hints):
            problem = _type_problem(item, item_hint)
            if problem:
                return f"every item: {problem}"
        return None
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return None if isinstance(value, DictConfig) else "expected a mapping"
    return None  # arrays, models, Any: Hydra builds them; the callable checks them


def _rule_problem(rule: Callable[[Any], str | None], value: Any) -> str | None:
    """Apply a limit to a value, or to each value of a list (``kernel_size: [3, 5]``)."""
    if isinstance(value, ListConfig):
        return next((p for p in (_rule_problem(rule, item) for item in value) if p), None)
    return None if isinstance(value, bool) else rule(value)


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        return repr(OmegaConf.to_container(value, resolve=True))
    return repr(value)
