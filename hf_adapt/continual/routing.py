"""Which adapter and which classes answer an input: shared by training-time evaluation and serving.

- A task-incremental model knows the task of each input: only that task's classes compete, and
  with one adapter per experience, that experience's adapter answers.
- With one adapter per experience and no task id, every adapter scores the input over its own
  experience's classes and the most confident one answers (``confidence`` routing).
- A multi-label model's labels are independent: each label's output comes from the adapter of the
  experience that annotates it (``label`` routing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

MASKED = -1e4  # the logit of a class an input may not take: softmax gives it ~0, and unlike -inf it stays finite


def mask_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``allowed`` is ``[classes]`` or ``[batch, classes]`` (bool)."""
    return logits.masked_fill(~allowed.to(logits.device), MASKED)


def routed_logits(model: nn.Module, logits_fn: Callable[[nn.Module, Any], torch.Tensor], inputs: Any,
                  experts: list[tuple[str, torch.Tensor]], choice: torch.Tensor | None = None) -> torch.Tensor:
    """Logits of the adapter that answers each input.

    Args:
        model: what ``logits_fn`` runs (possibly wrapped by DDP).
        experts: ``(adapter name, allowed classes)`` per experience, in order; the peft model whose
            ``set_adapter`` switches them is ``model`` unwrapped, found by :func:`_peft`.
        choice: per input, the index into ``experts`` (task-incremental), -1 or None: the most confident.
    """
    peft_model = _peft(model)
    active = peft_model.active_adapter
    outputs, confidence = [], []
    try:
        for adapter, allowed in experts:
            peft_model.set_adapter(adapter)
            logits = mask_logits(logits_fn(model, inputs).float(), allowed)
            outputs.append(logits)
            confidence.append(_margin(logits))
    finally:
        peft_model.set_adapter(active)
    stacked = torch.stack(outputs)  # [experts, batch, classes]
    confident = torch.stack(confidence).argmax(dim=0)
    choice = confident if choice is None else torch.where(choice.to(confident.device) < 0, confident,
                                                          choice.to(confident.device))
    return stacked[choice.to(stacked.device), torch.arange(stacked.shape[1], device=stacked.device)]


def label_logits(model: nn.Module, logits_fn: Callable[[nn.Module, Any], torch.Tensor], inputs: Any,
                 experts: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
    """Multi-label outputs where each label's logit comes from the adapter of the experience that annotates it
    (``label`` routing; a later expert answers a label two annotate). Labels no expert annotates keep the first
    adapter's logit."""
    peft_model = _peft(model)
    active = peft_model.active_adapter
    out = None
    try:
        for adapter, allowed in experts:
            peft_model.set_adapter(adapter)
            logits = logits_fn(model, inputs).float()
            out = logits if out is None else torch.where(allowed.to(logits.device), logits, out)
    finally:
        peft_model.set_adapter(active)
    return out


def _margin(logits: torch.Tensor) -> torch.Tensor:
    """How sure each row is of its top class: ``log p_top - log(1 - p_top)``, from the logits directly.

    The top probability itself rounds to exactly 1.0 in float32 once the top logit leads by ~17,
    and ties would then all go to the first adapter; this margin keeps growing.
    """
    top, index = logits.max(dim=-1)
    rest = logits.scatter(-1, index[:, None], float("-inf"))
    return top - torch.logsumexp(rest, dim=-1)


def _peft(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and not hasattr(model, "set_adapter") else model
