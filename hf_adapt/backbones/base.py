"""The one backbone interface the rest of hf-adapt sees.

A builder turns a :class:`BackboneSpec` into a :class:`Backbone`: the model with a
classification head of the right size, the names of the head modules (what peft
must save beside the adapter), default adapter targets, and a preprocessor that
turns raw inputs (texts or images) into model inputs. Nothing outside
``hf_adapt/backbones`` branches on the model family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """Where a backbone comes from and what head it needs."""

    name_or_path: str
    num_labels: int
    family: str = "auto"
    weights_file: str | None = None
    pretrained: bool = True
    reset_head: bool = False
    revision: str | None = None
    trust_remote_code: bool = False
    image_size: int | None = None
    max_length: int = 256
    pooling: str = "auto"  # text: "model" (the checkpoint's head), "mean" (masked mean pooling) or "auto"
    train_transform: dict[str, Any] | str | None = None  # create_transform kwargs or a preset name ("medical")
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None  # BitsAndBytesConfig fields (QLoRA), see hf_adapt.quantization

    @classmethod
    def from_config(cls, cfg: Any, num_labels: int) -> BackboneSpec:
        """The spec of a classification config's model fields (``model_name_or_path``, ``family``, ``text_pooling``
        ...) with a head of ``num_labels``: finetune's and continual's."""
        return cls(
            name_or_path=cfg.model_name_or_path, num_labels=num_labels, family=cfg.family,
            weights_file=cfg.weights_file, pretrained=cfg.pretrained, reset_head=cfg.reset_head,
            revision=cfg.model_revision, trust_remote_code=cfg.trust_remote_code, image_size=cfg.image_size,
            max_length=cfg.max_length, train_transform=cfg.train_transform, pooling=cfg.text_pooling,
            quantization=getattr(cfg, "quantization", None),
        )


class Preprocessor(Protocol):
    """Turns raw examples into a batch of model inputs, and saves itself."""

    input_kind: str  # "text" or "image": what a raw input must be

    def collate(self, inputs: list[Any], train: bool) -> dict[str, torch.Tensor]:
        """Model inputs for a list of raw inputs (texts or PIL images)."""

    def check_inputs(self, inputs: dict[str, list[Any]]) -> dict[str, int]:
        """Per split, how many raw inputs ``collate`` will cut to fit the model, with one warning that counts
        them; called before training."""

    def save(self, directory: str) -> None:
        """Write what :func:`load_preprocessor` needs to rebuild this preprocessor."""


@dataclass
class Backbone:
    """A classification model plus what training, saving and serving need from it."""

    family: str
    model: nn.Module
    head_names: list[str]
    target_modules: list[str] | str | None
    preprocessor: Preprocessor
    forward: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]
    peft_task_type: str | None = None  # e.g. "SEQ_CLS" so peft wraps text classifiers natively
    num_parameters: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def logits(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits of ``model`` (this backbone, possibly wrapped by peft/DDP) on ``inputs``."""
        return self.forward(model, inputs)


class BackboneBuilder(Protocol):
    """What a family registers: build a backbone, and rebuild its preprocessor."""

    input_kind: str  # "text" or "image": what its models read
    language_modelling: bool  # its models can be pretrained on unlabelled text (masked or causal LM)

    def claims(self, name_or_path: str) -> bool:
        """True if ``name_or_path`` clearly belongs to this family (for ``family: auto``)."""

    def build(self, spec: BackboneSpec) -> Backbone:
        """Load the backbone with a ``spec.num_labels``-way head."""

    def load_preprocessor(self, directory: str, spec: BackboneSpec) -> Preprocessor:
        """Rebuild the preprocessor saved in ``directory``."""


def head_prefixes(keys: list[str], model: nn.Module) -> list[str]:
    """Module names that own the parameters in ``keys`` (e.g. newly initialised head weights)."""
    modules = dict(model.named_modules())
    names = set()
    for key in keys:
        prefix = key.rsplit(".", 1)[0]
        if prefix in modules:
            names.add(prefix)
    return sorted(names)


def adapter_target_names(model: nn.Module, exclude: list[str]) -> list[str]:
    """Leaf names of the layers LoRA-like methods can adapt: linears and non-grouped convs.

    Short leaf names (``qkv``, ``conv_pw``) keep ``adapter_config.json`` readable; names
    that also occur inside the head are left out so the head stays fully trainable.
    """
    excluded = tuple(exclude)
    leaf_names: set[str] = set()
    head_leaves: set[str] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if isinstance(module, nn.Conv2d) and module.groups != 1:
            continue
        parts = name.split(".")
        # a Sequential index ("downsample.0") keeps its parent: a bare "0" would also match whole blocks ("layer1.0")
        leaf = ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]
        if name in excluded or name.startswith(tuple(e + "." for e in excluded)):
            head_leaves.add(leaf)
        else:
            leaf_names.add(leaf)
    return sorted(leaf_names - head_leaves)
