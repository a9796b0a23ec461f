"""Training regimes, registered by name: how a backbone becomes the model to train, and how it is saved and restored.

A regime is one file with a :class:`~hf_adapt.regimes.base.Regime` subclass and one line in the
registry below (or a :func:`register_regime` call for one of your own). Each knows what it trains
(:meth:`~Regime.apply`), which files it writes and how to check them (:meth:`~Regime.save`,
:meth:`~Regime.check`), how to put them back on a fresh backbone (:meth:`~Regime.restore`) and how a
card describes it. Nothing outside this package branches on a regime's name.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any

from hf_adapt.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from hf_adapt.backbones import Backbone
    from hf_adapt.regimes.base import Regime

# name -> "module:Class" (imported on first use) or a Regime instance
_REGISTRY: dict[str, str | Regime] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_regime(name: str, regime: str | Regime) -> None:
    """Make ``regime: name`` available; ``regime`` is an instance or a lazy ``"module:Class"`` path."""
    if not _NAME.match(name):
        raise ValueError(f"regime name {name!r} must match {_NAME.pattern}")
    if name in _REGISTRY:
        raise ValueError(f"regime {name!r} is already registered ({_REGISTRY[name]})")
    if isinstance(regime, str) and ":" not in regime:
        raise ValueError(f"lazy regime path {regime!r} must look like 'package.module:Class'")
    _REGISTRY[name] = regime


def registered_regimes() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_regime(name: str) -> Regime:
    """The regime ``name``; an unknown name is a ``ConfigError`` listing the registered ones."""
    if name not in _REGISTRY:
        raise ConfigError(f"regime {name!r} is not one of {list(_REGISTRY)}")
    regime = _REGISTRY[name]
    if isinstance(regime, str):
        module, _, attr = regime.partition(":")
        regime = getattr(importlib.import_module(module), attr)()
        if regime.name != name:
            raise ValueError(f"regime {name!r} resolved to a {type(regime).__name__} named {regime.name!r}")
        _REGISTRY[name] = regime
    return regime


def apply_regime(backbone: Backbone, regime: str, adapter: dict[str, Any] | None) -> nn.Module:
    """The model to train on ``backbone``: peft-wrapped, head-only trainable, or fully trainable."""
    return get_regime(regime).apply(backbone, adapter)


register_regime("adapter", "hf_adapt.regimes.adapter:Adapter")
register_regime("linear_probe", "hf_adapt.regimes.linear_probe:LinearProbe")
register_regime("full", "hf_adapt.regimes.full:Full")
register_regime("gradual_unfreeze", "hf_adapt.regimes.full:GradualUnfreezing")
