"""Every required peft method on both families, conv nets and ViTs included; regimes; head checks."""

from __future__ import annotations

import pytest
import torch

from hf_adapt.adapters import count_parameters, freeze_frozen_norm_statistics
from hf_adapt.artifacts import restore_model, save_model
from hf_adapt.backbones import BackboneSpec, build_backbone
from hf_adapt.errors import ConfigError, ModelError
from hf_adapt.regimes import apply_regime

METHODS = {
    "LORA": {"peft_type": "LORA", "r": 4, "lora_alpha": 8},
    "DORA": {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": True},
    "IA3": {"peft_type": "IA3"},
    "LOHA": {"peft_type": "LOHA", "r": 4, "alpha": 8},
    "LOKR": {"peft_type": "LOKR", "r": 4, "alpha": 8},
}
FAMILIES = ["tiny_bert", "tiny_timm_convnet", "tiny_timm_vit"]


def _batch(backbone, n=4):
    if backbone.preprocessor.input_kind == "text":
        inputs = [f"duration in month: {i}, purpose: car (new)" for i in range(n)]
    else:
        from PIL import Image

        inputs = [Image.new("L", (32, 32), color=40 * i) for i in range(n)]
    return backbone.preprocessor.collate(inputs, train=False), torch.arange(n) % 3


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("family", FAMILIES)
def test_method_trains_and_reloads(family, method, request, tmp_path):
    source = request.getfixturevalue(family)
    spec = BackboneSpec(name_or_path=str(source), num_labels=3, reset_head=True, image_size=32)
    backbone = build_backbone(spec)
    model = apply_regime(backbone, "adapter", METHODS[method])
    trainable, total = count_parameters(model)
    assert 0 < trainable < total / 2
    frozen_before = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_before = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    inputs, labels = _batch(backbone)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    freeze_frozen_norm_statistics(model)
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(backbone.logits(model, inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p, trained_before[n])]
    assert any(backbone.head_names[0] in n for n in changed), "the new head did not train"
    assert any(backbone.head_names[0] not in n for n in changed), "the adapter did not train"
    assert all(torch.equal(p, frozen_before[n]) for n, p in model.named_parameters() if not p.requires_grad)

    model.eval()
    with torch.no_grad():
        expected = backbone.logits(model, inputs)
    save_model(model, backbone, "adapter", tmp_path)
    fresh = build_backbone(spec)
    reloaded = restore_model(fresh, "adapter", tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(fresh.logits(reloaded, inputs), expected)


def test_linear_probe_trains_only_the_head(tiny_timm_convnet):
    backbone = build_backbone(BackboneSpec(name_or_path=str(tiny_timm_convnet), num_labels=3, reset_head=True))
    model = apply_regime(backbone, "linear_probe", None)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(n.startswith("classifier.") for n in names)


def test_unknown_peft_method(tiny_bert):
    backbone = build_backbone(BackboneSpec(name_or_path=str(tiny_bert), num_labels=2))
    with pytest.raises(ConfigError, match=r"adapter.peft_type 'LORRA' is not a peft method; known: \["):
        apply_regime(backbone, "adapter", {"peft_type": "lorra"})
    with pytest.raises(ConfigError, match=r"LoraConfig has no field\(s\) \['rank'\]"):
        apply_regime(backbone, "adapter", {"peft_type": "LORA", "rank": 8})


def test_missing_model_path(tmp_path):
    with pytest.raises(ModelError, match="could not be loaded"):
        build_backbone(BackboneSpec(name_or_path=str(tmp_path / "no-such-model"), num_labels=2))
    with pytest.raises(ModelError, match="not a timm model name"):
        build_backbone(BackboneSpec(name_or_path="no_such_net", num_labels=2, family="timm"))


def test_head_size_mismatch_needs_reset_head(tiny_bert, tiny_timm_convnet, tmp_path):
    # a transformers checkpoint with a trained 3-label head, asked for 2 labels
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    model.save_pretrained(tmp_path / "clf")
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(tmp_path / "clf")
    with pytest.raises(ModelError, match="trained 3-label classification head .* data has 2 labels; set reset_head"):
        build_backbone(BackboneSpec(name_or_path=str(tmp_path / "clf"), num_labels=2))
    assert build_backbone(BackboneSpec(name_or_path=str(tmp_path / "clf"), num_labels=2, reset_head=True))
    # a timm weights file with a 7-class head, asked for 3
    with pytest.raises(ModelError, match=r"7-class classification head .* 3 labels; set reset_head"):
        build_backbone(BackboneSpec(name_or_path="mobilenetv2_035", num_labels=3,
                                    weights_file=str(tiny_timm_convnet / "model.safetensors")))


def test_foreign_weight_names_map_by_position(tiny_timm_convnet, tmp_path):
    """A checkpoint from another code base (other names, same tensors in order) loads exactly."""
    import timm

    state = timm.create_model("mobilenetv2_035", num_classes=7).state_dict()
    # a pickled state dict keeps the exporter's order (safetensors sorts keys, so it cannot be mapped)
    torch.save({f"_foreign.{i:04d}": v for i, v in enumerate(state.values())}, tmp_path / "foreign.pth")
    backbone = build_backbone(BackboneSpec(name_or_path="mobilenetv2_035", num_labels=7,
                                           weights_file=str(tmp_path / "foreign.pth")))
    loaded = backbone.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_fixed_size_vit_is_built_for_the_requested_resolution(tiny_timm_vit):
    """A ViT saved at 32 px trains at 48 px: built with img_size, position embeddings resampled."""
    from PIL import Image

    backbone = build_backbone(BackboneSpec(name_or_path=str(tiny_timm_vit), num_labels=3, reset_head=True,
                                           image_size=48))
    batch = backbone.preprocessor.collate([Image.new("L", (28, 28))] * 2, train=False)
    assert batch["pixel_values"].shape[-1] == 48
    assert backbone.logits(backbone.model, batch).shape == (2, 3)
