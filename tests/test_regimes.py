"""Regimes as a checked registry (issue 18): each built-in saves, checks and restores its own files; a new regime
is one class and one registration, and the library's save, check and restore paths use it unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hf_adapt import regimes
from hf_adapt.artifacts import check_artifacts, restore_model, save_model
from hf_adapt.backbones import BackboneSpec, build_backbone
from hf_adapt.errors import ConfigError, ModelError
from hf_adapt.regimes import get_regime, register_regime, registered_regimes
from hf_adapt.regimes.base import Regime

from .test_adapters import _batch


class BiasOnly(Regime):
    """BitFit: only the biases (and the head) train; saved as one small safetensors file."""

    name = "bias_only_test"
    keeps_base = True

    def apply(self, backbone, adapter):
        for name, param in backbone.model.named_parameters():
            param.requires_grad_(name.endswith(".bias") or any(name.startswith(h + ".") for h in backbone.head_names))
        return backbone.model

    def save(self, model, backbone, directory: Path) -> None:
        from safetensors.torch import save_file

        save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                  str(directory / "bias.safetensors"))

    def check(self, directory: Path) -> None:
        from hf_adapt.weights import check_weights_file

        check_weights_file(directory / "bias.safetensors")

    def restore(self, backbone, directory: Path, trainable: bool = False):
        from safetensors.torch import load_file

        backbone.model.load_state_dict(load_file(str(directory / "bias.safetensors")), strict=False)
        return self.apply(backbone, None) if trainable else backbone.model

    def describe(self, adapter) -> str:
        return "bias-only fine-tuning (BitFit)"


def test_the_registry_is_checked():
    assert registered_regimes()[:4] == ("adapter", "linear_probe", "full", "gradual_unfreeze")
    with pytest.raises(ValueError, match="already registered"):
        register_regime("adapter", "hf_adapt.regimes.adapter:Adapter")
    with pytest.raises(ValueError, match="must match"):
        register_regime("Bad-Name", BiasOnly())
    with pytest.raises(ValueError, match="must look like 'package.module:Class'"):
        register_regime("lazy_without_colon", "hf_adapt.regimes.adapter.Adapter")
    with pytest.raises(ConfigError, match=r"regime 'prefix' is not one of \['adapter', 'linear_probe'"):
        get_regime("prefix")


def test_gradual_unfreezing_saves_as_full_and_adds_its_callback(tiny_timm_convnet):
    from hf_adapt.loop import GradualUnfreeze

    backbone = build_backbone(BackboneSpec(name_or_path=str(tiny_timm_convnet), num_labels=3, reset_head=True))
    gradual, full = get_regime("gradual_unfreeze"), get_regime("full")
    assert isinstance(gradual, type(full)) and not full.callbacks(backbone, 1)
    (callback,) = gradual.callbacks(backbone, 2)
    assert isinstance(callback, GradualUnfreeze)
    assert [get_regime(n).keeps_base for n in registered_regimes()[:4]] == [True, True, False, False]


def test_a_new_regime_is_one_class_and_one_registration(tiny_timm_convnet, tmp_path, monkeypatch):
    monkeypatch.setattr(regimes._REGIMES, "_entries", dict(regimes._REGIMES._entries))  # this registration goes with the test
    register_regime(BiasOnly.name, BiasOnly())
    spec = BackboneSpec(name_or_path=str(tiny_timm_convnet), num_labels=3, reset_head=True, image_size=32)
    backbone = build_backbone(spec)
    model = regimes.apply_regime(backbone, BiasOnly.name, None)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(".bias") or n.startswith("classifier.") for n in trainable)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.01)  # stands for training
    inputs, _ = _batch(backbone)
    model.eval()
    with torch.no_grad():
        expected = backbone.logits(model, inputs)

    save_model(model, backbone, BiasOnly.name, tmp_path)
    check_artifacts(tmp_path, {"regime": BiasOnly.name})
    fresh = build_backbone(spec)
    reloaded = restore_model(fresh, BiasOnly.name, tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh.logits(reloaded, inputs), expected)

    (tmp_path / "bias.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="bias.safetensors: not a whole safetensors file"):
        check_artifacts(tmp_path, {"regime": BiasOnly.name})
    with pytest.raises(ModelError, match="unknown regime 'prefix'"):
        check_artifacts(tmp_path, {"regime": "prefix"})
