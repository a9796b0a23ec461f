"""Training regimes, registered by name: how a backbone becomes the model to train, and how it is saved and restored.

A regime is one file with a :class:`~hf_adapt.regimes.base.Regime` subclass and one line in the
registry below (or a :func:`register_regime` call for one of your own). Each knows what it trains
(:meth:`~Regime.apply`), which files it writes and how to check them (:meth:`~Regime.save`,
:meth:`~Regime.check`), how to put them back on a fresh backbone (:meth:`~Regime.restore`) and how a
card describes it. Nothing outside this package branches on a regime's name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hf_adapt.registry import Registry

if TYPE_CHECKING:
    from torch import nn

    from hf_adapt.backbones import Backbone
    from hf_adapt.regimes.base import Regime

_REGIMES: Registry[Regime] = Registry("regime")


def register_regime(name: str, regime: str | Regime) -> None:
    """Make ``regime: name`` available; ``regime`` is an instance or a lazy ``"module:Class"`` path."""
    _REGIMES.register(name, regime)


def registered_regimes() -> tuple[str, ...]:
    return _REGIMES.names()


def get_regime(name: str) -> Regime:
    """The regime ``name``; an unknown name is a ``ConfigError`` listing the registered ones."""
    return _REGIMES.get(name)


def regimes_that(capability: str) -> tuple[str, ...]:
    """The registered regimes whose ``capability`` flag (e.g. ``"pretrains"``, ``"continual"``) is set."""
    return tuple(name for name in registered_regimes() if getattr(get_regime(name), capability))


def apply_regime(backbone: Backbone, regime: str, adapter: dict[str, Any] | None) -> nn.Module:
    """The model to train on ``backbone``: peft-wrapped, head-only trainable, or fully trainable."""
    return get_regime(regime).apply(backbone, adapter)


register_regime("adapter", "hf_adapt.regimes.adapter:Adapter")
register_regime("linear_probe", "hf_adapt.regimes.linear_probe:LinearProbe")
register_regime("full", "hf_adapt.regimes.full:Full")
register_regime("gradual_unfreeze", "hf_adapt.regimes.full:GradualUnfreezing")


def regime_facts(regime: str, adapter: dict[str, Any] | None) -> dict[str, Any]:
    """What a card says about the regime: its name, and the adapter config where the regime trains one."""
    return {"regime": regime, "adapter": adapter if get_regime(regime).uses_adapter else None}
