"""Full fine-tuning, every weight trained and saved (``model.safetensors``); gradual unfreezing is full
fine-tuning whose layers start training top first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hf_adapt.backbones import Backbone
from hf_adapt.regimes.base import Regime

MODEL_FILE = "model.safetensors"


class Full(Regime):
    name = "full"
    pretrains = True

    def apply(self, backbone: Backbone, adapter: dict[str, Any] | None) -> nn.Module:
        backbone.model.requires_grad_(True)
        return backbone.model

    def save(self, model: nn.Module, backbone: Backbone, directory: Path, state: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file, save_model

        if state is None:
            save_model(model, str(directory / MODEL_FILE))  # tied weights once
        else:  # gathered from shards: tied weights arrive as separate copies, each saved
            save_file({k: v.contiguous() for k, v in state.items()}, str(directory / MODEL_FILE))

    def check(self, directory: Path) -> None:
        from hf_adapt.weights import check_weights_file

        check_weights_file(directory / MODEL_FILE)

    def restore(self, backbone: Backbone, directory: Path, trainable: bool = False) -> nn.Module:
        from safetensors.torch import load_model

        load_model(backbone.model, str(directory / MODEL_FILE))
        return self.apply(backbone, None) if trainable else backbone.model

    def describe(self, adapter: dict[str, Any] | None) -> str:
        return "full fine-tuning"


class GradualUnfreezing(Full):
    """Every weight trainable, as in :class:`Full`; the loop's ``GradualUnfreeze`` callback drops the gradients of
    the layers not yet unfrozen, from the head down, one more group every few epochs. It saves what ``full`` saves."""

    name = "gradual_unfreeze"
    pretrains = False
    continual = False  # its unfreezing schedule runs once, over one task's epochs

    def callbacks(self, backbone: Backbone, unfreeze_every_epochs: int) -> list[Any]:
        from hf_adapt.loop import GradualUnfreeze

        return [GradualUnfreeze(backbone.head_names, unfreeze_every_epochs)]

    def describe(self, adapter: dict[str, Any] | None) -> str:
        return "gradual unfreezing (full fine-tuning, top layers first)"
