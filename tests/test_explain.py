"""``hf-adapt explain`` on outputs of real (one-epoch, tiny-model) finetune runs: table rows, texts, images."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

import hf_adapt
from hf_adapt.cli import main as cli
from hf_adapt.data import render_row, template_columns
from hf_adapt.errors import DataError, ModelError
from hf_adapt.explain import TEMPLATE_BUCKET, explain_image, explain_row, render_pieces
from hf_adapt.options import QUICKSTART_TEMPLATE
from tests.conftest import train_finetune


@pytest.fixture(scope="module")
def template_output(tiny_bert, credit_sample, tmp_path_factory):
    """LoRA on the tiny BERT, German Credit rows rendered by the default (quickstart) template."""
    return train_finetune(tmp_path_factory.mktemp("explain_template") / "out", model_name_or_path=str(tiny_bert),
                  data=str(credit_sample))


@pytest.fixture(scope="module")
def pairs_output(tiny_bert, credit_sample, tmp_path_factory):
    """Mean pooling (``MeanPoolingClassifier``), every column as ``column: value`` pairs: longer than max_length."""
    return train_finetune(tmp_path_factory.mktemp("explain_pairs") / "out", model_name_or_path=str(tiny_bert),
                  data=str(credit_sample), text_template=None, text_pooling="mean", regime="full")


@pytest.fixture(scope="module")
def text_output(tiny_bert, credit_sample, tmp_path_factory):
    """A three-class plain-text model: credit rows as free text in a ``text`` column, labelled by housing."""
    import pandas as pd

    frame = pd.read_csv(credit_sample)
    texts = pd.DataFrame({"text": [f"{r['purpose']}, {r['duration_in_month']} months, {r['credit_history']}"
                                   for r in frame.to_dict("records")], "housing": frame["housing"]})
    root = tmp_path_factory.mktemp("explain_text")
    texts.to_csv(root / "texts.csv", index=False)
    return train_finetune(root / "out", model_name_or_path=str(tiny_bert), data=str(root / "texts.csv"), text_column="text",
                  label_column="housing")


@pytest.fixture(scope="module")
def image_output(tiny_timm_convnet, digits_folder, tmp_path_factory):
    return train_finetune(tmp_path_factory.mktemp("explain_image") / "out", model_name_or_path=str(tiny_timm_convnet),
                  data=str(digits_folder), label_column="label", reset_head=True, image_size=32,
                  metric_for_best_model="accuracy", adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8})


def _run(capsys, *args):
    code = cli(["explain", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _png_title(path) -> str:
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) > 100
        return image.text["Title"]


def _baseline_output(predictor, text: str, target: int, other: int | None) -> tuple[float, float]:
    """Explained output (log-odds for two classes) at the input and at the pad baseline, computed here afresh."""
    tokenizer = predictor.preprocessor.tokenizer
    batch = predictor.preprocessor.collate([text], train=False)
    special = torch.tensor([i in tokenizer.all_special_ids for i in batch["input_ids"][0].tolist()])
    baseline = {**batch, "input_ids": batch["input_ids"].masked_fill(~special, tokenizer.pad_token_id)}
    values = []
    with torch.no_grad():
        for inputs in (batch, baseline):
            logits = predictor.backbone.logits(predictor.model, inputs)[0]
            values.append(float(logits[target] - (logits[other] if other is not None else 0.0)))
    return values[0], values[1]


def test_cli_explains_a_csv_row_per_template_column(template_output, credit_sample, tmp_path, capsys):
    code, out, err = _run(capsys, template_output, credit_sample, "--row", 3, "--out", tmp_path / "x",
                          "--steps", 20)
    assert code == 0, err
    png, json_path = (tmp_path / "x" / "explanation_row3.png"), (tmp_path / "x" / "explanation_row3.json")
    assert out.split() == [str(png), str(json_path)]
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == sorted([png.name, json_path.name])  # no temp files
    result = json.loads(json_path.read_text())
    import pandas as pd

    row = pd.read_csv(credit_sample).to_dict("records")[3]
    predictor = hf_adapt.load_adapted(str(template_output))
    expected = predictor.predict(row)[0]
    assert result["predicted_label"] == result["target"] == expected["label"]
    assert result["probabilities"] == pytest.approx(expected["probabilities"])
    assert result["input"] == {"path": str(credit_sample), "row": 3}
    assert result["text"] == render_row(row, predictor.info["data"]["feature_columns"], QUICKSTART_TEMPLATE)
    # exactly the template's columns plus the fixed text, sorted by |attribution|; each token lies in its column's text
    columns = [c["column"] for c in result["columns"]]
    assert sorted(columns) == sorted([*template_columns(QUICKSTART_TEMPLATE), TEMPLATE_BUCKET])
    magnitudes = [abs(c["attribution"]) for c in result["columns"]]
    assert magnitudes == sorted(magnitudes, reverse=True)
    assert not result["truncated_columns"]
    for token in result["tokens"]:
        if token["column"] != TEMPLATE_BUCKET:
            assert token["token"] in result["row"][token["column"]], token
    by_column = {c["column"]: c for c in result["columns"]}
    assert by_column["purpose"]["value"] == str(row["purpose"])
    for name, column in by_column.items():
        tokens = [t["attribution"] for t in result["tokens"] if t["column"] == name]
        assert column["tokens"] == len(tokens) and column["attribution"] == pytest.approx(sum(tokens), abs=1e-9)
    other = next(label for label in predictor.labels if label != result["target"])
    assert result["explained_output"].startswith(f"logit({result['target']}) - logit({other})")
    assert "20 steps" in result["method"] and "word_embeddings" in result["method"]
    assert "operating_point" not in result
    assert _png_title(png).startswith(f"predicted {expected['label']}")


def test_attributions_add_up_to_the_output_change(pairs_output, credit_sample):
    """IG's completeness: the token attributions sum to output(input) - output(pad baseline), both computed here."""
    import pandas as pd

    predictor = hf_adapt.load_adapted(str(pairs_output))
    labels, info = predictor.labels, predictor.info["data"]
    row = pd.read_csv(credit_sample).to_dict("records")[5]
    result = explain_row(predictor.model, predictor.backbone, predictor.preprocessor, info, labels, row, steps=50)
    assert "encoder.embeddings.word_embeddings" in result["method"]  # found inside MeanPoolingClassifier
    json.dumps(result)  # nothing but JSON: what hf-adapt explain and the server write
    t = labels.index(result["target"])
    at_input, at_baseline = _baseline_output(predictor, result["text"], t, 1 - t)
    probs = result["probabilities"]
    assert at_input == pytest.approx(torch.tensor(probs[labels[t]] / probs[labels[1 - t]]).log().item(), abs=1e-4)
    assert result["output_at_input"] == pytest.approx(at_input, abs=1e-5)
    assert result["output_at_baseline"] == pytest.approx(at_baseline, abs=1e-5)
    change = at_input - at_baseline
    assert abs(change) > 0.05  # the check below has teeth: attributions of zero would fail it
    total = sum(token["attribution"] for token in result["tokens"])
    assert abs(total - change) <= 0.02 * abs(change)
    assert result["convergence_delta"] == pytest.approx(total - change, abs=1e-5)  # the reported delta is honest
    assert sum(c["attribution"] for c in result["columns"]) == pytest.approx(total, abs=1e-6)
    # 20 columns as "column: value" pairs overflow max_length 128: the tail is reported, not silently dropped
    columns = {c["column"]: c for c in result["columns"]}
    assert set(columns) == {*info["feature_columns"], TEMPLATE_BUCKET}
    assert result["truncated_columns"] == [c for c in info["feature_columns"] if columns[c]["truncated"]]
    assert result["truncated_columns"] and info["feature_columns"][0] not in result["truncated_columns"]
    last = columns[info["feature_columns"][-1]]
    assert last["truncated"] and last["tokens"] == 0 and last["attribution"] == 0
    # the column name is part of its column: "purpose: business" goes to purpose
    first = info["feature_columns"][0]
    assert any(t["column"] == first and t["token"].lower() in first for t in result["tokens"])
    # explaining the other class of two explains minus the same log-odds
    flipped = explain_row(predictor.model, predictor.backbone, predictor.preprocessor, info, labels, row,
                          target=labels[1 - t], steps=50)
    assert [x["attribution"] for x in flipped["tokens"]] == pytest.approx(
        [-x["attribution"] for x in result["tokens"]], abs=1e-5)


def test_render_pieces_tracks_each_field():
    row = {"a": 3.0, "b": "x y", "c": None}
    template = "{a:>4} and {{lit}} {b!r}/{c}"
    pieces = render_pieces(row, ["a", "b", "c"], template)
    assert "".join(text for _, text in pieces) == render_row(row, ["a", "b", "c"], template) == "   3 and {lit} 'x y'/missing"
    assert [column for column, _ in pieces] == ["a", None, "b", None, "c"]
    assert render_pieces(row, ["a", "b"], None) == [("a", "a: 3"), (None, ", "), ("b", "b: x y")]
    with pytest.raises(DataError, match=r"lacks the feature columns \['d'\]"):
        render_pieces(row, ["a", "d"], None)


def test_plain_text_model_gets_token_attributions(text_output, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = "business, 24 months, critical account"
    (tmp_path / "one.txt").write_text(text)
    code, _, err = _run(capsys, text_output, "one.txt")
    assert code == 0, err
    result = json.loads((tmp_path / "explanations" / "one" / "explanation.json").read_text())
    assert result["kind"] == "text" and "columns" not in result and result["text"] == text
    assert "".join(t["token"] for t in result["tokens"]) == text.replace(" ", "")
    predictor = hf_adapt.load_adapted(str(text_output))
    assert len(predictor.labels) == 3 and result["predicted_label"] == predictor.predict(text)[0]["label"]
    t = predictor.labels.index(result["target"])
    assert result["explained_output"] == f"logit({result['target']})"  # more than two classes: the logit itself
    at_input, at_baseline = _baseline_output(predictor, text, t, None)
    assert result["output_at_input"] == pytest.approx(at_input, abs=1e-5)
    total = sum(token["attribution"] for token in result["tokens"])
    assert abs(total - (at_input - at_baseline)) <= 0.02 * abs(at_input - at_baseline) + 1e-4
    assert _png_title(tmp_path / "explanations" / "one" / "explanation.png").startswith("predicted ")
    code, _, err = _run(capsys, text_output, text, "--out", "raw")  # the text itself
    assert code == 0, err
    again = json.loads((tmp_path / "raw" / "explanation.json").read_text())
    assert again["input"] == {"text": text}
    assert [x["attribution"] for x in again["tokens"]] == pytest.approx([x["attribution"] for x in result["tokens"]])


def test_image_gets_a_gradcam_overlay(image_output, digits_folder, tmp_path, capsys):
    image = next((digits_folder / "2").glob("*.png"))
    predictor = hf_adapt.load_adapted(str(image_output))
    target = next(label for label in predictor.labels if label != predictor.predict(str(image))[0]["label"])
    code, _, err = _run(capsys, image_output, image, "--out", tmp_path, "--target", target)
    assert code == 0, err
    result = json.loads((tmp_path / "explanation.json").read_text())
    assert result["kind"] == "image" and result["input"] == {"path": str(image)}
    assert result["predicted_label"] == predictor.predict(str(image))[0]["label"]
    assert result["target"] == target != result["predicted_label"]
    assert result["method"].startswith("Grad-CAM on ") and result["method"] != "Grad-CAM on "
    assert result["model_input_size"] == [32, 32] and "overlay_png" not in result
    with Image.open(tmp_path / "explanation.png") as overlay:
        assert overlay.text["Title"] == result["title"] and f"Grad-CAM for {target}" in result["title"]
        pixels = torch.tensor(list(overlay.convert("RGB").getdata()), dtype=torch.float32)
    assert (pixels[:, 0] - pixels[:, 2]).abs().max() > 50  # coloured: the heat map is drawn over the grey digit
    assert isinstance(result["map_is_empty"], bool)


def test_vit_has_no_gradcam(tiny_timm_vit):
    from hf_adapt.backbones import get_builder
    from hf_adapt.backbones.base import BackboneSpec

    backbone = get_builder("timm").build(BackboneSpec(str(tiny_timm_vit), num_labels=3, image_size=32, reset_head=True))
    image = Image.new("RGB", (32, 32), "white")
    with pytest.raises(ModelError, match="convolutional feature map"):
        explain_image(backbone.model, backbone, backbone.preprocessor, ["0", "1", "2"], image)


def test_operating_point_is_reported(template_output, credit_sample, tmp_path, capsys):
    copy = shutil.copytree(template_output, tmp_path / "with_threshold")
    info = json.loads((copy / "hf_adapt.json").read_text())
    info["operating_point"] = {"positive_label": "bad", "negative_label": "good", "threshold": 0.2}
    (copy / "hf_adapt.json").write_text(json.dumps(info))
    code, _, err = _run(capsys, copy, credit_sample, "--out", tmp_path / "x", "--steps", 4)
    assert code == 0, err
    result = json.loads((tmp_path / "x" / "explanation_row0.json").read_text())
    assert result["operating_point"] == {"positive_label": "bad", "negative_label": "good", "threshold": 0.2}
    import pandas as pd

    row = pd.read_csv(credit_sample).to_dict("records")[0]
    assert result["predicted_label"] == hf_adapt.load_adapted(str(copy)).predict(row)[0]["label"]


def test_bad_inputs_exit_2_naming_the_problem(template_output, image_output, credit_sample, digits_folder, tmp_path,
                                              capsys):
    image = next((digits_folder / "0").glob("*.png"))
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({"purpose": "car", "age_in_years": 30}))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    cases = [
        ((template_output, tmp_path / "missing.csv"), "input file not found"),
        ((template_output, partial), "lacks the feature columns ['status_of_existing_checking_account', "
                                     "'duration_in_month', 'credit_history'"),
        ((template_output, credit_sample, "--row", 10_000), "--row 10000 is out of range"),
        ((template_output, image), "is an image, but this model reads table"),
        ((template_output, credit_sample, "--target", "maybe"), "--target 'maybe' is not one of this model's labels"),
        ((image_output, credit_sample), "this model reads images"),
        ((image_output, "some words"), "this model reads images"),
        ((image_output, broken), f"{broken}: "),
        ((tmp_path / "no_such_output", image), "neither an hf-adapt output folder"),
    ]
    for args, message in cases:
        code, out, err = _run(capsys, *args)
        assert code == 2 and out == "", (args, err)
        assert err.startswith("hf-adapt explain: error: ") and message in err, (args, err)
    assert not (tmp_path / "explanations").exists()
