"""Transfer with init_from: the parent's backbone is carried (asserted on parameters), the head replaced,
and the new output rebuilds from the original base; gradual unfreezing; errors before training."""

from __future__ import annotations

import json
import re

import pytest
import torch
from huggingface_hub import ModelCard

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.errors import HfAdaptError
from hf_adapt.recipes.finetune import FinetuneConfig, main

_CHILD_TEMPLATE = "{purpose}, {credit_amount} DM, age {age_in_years}, {job}"


def _config(tmp_path, name, **values) -> FinetuneConfig:
    defaults = dict(output_dir=str(tmp_path / name), num_train_epochs=1, per_device_train_batch_size=16,
                    learning_rate=5e-3, report_to="none", torch_num_threads=1, card_examples=0)
    return config_from_dict(FinetuneConfig, {**defaults, **values})


def _backbone_state(model, head_names) -> dict[str, torch.Tensor]:
    """Parameters outside the head, named without peft/classifier-model prefixes."""
    model = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    heads = tuple(f"{h}." for h in head_names)
    return {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}


def _logits(result, n=16):
    inputs = result.data.inputs("test", result.backbone.preprocessor.input_kind)[:n]
    result.model.eval()
    with torch.no_grad():
        return result.backbone.logits(result.model, result.backbone.preprocessor.collate(inputs, train=False)), inputs


@pytest.fixture(scope="module")
def text_parent(tiny_bert, credit_sample, tmp_path_factory):
    """A LoRA run on creditability: the parent whose merged backbone children start from."""
    tmp = tmp_path_factory.mktemp("parent")
    cfg = _config(tmp, "parent", model_name_or_path=str(tiny_bert), base_model_id="hf-adapt-tests/tiny-bert",
                  data=str(credit_sample), regime="adapter",
                  adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["query", "value", "dense"]})
    return main(cfg)


def test_init_from_carries_the_merged_backbone_and_replaces_the_head(text_parent, tiny_bert, credit_sample, tmp_path):
    cfg = _config(tmp_path, "child", init_from=str(text_parent.output_dir), data=str(credit_sample),
                  label_column="housing", text_template=_CHILD_TEMPLATE, regime="linear_probe")
    child = main(cfg)

    parent = hf_adapt.load_adapted(str(text_parent.output_dir))
    parent_state = _backbone_state(parent.model, text_parent.backbone.head_names)
    child_model = hf_adapt.load_adapted(str(child.output_dir)).model
    child_state = _backbone_state(child_model, child.backbone.head_names)
    assert set(parent_state) == set(child_state)
    assert all(torch.equal(parent_state[k], child_state[k]) for k in parent_state)  # linear probe: backbone as carried
    from transformers import BertModel

    raw = BertModel.from_pretrained(str(tiny_bert)).state_dict()
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(raw[query], child_state[f"bert.{query}"])  # the merged LoRA changed it
    assert torch.equal(raw["embeddings.word_embeddings.weight"], child_state["bert.embeddings.word_embeddings.weight"])

    head = dict(child_model.named_parameters())["classifier.weight"]
    assert head.shape[0] == 3  # housing: for free, own, rent
    assert json.loads((child.output_dir / "label_map.json").read_text())["id2label"] == {
        "0": "for free", "1": "own", "2": "rent"}
    for name in ("hf_adapt.json", "adapter_config.json", "adapter_model.safetensors", "label_map.json"):
        assert (child.output_dir / "init" / name).is_file(), name
    info = json.loads((child.output_dir / "hf_adapt.json").read_text())
    assert info["init_from"]["source"] == str(text_parent.output_dir)
    assert info["model"]["name_or_path"] == str(tiny_bert)  # the root base, not the parent folder

    expected, inputs = _logits(child)  # reload is bitwise: same chain rebuilt from the base
    assert torch.equal(hf_adapt.load_adapted(str(child.output_dir)).logits(inputs), expected)

    card = ModelCard.load(child.output_dir / "README.md")
    assert "## Lineage" in card.text
    assert "Kept from the parent: the backbone weights after the parent's fine-tuning (adapter)" in card.text
    assert "with its adapter merged into them" in card.text
    assert "a classification head for 3 labels (for free, own, rent)" in card.text
    assert "the parent's 2-label head (bad, good) was dropped" in card.text
    assert card.data.base_model == "hf-adapt-tests/tiny-bert"
    assert card.data.base_model_relation == "finetune"  # the head trains on the carried backbone, not the base


@pytest.fixture(scope="module")
def other_digits(tmp_path_factory):
    """Real 8x8 digits 3-6 as PNGs: a new label set for an image backbone trained on digits 0-2."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("digits36")
    for label in range(3, 7):
        (root / str(label)).mkdir()
        for i in np.flatnonzero(digits.target == label)[:30]:
            Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)).save(
                root / str(label) / f"{i}.png")
    return root


def test_timm_parent_then_gradual_unfreeze(tiny_timm_convnet, digits_folder, other_digits, tmp_path):
    image = dict(label_column="label", image_size=32, metric_for_best_model="accuracy")
    parent = main(_config(tmp_path, "parent", model_name_or_path=str(tiny_timm_convnet), data=str(digits_folder),
                          reset_head=True, regime="full", **image))
    child = main(_config(tmp_path, "child", init_from=str(parent.output_dir), data=str(other_digits),
                         regime="gradual_unfreeze", num_train_epochs=2, learning_rate=2e-3, **image))

    before, after = parent.model.state_dict(), child.model.state_dict()
    assert after["classifier.weight"].shape == (4, before["classifier.weight"].shape[1])
    # epoch 1 trains the head, epoch 2 the head and the group below it: the stem keeps the parent's weights
    assert torch.equal(before["conv_stem.weight"], after["conv_stem.weight"])
    assert torch.equal(before["bn1.running_mean"], after["bn1.running_mean"])
    assert not torch.equal(before["classifier.bias"][:1], after["classifier.bias"][:1])
    assert (child.output_dir / "model.safetensors").is_file()  # saved as full

    expected, inputs = _logits(child)
    assert torch.equal(hf_adapt.load_adapted(str(child.output_dir)).logits(inputs), expected)
    card = ModelCard.load(child.output_dir / "README.md")
    assert "gradual unfreezing" in card.text
    assert "the parent was trained with `full`" in card.text


def test_init_from_chain_rebuilds_from_the_root(text_parent, credit_sample, tmp_path):
    """A grandchild carries init/init/: parent adapter -> child full -> grandchild adapter."""
    child = main(_config(tmp_path, "child", init_from=str(text_parent.output_dir), data=str(credit_sample),
                         label_column="housing", text_template=_CHILD_TEMPLATE, regime="full", max_steps=3))
    grandchild = main(_config(tmp_path, "grandchild", init_from=str(child.output_dir), data=str(credit_sample),
                              text_template=_CHILD_TEMPLATE, regime="adapter", max_steps=3))
    assert (grandchild.output_dir / "init" / "init" / "adapter_model.safetensors").is_file()
    assert (grandchild.output_dir / "init" / "model.safetensors").is_file()
    expected, inputs = _logits(grandchild)
    assert torch.equal(hf_adapt.load_adapted(str(grandchild.output_dir)).logits(inputs), expected)


def _other_tokenizer_bert(tmp_path):
    from transformers import BertConfig, BertModel

    from tests.conftest import _word_level_tokenizer

    tokenizer = _word_level_tokenizer(["an entirely different corpus of words"] * 20)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128)
    BertModel(config).save_pretrained(tmp_path / "other")
    tokenizer.save_pretrained(tmp_path / "other")
    return str(tmp_path / "other")


@pytest.mark.parametrize("case, error", [
    ("image_parent", "is a timm (image) backbone, but the data is text"),
    ("family", "is a transformers backbone, but the config sets family: timm"),
    ("tokenizer", "has a different one"),
    ("not_an_output", "is not an hf-adapt output"),
    ("missing", "neither a local folder nor a Hub repo"),
])
def test_bad_init_from_fails_before_training(case, error, text_parent, tiny_timm_convnet, digits_folder,
                                             credit_sample, tmp_path):
    values = dict(init_from=str(text_parent.output_dir), data=str(credit_sample), max_steps=1)
    if case == "image_parent":
        parent = main(_config(tmp_path, "img", model_name_or_path=str(tiny_timm_convnet), data=str(digits_folder),
                              label_column="label", reset_head=True, image_size=32, regime="linear_probe", max_steps=1))
        values["init_from"] = str(parent.output_dir)
    elif case == "family":
        values["family"] = "timm"
    elif case == "tokenizer":
        values["model_name_or_path"] = _other_tokenizer_bert(tmp_path)
    elif case == "not_an_output":
        values["init_from"] = str(credit_sample.parent)
    else:
        values["init_from"] = "no-such-org/no-such-model"
    cfg = _config(tmp_path, "out", **values)
    with pytest.raises(HfAdaptError, match=re.escape(error)):
        main(cfg)
    assert not (tmp_path / "out").exists()
