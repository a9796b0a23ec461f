"""The bad-input matrix of issue 17's load and predict cases: what a served model is handed.

Every bad input to ``Predictor.predict`` / ``predict_proba`` / ``logits`` (and ``explain``) is refused
with a ``DataError`` that names the input's index in the batch, the column where there is one, what
was expected and what was got; the model never answers it. Every folder ``load_adapted`` cannot
load is refused with a ``ModelError`` naming the file (or the folder, and which loader fits it),
before the base model is built.

The outputs are real finetune runs of two optimiser steps on tiny models: a table model (tiny BERT
on German Credit rows, the quickstart template), a plain-text model, an image-folder model and a
pixel-table model (tiny timm MobileNet on scikit-learn digits).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.data import render_row
from hf_adapt.errors import DataError, ModelError
from hf_adapt.recipes.finetune import FinetuneConfig, main

# ----------------------------------------------------------------------------- tiny trained outputs


def _train(output_dir: Path, **values) -> Path:
    base = dict(max_steps=2, num_train_epochs=1, per_device_train_batch_size=16, learning_rate=5e-3, max_length=96,
                report_to="none", torch_num_threads=1, base_model_id=None, card_examples=0, bootstrap_resamples=0,
                baseline="none", output_dir=str(output_dir))
    return main(config_from_dict(FinetuneConfig, {**base, **values})).output_dir


@pytest.fixture(scope="module")
def outputs(tiny_bert, tiny_timm_convnet, credit_sample, digits_folder, tmp_path_factory) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("bad_inputs_predict")
    frame = pd.read_csv(credit_sample)
    pd.DataFrame({"text": [f"{r['purpose']}, {r['duration_in_month']} months" for r in frame.to_dict("records")],
                  "housing": frame["housing"]}).to_csv(root / "texts.csv", index=False)
    digits = load_digits()
    keep = np.flatnonzero(digits.target < 3)[:60]
    pixels = pd.DataFrame(digits.data[keep], columns=[f"p{i}" for i in range(64)]).assign(label=digits.target[keep])
    pixels.to_csv(root / "pixels.csv", index=False)
    image = dict(model_name_or_path=str(tiny_timm_convnet), label_column="label", reset_head=True, image_size=32,
                 metric_for_best_model="accuracy")
    return {
        "table": _train(root / "table", model_name_or_path=str(tiny_bert), data=str(credit_sample)),
        "text": _train(root / "text", model_name_or_path=str(tiny_bert), data=str(root / "texts.csv"),
                       text_column="text", label_column="housing"),
        "image": _train(root / "image", data=str(digits_folder), **image),
        "pixels": _train(root / "pixels", data=str(root / "pixels.csv"), pixel_shape=[8, 8], **image),
    }


@pytest.fixture(scope="module")
def predictors(outputs) -> dict[str, Any]:
    return {kind: hf_adapt.load_adapted(str(path)) for kind, path in outputs.items()}


@pytest.fixture(scope="module")
def good(outputs, credit_sample, digits_folder) -> dict[str, Any]:
    """One valid input per model kind (a whole CSV row for the table: its extra columns are ignored)."""
    return {"table": pd.read_csv(credit_sample).to_dict("records")[0], "text": "car (new), 24 months",
            "image": str(next((digits_folder / "0").glob("*.png"))), "pixels": np.full((8, 8), 8.0)}


# ----------------------------------------------------------------------------- predict: refused, by name


_DROP = object()


def _changed(row: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``row`` with each change applied: a new value, or the column dropped (``_DROP``)."""
    row = dict(row)
    for column, value in changes.items():
        if value is _DROP:
            del row[column]
        else:
            row[column] = value
    return row


def _row(**changes) -> Any:
    return lambda good, tmp: _changed(good["table"], changes)


def _pixels(**changes) -> Any:
    return lambda good, tmp: _changed({f"p{i}": 4.0 for i in range(64)}, changes)


def _broken_png(good, tmp: Path) -> str:
    path = tmp / "broken.png"
    path.write_bytes(b"not a png")
    return str(path)


PREDICT_REFUSED = [
    # a table model reads rows: not None, numbers, free text, nor other kinds of input
    pytest.param("table", lambda g, t: None, r"input 0: this model reads table rows .* got None", id="table-none"),
    pytest.param("table", lambda g, t: 42, r"input 0: this model reads table rows .* got int 42", id="table-int"),
    pytest.param("table", lambda g, t: "some text", r"input 0: this model reads table rows .* got str 'some text'",
                 id="table-free-text"),
    pytest.param("table", lambda g, t: [g["table"], 42], r"input 1: this model reads table rows .* got int 42",
                 id="table-mixed-batch"),
    pytest.param("table", lambda g, t: np.zeros((8, 8)), r"input 0: this model reads table rows .* got ndarray",
                 id="table-array"),
    pytest.param("table", lambda g, t: [], r"no inputs", id="table-empty-batch"),
    pytest.param("table", _row(duration_in_month=_DROP), r"input 0: the row lacks column\(s\) \['duration_in_month'\]",
                 id="table-missing-column"),
    pytest.param("table", lambda g, t: {**{k: v for k, v in g["table"].items() if k != "purpose"}, "purpse": "car"},
                 r"input 0: the row lacks column\(s\) \['purpose'\].*'purpse' may be a misspelling of 'purpose'",
                 id="table-misspelt-column"),
    pytest.param("table", _row(duration_in_month="abc"),
                 r"input 0: column 'duration_in_month' expects a number .* got str 'abc'", id="table-text-for-number"),
    pytest.param("table", _row(duration_in_month=True),
                 r"input 0: column 'duration_in_month' expects a number .* got bool True", id="table-bool-for-number"),
    pytest.param("table", _row(credit_amount=math.inf),
                 r"input 0: column 'credit_amount' is inf; .*finite number", id="table-inf"),
    pytest.param("table", _row(purpose=42), r"input 0: column 'purpose' expects text .* got int 42",
                 id="table-number-for-text"),
    pytest.param("table", _row(purpose=["car"]), r"input 0: column 'purpose' expects text .* got list",
                 id="table-list-for-text"),
    # a text model reads non-empty text only
    pytest.param("text", lambda g, t: None, r"input 0: this model reads text: expected a str, got None", id="text-none"),
    pytest.param("text", lambda g, t: 42, r"input 0: this model reads text: expected a str, got int 42", id="text-int"),
    pytest.param("text", lambda g, t: {"text": "car"}, r"input 0: this model reads text: expected a str, got dict",
                 id="text-dict"),
    pytest.param("text", lambda g, t: ["fine", "  "], r"input 1: the text is empty", id="text-blank"),
    pytest.param("text", lambda g, t: [], r"no inputs", id="text-empty-batch"),
    # an image model reads image files, PIL images and 8-bit arrays
    pytest.param("image", lambda g, t: None, r"input 0: this model reads images: .* got None", id="image-none"),
    pytest.param("image", lambda g, t: 42, r"input 0: this model reads images: .* got int 42", id="image-int"),
    pytest.param("image", lambda g, t: {"p0": 1}, r"input 0: this model reads images: .* got dict", id="image-dict"),
    pytest.param("image", lambda g, t: [g["image"], "a cat"], r"input 1: no image file 'a cat'", id="image-not-a-path"),
    pytest.param("image", _broken_png, r"input 0 \(.*broken\.png\): unreadable image", id="image-unreadable-file"),
    pytest.param("image", lambda g, t: np.zeros((0, 0), dtype=np.uint8), r"input 0: the array is empty \(shape \(0, 0\)\)",
                 id="image-0x0-array"),
    pytest.param("image", lambda g, t: Image.new("RGB", (0, 0)), r"input 0: the image is empty \(0 x 0 pixels\)",
                 id="image-0x0-pil"),
    pytest.param("image", lambda g, t: np.zeros((2, 8, 8, 3), dtype=np.uint8),
                 r"input 0: an image array is H x W or H x W x C .* got shape \(2, 8, 8, 3\)", id="image-4d-array"),
    pytest.param("image", lambda g, t: np.zeros((3, 32, 32), dtype=np.uint8),
                 r"input 0: an image array is H x W or H x W x C .* got shape \(3, 32, 32\)", id="image-channels-first"),
    pytest.param("image", lambda g, t: np.full((8, 8), 300.0), r"input 0: pixel values must lie in 0\.\.255, got 300",
                 id="image-out-of-range"),
    pytest.param("image", lambda g, t: np.full((8, 8), 0.5), r"input 0: pixel values all lie in 0\.\.1",
                 id="image-scaled-to-one"),
    pytest.param("image", lambda g, t: np.array([["a"]]), r"input 0: pixel values must be numbers, got an array of <U1",
                 id="image-string-array"),
    pytest.param("image", lambda g, t: [], r"no inputs", id="image-empty-batch"),
    # a pixel-table model also reads its pixel columns, or an array of its pixel shape
    pytest.param("pixels", _pixels(p5=_DROP), r"input 0: the row lacks column\(s\) \['p5'\]", id="pixels-missing-column"),
    pytest.param("pixels", _pixels(p7="abc"), r"input 0: column 'p7' expects a number .* got str 'abc'",
                 id="pixels-text-value"),
    pytest.param("pixels", _pixels(p7=None), r"input 0: column 'p7' is missing a value; pixels have no missing",
                 id="pixels-missing-value"),
    pytest.param("pixels", lambda g, t: np.zeros((3, 3)), r"input 0: expected an array of shape \[8, 8\] \(or 64 "
                 r"values\), got shape \(3, 3\)", id="pixels-wrong-shape"),
    pytest.param("pixels", lambda g, t: {"text": "x"}, r"input 0: the row lacks column\(s\) \['p0', 'p1'", id="pixels-other-dict"),
]


@pytest.mark.parametrize("method", ["predict", "predict_proba", "logits"])
@pytest.mark.parametrize(("kind", "make", "words"), PREDICT_REFUSED)
def test_bad_input_to_a_model_is_refused_by_name(kind, make, words, method, predictors, good, tmp_path):
    with pytest.raises(DataError, match=words):
        getattr(predictors[kind], method)(make(good, tmp_path))


# ----------------------------------------------------------------------------- predict: accepted, as training read it


def test_table_values_are_read_as_training_read_the_csv(predictors, good):
    predictor, row = predictors["table"], good["table"]
    as_text = {k: (str(v) if isinstance(v, int) else v) for k, v in row.items()}  # "24" is what a CSV cell holds
    rendered = render_row(row, predictor.info["data"]["feature_columns"], predictor.info["data"]["text_template"])
    expected = predictor.logits(row)
    assert torch.equal(predictor.logits(as_text), expected)
    assert torch.equal(predictor.logits({**row, "an_id": "x-17"}), expected)  # extra keys: ignored
    assert torch.equal(predictor.logits(rendered), expected)  # the row's text, as training rendered it
    missing = [predictor.logits({**row, "duration_in_month": v}) for v in (None, math.nan, "", "nan")]
    assert all(torch.equal(m, missing[0]) for m in missing)  # every spelling of an empty cell reads as 'missing'
    assert not torch.equal(missing[0], expected)
    assert len(predictor.predict([row, row])) == 2


def test_column_kinds_are_recorded_and_old_outputs_check_presence_only(outputs, good, tmp_path):
    info = json.loads((outputs["table"] / "hf_adapt.json").read_text())
    kinds = info["data"]["column_kinds"]
    assert set(kinds) == set(info["data"]["feature_columns"])
    assert kinds["duration_in_month"] == "number" and kinds["purpose"] == "text"
    old = tmp_path / "old"
    shutil.copytree(outputs["table"], old)
    del info["data"]["column_kinds"]
    (old / "hf_adapt.json").write_text(json.dumps(info))
    predictor = hf_adapt.load_adapted(str(old))
    assert len(predictor.predict({**good["table"], "duration_in_month": "abc"})) == 1  # kinds unknown: not checked
    with pytest.raises(DataError, match=r"input 0: the row lacks column\(s\) \['purpose'\]"):
        predictor.predict({k: v for k, v in good["table"].items() if k != "purpose"})


def test_image_inputs_of_every_accepted_form(predictors, good, tmp_path):
    predictor = predictors["image"]
    with Image.open(good["image"]) as image:
        pil = image.convert("RGB")
    pixels = np.asarray(pil)
    expected = predictor.logits(good["image"])
    assert torch.equal(predictor.logits(Path(good["image"])), expected)
    assert torch.equal(predictor.logits(pil), expected)
    assert torch.equal(predictor.logits(pixels), expected)
    assert torch.equal(predictor.logits(Path(good["image"]).read_bytes()), expected)  # an uploaded file's bytes
    pixel_model = predictors["pixels"]
    flat = pixel_model.logits(np.full(64, 8.0))
    assert torch.equal(pixel_model.logits(good["pixels"]), flat)
    assert torch.equal(pixel_model.logits({f"p{i}": 8 for i in range(64)}), flat)


# ----------------------------------------------------------------------------- explain: the same check, before loading


def test_explain_refuses_a_bad_row_before_loading_the_model(outputs, good, tmp_path, monkeypatch):
    from hf_adapt import explain, predict

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(predict, "load_adapted", no_load)
    row = tmp_path / "row.json"
    row.write_text(json.dumps({**good["table"], "duration_in_month": "abc"}))
    with pytest.raises(DataError, match=r"input 0: column 'duration_in_month' expects a number .* got str 'abc'"):
        explain.explain(str(outputs["table"]), str(row), out=tmp_path / "explained")
    assert not (tmp_path / "explained").exists()


# ----------------------------------------------------------------------------- load_adapted: refused, by name


def _copy(outputs: dict[str, Path], tmp: Path, kind: str = "table") -> Path:
    return Path(shutil.copytree(outputs[kind], tmp / "copy"))


def _broken(name: str, content: bytes | str) -> Any:
    def make(outputs, tmp: Path) -> str:
        out = _copy(outputs, tmp)
        data = content if isinstance(content, bytes) else content.encode()
        (out / name).write_bytes(data)
        return str(out)
    return make


def _truncated_adapter(outputs, tmp: Path) -> str:
    out = _copy(outputs, tmp)
    data = (out / "adapter_model.safetensors").read_bytes()
    (out / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])
    return str(out)


def _run_file(info: dict[str, Any]) -> Any:
    """A folder holding only the ``hf_adapt.json`` another recipe writes: what load_adapted reads first."""
    def make(outputs, tmp: Path) -> str:
        (tmp / "other").mkdir()
        (tmp / "other" / "hf_adapt.json").write_text(json.dumps({"format_version": 1, **info}))
        return str(tmp / "other")
    return make


def _edited_run_file(**changes) -> Any:
    def make(outputs, tmp: Path) -> str:
        out = _copy(outputs, tmp)
        info = json.loads((out / "hf_adapt.json").read_text())
        (out / "hf_adapt.json").write_text(json.dumps({**info, **changes}))
        return str(out)
    return make


def _without(name: str) -> Any:
    def make(outputs, tmp: Path) -> str:
        out = _copy(outputs, tmp)
        (out / name).unlink()
        return str(out)
    return make


_PRETRAIN = {"recipe": "pretrain", "family": "transformers", "objective": "mlm", "regime": "adapter",
             "model": {"name_or_path": "some/bert"}, "data": {"source": "docs.txt", "text_column": "text"}}
_FEEDBACK = {"recipe": "feedback", "family": "transformers", "objective": "clm", "regime": "adapter", "trainer": "dpo",
             "model": {"name_or_path": "some/llama"}}

LOAD_REFUSED = [
    pytest.param(_run_file(_PRETRAIN), r"other is a pretrain output .*hf_adapt\.json.*: a mlm language model, not a "
                 r"classifier; load it with hf_adapt\.lm\.load_pretrained_lm", id="pretrain-output"),
    pytest.param(_run_file(_FEEDBACK), r"other is a feedback output .*: a dpo policy, not a classifier; load it with "
                 r"hf_adapt\.feedback\.load_policy", id="feedback-policy-output"),
    pytest.param(_run_file({**_FEEDBACK, "objective": "reward", "trainer": "reward"}),
                 r"other is a feedback output .*: a reward model, not a classifier; load it with "
                 r"hf_adapt\.feedback\.load_reward_model", id="feedback-reward-output"),
    pytest.param(_run_file({"recipe": "transfer_study", "arms": ["scratch"]}),
                 r"other is a transfer_study output .*runs/<arm>/<budget>/<seed>/", id="transfer-study-output"),
    pytest.param(_truncated_adapter, r"copy/adapter_model\.safetensors: not a whole safetensors file",
                 id="truncated-adapter"),
    pytest.param(_broken("adapter_model.safetensors", b""), r"copy/adapter_model\.safetensors: not a whole safetensors "
                 r"file", id="empty-adapter"),
    pytest.param(_broken("adapter_config.json", "{peft"), r"copy/adapter_config\.json: not valid JSON",
                 id="broken-adapter-config"),
    pytest.param(_broken("label_map.json", "{not json"), r"copy/label_map\.json: not valid JSON", id="broken-label-map"),
    pytest.param(_broken("label_map.json", '["bad", "good"]'), r"copy/label_map\.json: expected a JSON object, got a "
                 r"JSON list", id="label-map-a-list"),
    pytest.param(_broken("label_map.json", '{"id2label": {"0": "bad", "2": "good"}}'),
                 r"copy/label_map\.json: id2label must map '0'\.\.'1' to label names", id="label-map-with-a-gap"),
    pytest.param(_without("label_map.json"), r"copy/label_map\.json is missing", id="label-map-missing"),
    pytest.param(_broken("hf_adapt.json", ""), r"copy/hf_adapt\.json: not valid JSON \(the file is empty\)",
                 id="empty-run-file"),
    pytest.param(_broken("hf_adapt.json", "[1, 2]"), r"copy/hf_adapt\.json: expected a JSON object, got a JSON list",
                 id="run-file-a-list"),
    pytest.param(_edited_run_file(model=None), r"copy/hf_adapt\.json: 'model' is missing or not an object",
                 id="run-file-without-model"),
    pytest.param(_edited_run_file(format_version=99), r"copy/hf_adapt\.json: format_version 99 is newer than",
                 id="run-file-from-a-newer-version"),
    pytest.param(lambda outputs, tmp: str(tmp / "nope"), r"nope is neither an hf-adapt output folder \(no such folder: "
                 r".*nope\) nor a Hub repo id \(it is a path\)", id="absolute-path-missing"),
    pytest.param(lambda outputs, tmp: "./no-such-run", r"no-such-run is neither an hf-adapt output folder \(no such "
                 r"folder: .*\) nor a Hub repo id \(it is a path\)", id="relative-path-missing"),
    pytest.param(lambda outputs, tmp: "runs/2024/lora", r"runs/2024/lora is neither an hf-adapt output folder \(no such "
                 r"folder: .*\) nor a Hub repo id \(a Hub repo id is 'name' or 'owner/name'\)", id="nested-path-missing"),
    pytest.param(lambda outputs, tmp: "no-such-owner/no-such-model",
                 r"no-such-owner/no-such-model is neither an hf-adapt output folder \(no such folder: .*\) nor a Hub repo "
                 r"that can be read", id="repo-id-that-is-not-there"),
    pytest.param(lambda outputs, tmp: str(outputs["table"] / "hf_adapt.json"), r"hf_adapt\.json is a file, not an "
                 r"hf-adapt output folder", id="a-file"),
]


@pytest.mark.parametrize(("make", "words"), LOAD_REFUSED)
def test_load_adapted_refuses_by_name_before_the_base_loads(make, words, outputs, tmp_path, monkeypatch):
    from hf_adapt import predict

    def no_build(family):
        raise AssertionError("the base model was built before the folder was checked")

    source = make(outputs, tmp_path)
    monkeypatch.setattr(predict, "get_builder", no_build)
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ModelError, DataError), match=words):
        hf_adapt.load_adapted(source)
