"""``hf-adapt export``: merged and ONNX exports of real (one-epoch, tiny-model) outputs load in the libraries
other serving stacks use and give the same answers; the usage snippet each export's README carries runs."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import torch

from hf_adapt.cli import main as cli
from hf_adapt.predict import load_adapted
from tests.conftest import train_finetune


def _snippet(folder, replace: dict[str, str] | None = None) -> dict:
    """Run the README's Python block inside the export folder (as a user would, from there); its namespace."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    for old, new in (replace or {}).items():
        assert old in code
        code = code.replace(old, new)
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        exec(compile(code, str(folder / "README.md"), "exec"), namespace)
    finally:
        os.chdir(cwd)
    return namespace


@pytest.fixture(scope="module")
def credit_row(credit_sample) -> dict:
    return json.loads(pd.read_csv(credit_sample).drop(columns=["creditability"]).head(1).to_json(orient="records"))[0]


@pytest.fixture(scope="module")
def mean_pooled(tiny_bert, credit_sample, tmp_path_factory):
    """A table model with a mean-pooling head (as sentence-transformers bases get): the quickstart's shape."""
    return train_finetune(tmp_path_factory.mktemp("export_mean") / "out", model_name_or_path=str(tiny_bert),
                          data=str(credit_sample), text_pooling="mean")


def test_merged_mean_pooling_loads_in_sentence_transformers(mean_pooled, credit_row, tmp_path, capsys):
    out = tmp_path / "merged"
    assert cli(["export", str(mean_pooled), "--out", str(out)]) == 0
    assert json.loads((out / "export.json").read_text())["layout"] == "sentence-transformers"
    namespace = _snippet(out, {'row = {c: "..." for c in rows["feature_columns"]}': f"row = {credit_row!r}"})
    got = namespace["logits"].softmax(-1).numpy()
    expected = load_adapted(str(mean_pooled)).predict_proba([credit_row])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert cli(["export", str(mean_pooled), "--out", str(out)]) == 2  # never over an export
    assert "not empty" in capsys.readouterr().err


def test_merged_transformers_head_runs_in_a_pipeline(tiny_bert, credit_sample, credit_row, tmp_path):
    model = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(credit_sample),
                           text_pooling="model")
    out = tmp_path / "merged"
    assert cli(["export", str(model), "--out", str(out)]) == 0
    namespace = _snippet(out, {'row = {c: "..." for c in rows["feature_columns"]}': f"row = {credit_row!r}"})
    predictor = load_adapted(str(model))
    expected = predictor.predict_proba([credit_row])[0]
    scores = {item["label"]: item["score"] for item in namespace["classify"](namespace["texts"])[0]}
    np.testing.assert_allclose([scores[name] for name in predictor.labels], expected, atol=1e-5)


def test_onnx_matches_pytorch_and_its_snippet_runs(mean_pooled, credit_row, tmp_path):
    out = tmp_path / "onnx"
    assert cli(["export", str(mean_pooled), "--format", "onnx", "--out", str(out)]) == 0
    facts = json.loads((out / "export.json").read_text())
    assert facts["max_abs_difference"] <= 1e-4 and facts["inputs"][0] == "input_ids"
    namespace = _snippet(out, {'row = {c: "..." for c in rows["feature_columns"]}': f"row = {credit_row!r}"})
    session, feed = namespace["session"], namespace["feed"]
    logits = session.run(["logits"], feed)[0]
    np.testing.assert_allclose(logits, load_adapted(str(mean_pooled)).logits([credit_row]).numpy(), atol=1e-4)


def test_timm_exports_load_with_timm_and_onnx(tiny_timm_convnet, digits_folder, tmp_path):
    import timm

    model = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_timm_convnet), data=str(digits_folder),
                           label_column="label", reset_head=True, image_size=32, metric_for_best_model="accuracy",
                           adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8})
    predictor = load_adapted(str(model))
    files = sorted(digits_folder.rglob("*.png"))[:3]
    from hf_adapt.inputs import check_inputs

    batch = predictor.preprocessor.collate(check_inputs([str(f) for f in files], predictor.data_info), train=False)
    expected = predictor.logits([str(f) for f in files]).numpy()
    merged, onnx = tmp_path / "merged", tmp_path / "onnx"
    assert cli(["export", str(model), "--out", str(merged)]) == 0
    assert cli(["export", str(model), "--format", "onnx", "--out", str(onnx)]) == 0
    reloaded = timm.create_model(f"local-dir:{merged}", pretrained=True).eval()
    assert reloaded.pretrained_cfg.get("label_names") == predictor.labels
    with torch.no_grad():
        np.testing.assert_allclose(reloaded(batch["pixel_values"]).numpy(), expected, atol=1e-5)
    _snippet(merged)
    session = _snippet(onnx)["session"]
    np.testing.assert_allclose(session.run(["logits"], {"pixel_values": batch["pixel_values"].numpy()})[0], expected,
                               atol=1e-4)


def test_a_policy_exports_merged_for_generation_servers(tiny_chat_llama, tmp_path):
    from hf_adapt.feedback import load_policy
    from hf_adapt.recipes.feedback import FeedbackConfig
    from hf_adapt.recipes.feedback import main as feedback_main
    from tests.feedback.conftest import product_feedback, write_log

    log = write_log(tmp_path / "chat.jsonl", product_feedback(range(4), conversational=True))
    policy = feedback_main(FeedbackConfig(model_name_or_path=str(tiny_chat_llama), feedback=str(log),
                                          output_dir=str(tmp_path / "policy"), trainer="sft", max_steps=1, max_length=64,
                                          torch_num_threads=1, adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8},
                                          max_new_tokens=8)).output_dir
    out = tmp_path / "merged"
    assert cli(["export", str(policy), "--out", str(out)]) == 0
    assert cli(["export", str(policy), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 2
    answer = _snippet(out)["answer"]
    model, tokenizer, _ = load_policy(policy, merge=True)
    inputs = tokenizer("How was it?", return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    assert answer == tokenizer.decode(ids[0], skip_special_tokens=True)
