"""Continual (incremental) learning: experiences, strategies as hooks on the one loop, and forgetting metrics.

A strategy is one file with a :class:`~hf_adapt.continual.base.Strategy` subclass and one line
in :data:`STRATEGIES` (or a :func:`register_strategy` call for one of your own). Strategies
are imported only when a run asks for them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hf_adapt.errors import ConfigError

if TYPE_CHECKING:
    from hf_adapt.continual.base import Strategy

# name -> "module:Class" (imported when used) or the class itself
STRATEGIES: dict[str, str | type] = {
    "naive": "hf_adapt.continual.naive:Naive",
    "replay": "hf_adapt.continual.replay:Replay",
    "ewc": "hf_adapt.continual.ewc:EWC",
    "lwf": "hf_adapt.continual.lwf:LwF",
    "adapter_per_experience": "hf_adapt.continual.adapter_per_experience:AdapterPerExperience",
    "joint": "hf_adapt.continual.joint:Joint",
}


def register_strategy(name: str, target: str | type) -> None:
    """Make ``strategy: name`` available; ``target`` is a Strategy subclass or its ``"module:Class"`` path."""
    if not name.isidentifier():
        raise ValueError(f"strategy name {name!r} must be an identifier")
    if name in STRATEGIES:
        raise ValueError(f"strategy {name!r} is already registered ({STRATEGIES[name]})")
    from hf_adapt.continual.base import Strategy

    if not isinstance(target, str) and not (isinstance(target, type) and issubclass(target, Strategy)):
        raise TypeError(f"strategy {name!r}: {target!r} is neither a Strategy subclass nor a 'module:Class' path")
    STRATEGIES[name] = target


def strategy_class(name: str) -> type[Strategy]:
    if name not in STRATEGIES:
        raise ConfigError(f"strategy {name!r} is not one of {sorted(STRATEGIES)}")
    target = STRATEGIES[name]
    if isinstance(target, type):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_strategy(name: str, options: dict[str, Any] | None = None) -> Strategy:
    """The strategy ``name`` with its ``strategy_options``; unknown or ill-typed options are a ConfigError."""
    cls = strategy_class(name)
    try:
        return cls(**(options or {}))
    except TypeError as err:
        raise ConfigError(f"strategy_options for {name!r}: {err}") from err
