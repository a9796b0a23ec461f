"""Grow a classification head for new classes, keeping the rows of the classes it knows."""

from __future__ import annotations

import torch
from torch import nn


def _in_head(name: str, head_names: list[str]) -> bool:
    dotted = f".{name}."
    return any(f".{head}." in dotted for head in head_names)


@torch.no_grad()
def grow_head(model: nn.Module, head_names: list[str], old: int, new: int) -> int:
    """Widen every output layer of the head from ``old`` to ``new`` classes; returns how many layers grew.

    The output layers are the ``nn.Linear`` modules under ``head_names`` with ``old`` outputs:
    the head itself, and under peft its frozen original and each adapter's trainable copy.
    The new rows start like a fresh ``nn.Linear``; the old rows are copied unchanged.
    """
    if new <= old:
        return 0
    grown = 0
    for name, module in list(model.named_modules()):
        if not (isinstance(module, nn.Linear) and module.out_features == old and _in_head(name, head_names)):
            continue
        wider = nn.Linear(module.in_features, new, bias=module.bias is not None,
                          device=module.weight.device, dtype=module.weight.dtype)
        wider.weight[:old] = module.weight
        if module.bias is not None:
            wider.bias[:old] = module.bias
        wider.requires_grad_(module.weight.requires_grad)
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if isinstance(parent, nn.ModuleDict):
            parent[attr] = wider
        else:
            setattr(parent, attr, wider)
        grown += 1
    if not grown:
        raise ValueError(f"no {old}-output linear layer found under the head modules {head_names}")
    for module in model.modules():  # keep the models' own records of their size in step
        if getattr(module, "num_classes", None) == old:
            module.num_classes = new
        config = getattr(module, "config", None)
        if getattr(config, "num_labels", None) == old and hasattr(config, "id2label"):
            config.num_labels = new
    return grown
