"""A linear probe: the backbone frozen, only the new head trained and saved (``head.safetensors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hf_adapt.backbones import Backbone
from hf_adapt.errors import ModelError
from hf_adapt.regimes.base import Regime

HEAD_FILE = "head.safetensors"


class LinearProbe(Regime):
    name = "linear_probe"
    keeps_base = True

    def apply(self, backbone: Backbone, adapter: dict[str, Any] | None) -> nn.Module:
        model = backbone.model
        model.requires_grad_(False)
        modules = dict(model.named_modules())
        for name in backbone.head_names:
            modules[name].requires_grad_(True)
        return model

    def save(self, model: nn.Module, backbone: Backbone, directory: Path, state: dict[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        prefixes = tuple(f"{name}." for name in backbone.head_names)
        state = model.state_dict() if state is None else state
        save_file({k: v.contiguous() for k, v in state.items() if k.startswith(prefixes)}, str(directory / HEAD_FILE))

    def check(self, directory: Path) -> None:
        from hf_adapt.weights import check_weights_file

        check_weights_file(directory / HEAD_FILE)

    def restore(self, backbone: Backbone, directory: Path, trainable: bool = False) -> nn.Module:
        from safetensors.torch import load_file

        model = backbone.model
        head = load_file(str(directory / HEAD_FILE))
        missing = set(head) - set(model.state_dict())
        if missing:
            raise ModelError(f"{directory / HEAD_FILE} holds tensors the model lacks: {sorted(missing)[:5]}")
        model.load_state_dict(head, strict=False)
        return self.apply(backbone, None) if trainable else model

    def describe(self, adapter: dict[str, Any] | None) -> str:
        return "a linear probe"
