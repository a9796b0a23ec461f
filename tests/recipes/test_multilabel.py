"""task: multi_label end to end on real German Credit rows and a tiny BERT. Each row carries any of three labels
read off its own columns (bad credit, a loan over 24 months, rented housing), so several, one or none apply:
training with binary cross-entropy, thresholds chosen on validation and saved, metrics with intervals, the
per-label card table, reloading, cross-validation, explanations, serving with corrections, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hf_adapt.config import config_from_dict
from hf_adapt.errors import ConfigError, DataError
from hf_adapt.recipes.finetune import FinetuneConfig
from tests.conftest import train_finetune

TEMPLATE = ("{duration_in_month} months, purpose {purpose}, {credit_amount} DM, history {credit_history}, "
            "housing {housing}, checking {status_of_existing_checking_account}")
LABELS = ["bad", "long", "rented"]


@pytest.fixture(scope="module")
def findings_csv(credit_sample, tmp_path_factory):
    """The sample with a ``findings`` list column ("bad|long", "" ...) and the same labels as 0/1 columns."""
    frame = pd.read_csv(credit_sample)
    flags = pd.DataFrame({"bad": frame["creditability"] == "bad", "long": frame["duration_in_month"] > 24,
                          "rented": frame["housing"] == "rent"}).astype(int)
    frame["findings"] = ["|".join(name for name in LABELS if row[name]) for _, row in flags.iterrows()]
    path = tmp_path_factory.mktemp("multilabel") / "findings.csv"
    pd.concat([frame, flags], axis=1).to_csv(path, index=False)
    return path


def _values(tiny_bert, data, **values):
    return {"model_name_or_path": str(tiny_bert), "data": str(data), "task": "multi_label",
            "label_column": "findings", "metric_for_best_model": "map", "text_template": TEMPLATE,
            "num_train_epochs": 3, "learning_rate": 1e-2, "bootstrap_resamples": 200, "card_examples": 0,
            "class_weights": "balanced", **values}


@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, tiny_bert, findings_csv):
    return train_finetune(tmp_path_factory.mktemp("ml") / "out", **_values(
        tiny_bert, findings_csv, sensitive_columns=["foreign_worker"]))


def test_a_multi_label_run_chooses_and_saves_a_threshold_per_label(multilabel_run):
    record = json.loads((multilabel_run / "hf_adapt.json").read_text())
    task = record["task"]
    assert task["name"] == "multi_label" and task["thresholds_chosen_on"] == "the validation split"
    assert len(task["thresholds"]) == 3 and all(0 < t < 1 for t in task["thresholds"])
    labels = json.loads((multilabel_run / "label_map.json").read_text())["id2label"]
    assert list(labels.values()) == LABELS
    metrics = json.loads((multilabel_run / "eval_results.json").read_text())
    assert {"micro_f1", "macro_f1", "map", "auroc", "subset_accuracy", "hamming_loss"} <= set(metrics)
    assert metrics["auroc"] > 0.5  # the labels are in the rows' text: even a tiny model ranks them
    card = (multilabel_run / "README.md").read_text()
    assert "| label | test rows with it | AUROC |" in card and "| long |" in card
    assert "logistic regression" in card and "(figures/precision_recall.png)" in card
    assert "- multi-label" in card  # the Hub tag
    assert (multilabel_run / "figures" / "precision_recall.png").is_file()
    assert "ECE is the top-label" not in card
    assert "Test metrics per group of the sensitive column(s)" in card and "| foreign_worker | gap |" in card


def test_load_adapted_returns_label_sets_at_the_saved_thresholds(multilabel_run, findings_csv):
    import hf_adapt

    predictor = hf_adapt.load_adapted(str(multilabel_run))
    rows = pd.read_csv(findings_csv).head(12).to_dict("records")
    probs = predictor.predict_proba(rows)
    assert probs.shape == (12, 3) and ((probs > 0) & (probs < 1)).all()
    thresholds = np.array(list(predictor.thresholds.values()))
    got = predictor.predict(rows)
    assert [p["labels"] for p in got] == [[n for n, p, t in zip(LABELS, row, thresholds) if p >= t] for row in probs]
    assert got[0]["probabilities"] == pytest.approx(dict(zip(LABELS, probs[0])))


def test_label_columns_read_the_same_labels_and_cross_validation_runs(tiny_bert, findings_csv, tmp_path):
    frame = pd.read_csv(findings_csv).drop(columns=["findings"])  # the labels only as 0/1 columns
    frame.to_csv(tmp_path / "flags.csv", index=False)
    out = train_finetune(tmp_path / "cv", **_values(tiny_bert, tmp_path / "flags.csv", label_columns=LABELS,
                                                    cv_folds=2, num_train_epochs=1, class_weights="none"))
    results = json.loads((out / "cv_results.json").read_text())
    assert len(results["folds"]) == 2 and "map" in results["summary"]["model"]
    assert json.loads((out / "hf_adapt.json").read_text())["task"]["thresholds_chosen_on"] == (
        "the pooled out-of-fold predictions of 2 folds")


def test_explain_attributes_one_label_of_a_row(multilabel_run, findings_csv, tmp_path):
    from hf_adapt.explain import explain

    row = pd.read_csv(findings_csv).iloc[[0]]
    row.to_csv(tmp_path / "row.csv", index=False)
    _, facts_path = explain(str(multilabel_run), str(tmp_path / "row.csv"), out=tmp_path / "why", target="rented",
                            steps=8)
    facts = json.loads(facts_path.read_text())
    assert facts["target"] == "rented" and facts["explained_output"].startswith("logit(rented)")
    assert set(facts["probabilities"]) == set(LABELS)


def test_export_refuses_a_multi_label_model(multilabel_run, tmp_path):
    from hf_adapt.errors import ModelError
    from hf_adapt.export import export

    with pytest.raises(ModelError, match="this is a multi_label model, whose labels are decided by per-label"):
        export(str(multilabel_run), str(tmp_path / "exported"))


def test_serving_answers_label_sets_and_takes_corrected_sets(multilabel_run, findings_csv, tmp_path):
    pytest.importorskip("fastapi")
    from hf_adapt.feedback.log import read_feedback
    from hf_adapt.serve.app import Server, create_app
    from hf_adapt.serve.config import ServeConfig
    from hf_adapt.serve.models import load_served
    from tests.serve.helpers import call, running

    served = load_served(str(multilabel_run), None, False, "cpu")
    rows = pd.read_csv(findings_csv).head(3).to_dict("records")
    expected = served.model.predict(rows)
    log = tmp_path / "feedback" / "served.jsonl"
    with running(create_app(Server(ServeConfig(model=str(multilabel_run), feedback_log=str(log)), served))) as url:
        status, body, _ = call(f"{url}/v1/predict", {"inputs": rows})
        answer = body["predictions"][0]["prediction_id"]
        bad = call(f"{url}/v1/feedback", {"id": answer, "correction": ["bad", "nonsense"]})
        good = call(f"{url}/v1/feedback", {"id": answer, "correction": ["rented", "bad"]})
    assert status == 200 and [p["labels"] for p in body["predictions"]] == [p["labels"] for p in expected]
    assert bad[0] == 422 and "takes the right list of labels" in bad[1]["detail"]
    assert good[0] == 201, good[1]
    (record,) = read_feedback(str(log)).records
    assert record["correction"] == "bad|rented" and record["completion"] == "|".join(expected[0]["labels"])


@pytest.mark.parametrize("values, error, message", [
    ({"operating_point": "youden"}, ConfigError, "operating_point: 'youden' does not apply to task: multi_label"),
    ({"calibration": "temperature"}, ConfigError, "separate sigmoids"),
    ({"metric_for_best_model": "accuracy"}, ConfigError, "not a multi-label metric"),
    ({"task": "classification", "label_columns": LABELS}, ConfigError, "label_columns apply to task: multi_label"),
    ({"baseline": "ridge"}, ConfigError, "baseline: ridge is a regression baseline"),
    ({"task": "classification", "label_column": "creditability"}, ConfigError,
     "metric_for_best_model: map is a multi-label metric; task: classification takes"),
])
def test_what_multi_label_cannot_mean_is_refused_by_the_config(values, error, message, tiny_bert, findings_csv):
    with pytest.raises(error, match=message):
        config_from_dict(FinetuneConfig, _values(tiny_bert, findings_csv, **values))


def test_a_label_on_no_training_row_trains_and_its_baseline_predicts_its_rate(tiny_bert, findings_csv, tmp_path,
                                                                               caplog):
    frame = pd.read_csv(findings_csv).drop(columns=["findings"])
    frame["never"] = 0  # e.g. a finding no patient in this extract has
    frame.to_csv(tmp_path / "never.csv", index=False)
    with caplog.at_level("WARNING"):
        out = train_finetune(tmp_path / "out", **_values(tiny_bert, tmp_path / "never.csv",
                                                         label_columns=[*LABELS, "never"], num_train_epochs=1))
    assert "['never'] are on every training row or on none" in caplog.text
    baselines = json.loads((out / "train_results.json").read_text())["baseline_differences"]
    assert "logistic_regression" in baselines  # fitted with the constant label, not refused after training


def test_bad_labels_are_refused_naming_the_row(tiny_bert, findings_csv, tmp_path):
    frame = pd.read_csv(findings_csv)
    frame.loc[3, "long"] = 2
    frame.to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(DataError, match=r"two.csv \(split 'train'\) row 3, column 'long': 2 is not 0 or 1"):
        train_finetune(tmp_path / "a", **_values(tiny_bert, tmp_path / "two.csv", label_columns=LABELS))
    frame = pd.read_csv(findings_csv)
    split = {"train": frame.iloc[:150], "validation": frame.iloc[150:175], "test": frame.iloc[175:].copy()}
    split["test"].loc[split["test"].index[0], "findings"] = "bad|unheard_of"
    files = {}
    for name, part in split.items():
        part.to_csv(tmp_path / f"{name}.csv", index=False)
        files[name] = str(tmp_path / f"{name}.csv")
    with pytest.raises(DataError, match="label 'unheard_of' never appears in the train split"):
        train_finetune(tmp_path / "b", **{**_values(tiny_bert, ""), "data_files": files})


@pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores
def test_a_multi_label_model_pushes_and_loads_back_from_the_hub(tiny_bert, findings_csv, tmp_path, monkeypatch):

    from huggingface_hub import ModelCard

    import hf_adapt
    from hf_adapt.hub import PushSettings, push_output
    from tests.hub_server import LocalHub, hub_env, record_backoff, run_card_snippet

    repo = "hf-adapt-tests/credit-findings"
    out = train_finetune(tmp_path / "out", **_values(tiny_bert, findings_csv, num_train_epochs=1,
                                                     base_model_id="hf-adapt-tests/tiny-bert"))
    with LocalHub({"hf-adapt-tests/tiny-bert": tiny_bert}) as hub:
        hub_env(monkeypatch, hub, tmp_path, token="hf_TestTokenThatMustNeverLeak0123456789")
        record_backoff(monkeypatch)
        push_output(out, PushSettings(repo_id=repo, backoff_seconds=0.01))
        rows = pd.read_csv(findings_csv).head(5).to_dict("records")
        pulled = hf_adapt.load_adapted(repo)
        assert pulled.thresholds == hf_adapt.load_adapted(str(out)).thresholds
        np.testing.assert_allclose(pulled.predict_proba(rows), hf_adapt.load_adapted(str(out)).predict_proba(rows),
                                   rtol=1e-6)
        card = hub.repo(repo).files("main")["README.md"].decode()
        proc = run_card_snippet(card, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'labels': [" in proc.stdout.strip().splitlines()[-1]
    assert "multi-label" in ModelCard(card).data.tags
