"""hf-adapt: adapt pretrained timm and transformers backbones with peft on Accelerate.

``import hf_adapt`` stays light: torch, timm, transformers and datasets load when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["load_adapted", "__version__"]

if TYPE_CHECKING:
    from hf_adapt.predict import load_adapted


def __getattr__(name: str) -> Any:
    if name == "load_adapted":
        from hf_adapt.predict import load_adapted

        return load_adapted
    raise AttributeError(f"module 'hf_adapt' has no attribute {name!r}")
