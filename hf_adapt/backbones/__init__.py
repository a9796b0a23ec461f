"""Backbone families, registered by name and imported only when used."""

from __future__ import annotations

import importlib
import re

from hf_adapt.backbones.base import Backbone, BackboneBuilder, BackboneSpec, Preprocessor
from hf_adapt.errors import ConfigError

__all__ = [
    "Backbone",
    "BackboneBuilder",
    "BackboneSpec",
    "Preprocessor",
    "build_backbone",
    "get_builder",
    "register_backbone",
    "registered_families",
    "resolve_family",
]

# name -> "module:attribute" (imported on first use) or a builder instance
_REGISTRY: dict[str, str | BackboneBuilder] = {}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def register_backbone(name: str, builder: str | BackboneBuilder) -> None:
    """Register a backbone family; ``builder`` is an instance or a lazy ``"module:attr"`` path."""
    if not _NAME.match(name):
        raise ValueError(f"backbone family name {name!r} must match {_NAME.pattern}")
    if name in _REGISTRY:
        raise ValueError(f"backbone family {name!r} is already registered")
    if isinstance(builder, str) and ":" not in builder:
        raise ValueError(f"lazy builder path {builder!r} must look like 'package.module:attribute'")
    _REGISTRY[name] = builder


def registered_families() -> list[str]:
    return list(_REGISTRY)


def get_builder(family: str) -> BackboneBuilder:
    if family not in _REGISTRY:
        raise ConfigError(f"unknown backbone family {family!r}; registered: {registered_families()}")
    builder = _REGISTRY[family]
    if isinstance(builder, str):
        module, _, attr = builder.partition(":")
        builder = getattr(importlib.import_module(module), attr)()
        _REGISTRY[family] = builder
    return builder


def resolve_family(spec: BackboneSpec) -> str:
    """The family named in ``spec``, or for ``auto`` the first that claims the source."""
    if spec.family != "auto":
        get_builder(spec.family)  # unknown names fail here
        return spec.family
    for family in registered_families():
        if get_builder(family).claims(spec.name_or_path):
            return family
    return "transformers"


def build_backbone(spec: BackboneSpec) -> Backbone:
    """The backbone ``spec`` names, with the fingerprint of its weights as built (see :func:`weights_fingerprint`)."""
    backbone = get_builder(resolve_family(spec)).build(spec)
    backbone.info["weights_fingerprint"] = weights_fingerprint(backbone)
    return backbone


def weights_fingerprint(backbone: Backbone) -> str:
    """A short hash of a freshly built backbone's weights (the head excluded: it is new or replaced): every
    tensor's name, shape, dtype and first 64 values. Recorded at training and checked on load, it tells a base
    that merely has the right shapes (another checkpoint, a different revision) from the one trained on."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in backbone.model.state_dict().items():
        if any(f".{head}." in f".{name}" for head in backbone.head_names):
            continue
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\0".encode())
        digest.update(tensor.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


register_backbone("timm", "hf_adapt.backbones.timm:TimmBuilder")
register_backbone("transformers", "hf_adapt.backbones.transformers:TransformersBuilder")
