"""Backbone families, registered by name and imported only when used."""

from __future__ import annotations

from hf_adapt.backbones.base import Backbone, BackboneBuilder, BackboneSpec, Preprocessor
from hf_adapt.registry import Registry

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

_FAMILIES: Registry[BackboneBuilder] = Registry("backbone family")


def register_backbone(name: str, builder: str | BackboneBuilder) -> None:
    """Register a backbone family; ``builder`` is an instance or a lazy ``"module:Class"`` path."""
    _FAMILIES.register(name, builder)


def registered_families() -> list[str]:
    return list(_FAMILIES.names())


def get_builder(family: str) -> BackboneBuilder:
    return _FAMILIES.get(family)


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
    # a quantized base (QLoRA) holds packed 4/8-bit weights that no full-precision reload can match: none recorded
    backbone.info["weights_fingerprint"] = None if spec.quantization else weights_fingerprint(backbone)
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
