"""QLoRA: a transformers base model loaded in 4-bit (or 8-bit) through bitsandbytes, with a peft adapter trained on
top (``peft.prepare_model_for_kbit_training``).

``quantization`` is a dict of ``transformers.BitsAndBytesConfig`` fields, e.g. ::

    quantization: {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: bfloat16,
                   bnb_4bit_use_double_quant: true}

Checked twice: when the config is read (known fields, one of ``load_in_4bit``/``load_in_8bit``, a transformers
backbone, the adapter regime) and when the model is built (bitsandbytes installed, a CUDA GPU present), so a
machine that cannot run it refuses before training, naming what is missing. Only the adapter (and head) is
saved; the record keeps the quantization, and ``load_adapted`` rebuilds the base at full precision (the adapter
was trained against the dequantized 4-bit weights, so its logits differ from training's by the quantization
error). No weights fingerprint is recorded for a quantized base: its packed weights match no full-precision
reload.
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

from hf_adapt.errors import ConfigError

EXTRA = "pip install 'hf-adapt[qlora]'"


def _config_fields() -> set[str]:
    from transformers import BitsAndBytesConfig

    return set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"}


def check_quantization(quantization: dict[str, Any] | None, family: str = "transformers",
                       regime: str = "adapter") -> None:
    """The config-time checks (no GPU needed): a mapping of known fields that turns 4- or 8-bit loading on, for a
    transformers backbone under the adapter regime."""
    if quantization is None:
        return
    if not isinstance(quantization, dict):
        raise ConfigError(f"quantization must be a mapping of BitsAndBytesConfig fields, e.g. {{load_in_4bit: true, "
                          f"bnb_4bit_quant_type: nf4}}, got {quantization!r}")
    unknown = sorted(set(quantization) - _config_fields())
    if unknown:
        raise ConfigError(f"quantization: unknown field(s) {unknown}; BitsAndBytesConfig takes "
                          f"{sorted(_config_fields())}")
    if bool(quantization.get("load_in_4bit")) == bool(quantization.get("load_in_8bit")):
        raise ConfigError("quantization: set exactly one of load_in_4bit: true (QLoRA) or load_in_8bit: true")
    if family not in ("transformers", "auto"):
        raise ConfigError(f"quantization loads transformers models through bitsandbytes; family {family!r} has no "
                          "such path: leave quantization unset")
    if regime != "adapter":
        raise ConfigError(f"quantization trains an adapter on frozen quantized weights (QLoRA); regime {regime!r} "
                          "would train or save the quantized weights themselves: use regime: adapter")


def require_runtime() -> None:
    """Refuse a machine that cannot load a bitsandbytes model: the package missing, or no CUDA GPU."""
    import torch

    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"quantization needs bitsandbytes, which is not installed: {EXTRA}")
    if not torch.cuda.is_available():
        raise ConfigError("quantization needs a CUDA GPU (bitsandbytes' 4- and 8-bit kernels); this machine has "
                          "none. Leave quantization unset to train at full precision here")


def load_kwargs(quantization: dict[str, Any] | None) -> dict[str, Any]:
    """``from_pretrained`` keyword arguments that load the model quantized onto this process's GPU; none without
    ``quantization``."""
    if not quantization:
        return {}
    require_runtime()
    from accelerate import PartialState
    from transformers import BitsAndBytesConfig

    return {"quantization_config": BitsAndBytesConfig(**quantization),
            "device_map": {"": PartialState().local_process_index}}


def prepare(model: Any, quantization: dict[str, Any] | None) -> Any:
    """A quantized model made ready for adapter training (norms in float32, input gradients on); others as they
    are."""
    if not quantization:
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def describe(quantization: dict[str, Any] | None) -> str | None:
    """One line for the card: how the base was quantized during training."""
    if not quantization:
        return None
    if quantization.get("load_in_8bit"):
        return "8-bit (bitsandbytes LLM.int8), adapter trained on top"
    parts = [f"4-bit {quantization.get('bnb_4bit_quant_type', 'fp4')}"]
    if quantization.get("bnb_4bit_use_double_quant"):
        parts.append("double quantization")
    if quantization.get("bnb_4bit_compute_dtype"):
        parts.append(f"compute in {quantization['bnb_4bit_compute_dtype']}")
    return ", ".join(parts) + " (bitsandbytes; QLoRA: the adapter trained on the quantized base)"
