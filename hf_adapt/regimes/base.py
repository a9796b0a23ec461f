"""What every training regime provides; see :mod:`hf_adapt.regimes`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hf_adapt.backbones import Backbone


class Regime:
    """A way to train a backbone: which weights train, and the smallest files that restore them."""

    name: str
    #: pinned to its pretrained base: the output records the base's weights fingerprint and loading checks it
    keeps_base = False
    #: trains a peft adapter described by the config's ``adapter`` dict
    uses_adapter = False
    #: continued pretraining (language modelling, or supervised on a source task) can train with it
    pretrains = False
    #: the continual recipe can train it one experience after another
    continual = True

    def check_config(self, adapter: dict[str, Any] | None) -> None:
        """Refuse, at config time, settings this regime cannot train with (default: none to check)."""

    def apply(self, backbone: Backbone, adapter: dict[str, Any] | None) -> nn.Module:
        """The model to train, built on ``backbone.model``, with exactly the weights this regime trains trainable."""
        raise NotImplementedError

    def callbacks(self, backbone: Backbone, unfreeze_every_epochs: int) -> list[Any]:
        """Loop callbacks the regime needs while training (default: none)."""
        return []

    def save(self, model: nn.Module, backbone: Backbone, directory: Path, state: dict[str, Any] | None = None) -> None:
        """Write what restores the trained model onto a fresh backbone; ``state``: the model's full state dict when
        its parameters are sharded (FSDP2, ZeRO-3; see :func:`hf_adapt.artifacts.gathered_state`), else read off
        ``model``."""
        raise NotImplementedError

    def check(self, directory: Path) -> None:
        """The files :meth:`save` wrote are present and whole; reads no tensor (before the base model loads)."""
        raise NotImplementedError

    def restore(self, backbone: Backbone, directory: Path, trainable: bool = False) -> nn.Module:
        """The saved weights on a fresh ``backbone`` (``trainable``: ready to train on, as :meth:`apply` leaves it)."""
        raise NotImplementedError

    def describe(self, adapter: dict[str, Any] | None) -> str:
        """How the card says the model was trained, e.g. "a peft LORA adapter"."""
        raise NotImplementedError
