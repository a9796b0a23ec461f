"""A peft adapter (LoRA, DoRA, IA3, LoHa, LoKr, prompt methods ...) with the new head in ``modules_to_save``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hf_adapt.backbones import Backbone
from hf_adapt.errors import ConfigError, ModelError
from hf_adapt.regimes.base import Regime


class Adapter(Regime):
    name = "adapter"
    keeps_base = True
    uses_adapter = True
    pretrains = True

    def check_config(self, adapter: dict[str, Any] | None) -> None:
        from hf_adapt.adapters import check_adapter

        check_adapter(adapter)

    def apply(self, backbone: Backbone, adapter: dict[str, Any] | None) -> nn.Module:
        from peft import get_peft_model

        from hf_adapt import quantization
        from hf_adapt.adapters import make_peft_config

        if not adapter:
            raise ConfigError("regime 'adapter' needs an adapter dict, e.g. {peft_type: LORA, r: 8}")
        peft_config = make_peft_config(adapter, backbone)
        model = quantization.prepare(backbone.model, backbone.info.get("quantization"))  # QLoRA
        try:
            return get_peft_model(model, peft_config)
        except ValueError as err:  # e.g. targets that match no module
            raise ConfigError(f"adapter could not be attached to {backbone.family} model: {err}") from err

    def save(self, model: nn.Module, backbone: Backbone, directory: Path, state: dict[str, Any] | None = None) -> None:
        model.save_pretrained(str(directory), **({"state_dict": state} if state is not None else {}))

    def check(self, directory: Path) -> None:
        from hf_adapt.weights import check_safetensors

        check_safetensors(directory)

    def restore(self, backbone: Backbone, directory: Path, trainable: bool = False) -> nn.Module:
        from peft import PeftModel

        self.check(directory)
        try:
            return PeftModel.from_pretrained(backbone.model, str(directory), is_trainable=trainable)
        except RuntimeError as err:  # e.g. a head of another size than label_map.json's labels
            if "size mismatch" not in str(err):
                raise
            raise ModelError(f"{directory}: the adapter does not fit the model its hf_adapt.json and label_map.json "
                             f"describe (base model or number of labels differ): {str(err).splitlines()[-1].strip()}") from err

    def describe(self, adapter: dict[str, Any] | None) -> str:
        return f"a peft {(adapter or {}).get('peft_type', '')} adapter"
