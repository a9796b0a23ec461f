"""``table_features`` in the finetune recipe, end to end on real German Credit rows and a tiny BERT: the hybrid saves
its encoding with the adapter, head or full weights, ``load_adapted`` reproduces it, explanations split each column
between the text and the table paths, serving takes rows, and what cannot work is refused before training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.errors import ConfigError, DataError, ModelError
from hf_adapt.recipes.finetune import FinetuneConfig, main
from tests.conftest import train_finetune

TEXT_ONLY_COLUMNS = ["purpose", "housing", "job"]


def _run(tmp_path, tiny_bert, data, **values):
    base = dict(model_name_or_path=str(tiny_bert), data=str(data), num_train_epochs=1, max_steps=6,
                per_device_train_batch_size=16, learning_rate=5e-3, report_to="none", torch_num_threads=1,
                base_model_id=None, output_dir=str(tmp_path / "out"), table_features="auto", card_examples=1)
    return main(config_from_dict(FinetuneConfig, {**base, **values}))


def _rows(csv, columns, n=12) -> list[dict]:
    frame = pd.read_csv(csv)
    return json.loads(frame[columns].head(n).to_json(orient="records"))


@pytest.mark.parametrize("regime", ["adapter", "linear_probe", "full", "gradual_unfreeze"])
def test_a_hybrid_reloads_to_the_logits_it_was_tested_with(regime, tiny_bert, credit_sample, tmp_path):
    result = _run(tmp_path, tiny_bert, credit_sample, regime=regime, card_examples=1 if regime == "adapter" else 0)
    out = result.output_dir
    info = json.loads((out / "hf_adapt.json").read_text())
    columns = result.data.feature_columns
    assert info["data"]["table_features"] == columns and (out / "table_features.json").is_file()
    rows = _rows(credit_sample, columns)
    backbone = result.backbone
    with torch.no_grad():
        expected = backbone.logits(result.model.eval(), backbone.preprocessor.collate(rows, train=False))
    predictor = hf_adapt.load_adapted(str(out))
    np.testing.assert_allclose(predictor.logits(rows).numpy(), expected.numpy(), atol=1e-5)
    wide = {n: p for n, p in result.model.named_parameters() if "table_wide." in n}
    assert wide and not any(p.requires_grad for p in wide.values())  # the logistic regression is kept
    assert any(p.requires_grad for n, p in result.model.named_parameters() if "table_deep." in n)
    if regime != "adapter":
        return
    card = (out / "README.md").read_text()
    assert "Table features: 12 columns enter the head beside the pooled text embedding" in card
    assert "a category not seen in training is encoded as unknown" in card
    explained = json.loads((out / "figures" / "explain_0.json").read_text())
    by_column = {c["column"]: c for c in explained["columns"]}
    assert {"text_attribution", "table_attribution"} <= set(by_column["age_in_years"])
    total = sum(c["attribution"] for c in explained["columns"])
    assert total == pytest.approx(explained["output_at_input"] - explained["output_at_baseline"], abs=0.05)


def test_rows_are_checked_and_unseen_values_follow_the_rule(tiny_bert, credit_sample, tmp_path):
    out = _run(tmp_path, tiny_bert, credit_sample, card_examples=0).output_dir
    predictor = hf_adapt.load_adapted(str(out))
    row = _rows(credit_sample, predictor.data_info["feature_columns"], 1)[0]
    with pytest.raises(DataError, match="a text alone lacks the numbers"):
        predictor.predict(predictor.text_of(row))
    with pytest.raises(DataError, match="lacks column.*'housing'"):
        predictor.predict({k: v for k, v in row.items() if k != "housing"})
    with pytest.raises(DataError, match="'age_in_years' expects a number"):
        predictor.predict({**row, "age_in_years": "old"})
    unseen = predictor.predict([{**row, "purpose": "a spaceship", "age_in_years": None}])[0]
    assert sum(unseen["probabilities"].values()) == pytest.approx(1.0)


def test_a_free_text_column_with_table_features(tiny_bert, german_credit_csv, tmp_path):
    """The text is a column of its own (a loan note); the numbers and categories sit beside it."""
    frame = pd.read_csv(german_credit_csv).head(240)
    frame["note"] = [f"loan for {p}, {j}" for p, j in zip(frame["purpose"], frame["job"])]
    csv = tmp_path / "loans.csv"
    columns = ["note", "duration_in_month", "credit_amount", "age_in_years", "housing", "creditability"]
    frame[columns].to_csv(csv, index=False)
    table = ["duration_in_month", "credit_amount", "age_in_years", "housing"]
    out = _run(tmp_path, tiny_bert, csv, text_column="note", table_features=table, text_template=None,
               card_examples=1).output_dir
    predictor = hf_adapt.load_adapted(str(out))
    rows = _rows(csv, columns[:-1], 4)
    assert len(predictor.predict(rows)) == 4
    with pytest.raises(DataError, match="lacks column.*'note'"):
        predictor.predict({k: v for k, v in rows[0].items() if k != "note"})
    from hf_adapt.explain import explain_checked
    from hf_adapt.inputs import check_inputs

    explained = explain_checked(predictor, check_inputs(rows[0], predictor.data_info)[0])
    assert {c["column"] for c in explained["columns"]} >= {"note", *table}
    assert "table paths" in explained["method"]


def test_cross_validation_refits_the_encoding_per_fold(tiny_bert, credit_sample, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="hf_adapt.table_features"):
        result = _run(tmp_path, tiny_bert, credit_sample, cv_folds=2, max_steps=-1, card_examples=0)
    fitted = [r.getMessage() for r in caplog.records if "wide path starts" in r.getMessage()]
    pool = result.data.origin["splits"]["train"] + result.data.origin["splits"]["validation"]
    # the first model (train split), each fold on its own training rows, then the refit on all pooled rows
    assert len(fitted) == 4 and fitted[-1].endswith(f"on {pool} rows")
    cv = json.loads((result.output_dir / "cv_results.json").read_text())
    assert len(cv["folds"]) == 2 and all("logistic_regression" in f["baselines"] for f in cv["folds"])


def test_what_cannot_work_is_refused_before_training(tiny_bert, credit_sample, digits_folder, tiny_timm_convnet,
                                                     tmp_path):
    with pytest.raises(ConfigError, match="lacks"):
        _run(tmp_path, tiny_bert, credit_sample, table_features=["no_such_column"])
    with pytest.raises(ConfigError, match="table and text data"):
        train_finetune(tmp_path / "img", model_name_or_path=str(tiny_timm_convnet), data=str(digits_folder),
                       label_column="label", text_template=None, table_features=["image"])
    with pytest.raises(ConfigError, match="without table_features"):
        _run(tmp_path, tiny_bert, credit_sample, adapter={"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 4})
    hybrid = _run(tmp_path, tiny_bert, credit_sample, card_examples=0).output_dir
    with pytest.raises(ConfigError, match="hybrid table model"):
        _run(tmp_path / "child", tiny_bert, credit_sample, init_from=str(hybrid), table_features="none")
    from hf_adapt.export import export

    with pytest.raises(ModelError, match="hybrid table model"):
        export(str(hybrid), tmp_path / "exported")
    from hf_adapt.recipes.continual import ContinualConfig

    with pytest.raises(ConfigError, match="table_features is not a ContinualConfig key: hybrid table models train"):
        config_from_dict(ContinualConfig, {"table_features": "auto"})


def test_serving_a_hybrid_takes_rows_and_logs_their_text(tiny_bert, credit_sample, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from hf_adapt.feedback.log import read_feedback
    from hf_adapt.serve.app import Server, create_app
    from hf_adapt.serve.config import ServeConfig
    from hf_adapt.serve.models import load_served
    from tests.serve.helpers import call, running

    out = _run(tmp_path, tiny_bert, credit_sample, card_examples=0).output_dir
    served = load_served(str(out), None, False, "cpu")
    rows = _rows(credit_sample, served.model.data_info["feature_columns"], 3)
    log = tmp_path / "feedback" / "served.jsonl"
    server = Server(ServeConfig(model=str(out), feedback_log=str(log)), served)
    with running(create_app(server)) as url:
        status, body, _ = call(f"{url}/v1/predict", {"inputs": rows})
        bad, refusal, _ = call(f"{url}/v1/predict", {"inputs": ["checking ... as text"]})
        first = body["predictions"][0]["prediction_id"]
        assert call(f"{url}/v1/feedback", {"id": first, "feedback": "up"})[0] == 201
    assert status == 200 and bad == 422 and "table features" in json.dumps(refusal)
    expected = served.model.predict_proba(rows)
    got = np.array([[p["probabilities"][n] for n in served.model.labels] for p in body["predictions"]])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    record = read_feedback(log).records[0]
    assert record["prompt"] == served.model.text_of(rows[0]) and record["metadata"]["row"] == rows[0]


def test_a_hybrid_can_start_from_a_text_model(tiny_bert, credit_sample, tmp_path):
    """init_from a text-only output (its adapter merged into the base), with table features on top."""
    parent = _run(tmp_path / "parent", tiny_bert, credit_sample, table_features="none", card_examples=0).output_dir
    result = _run(tmp_path / "child", tiny_bert, credit_sample, init_from=str(parent), card_examples=0)
    rows = _rows(credit_sample, result.data.feature_columns)
    backbone = result.backbone
    with torch.no_grad():
        expected = backbone.logits(result.model.eval(), backbone.preprocessor.collate(rows, train=False))
    np.testing.assert_allclose(hf_adapt.load_adapted(str(result.output_dir)).logits(rows).numpy(), expected.numpy(),
                               atol=1e-5)


def test_calibration_and_group_rules_sit_on_a_hybrid(tiny_bert, german_credit_csv, tmp_path):
    """Both act on the hybrid's logits; load_adapted reproduces exactly the test decisions the card reports."""
    fairness = {"constraint": "demographic_parity", "sensitive_column": "age_in_years", "bins": [35]}
    result = _run(tmp_path, tiny_bert, german_credit_csv, calibration="platt", fairness=fairness,
                  bootstrap_resamples=200, card_examples=0)
    results = json.loads((result.output_dir / "fairness_results.json").read_text())
    test = result.data.splits["test"]
    rows = test.select_columns(result.data.feature_columns).to_list()
    positive = results["positive_label"]
    answers = hf_adapt.load_adapted(str(result.output_dir)).predict(rows)
    decided = np.array([a["label"] == positive for a in answers])
    truth = np.asarray(test["label"]) == result.data.labels.index(positive)
    assert {a["group"] for a in answers} == {"<35", ">=35"}
    assert float((decided == truth).mean()) == pytest.approx(results["test"]["accuracy"]["after"])
