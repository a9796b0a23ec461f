"""task: regression end to end on real rows (German Credit's credit amount from the other columns), tiny BERT:
training, the saved target scaling, metrics with intervals, baselines, figures, card, reloading, CV, serving."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import train_finetune

TEMPLATE = ("{duration_in_month} months, purpose {purpose}, age {age_in_years}, job {job}, "
            "housing {housing}, installment rate {installment_rate_in_percentage_of_disposable_income}")
COLUMNS = ["duration_in_month", "purpose", "age_in_years", "job", "housing",
           "installment_rate_in_percentage_of_disposable_income"]


def regression_values(tiny_bert, credit_sample, **values):
    return {"model_name_or_path": str(tiny_bert), "data": str(credit_sample), "task": "regression",
            "label_column": "credit_amount", "metric_for_best_model": "rmse", "text_template": TEMPLATE,
            "num_train_epochs": 2, "bootstrap_resamples": 200, "card_examples": 1, **values}


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory, tiny_bert, credit_sample):
    out = tmp_path_factory.mktemp("regression") / "out"
    return train_finetune(out, **regression_values(tiny_bert, credit_sample, regression_loss="huber"))


def test_regression_run_writes_metrics_intervals_baseline_and_target_scaling(regression_run, credit_sample):
    import pandas as pd

    info = json.loads((regression_run / "hf_adapt.json").read_text())
    task = info["task"]
    assert task["name"] == "regression" and task["loss"] == "huber"
    frame = pd.read_csv(credit_sample)
    assert frame["credit_amount"].min() < task["target"]["mean"] < frame["credit_amount"].max()
    assert 500 < task["target"]["std"] < 10_000  # the train split's spread, in DM
    metrics = json.loads((regression_run / "eval_results.json").read_text())
    assert set(metrics) == {"rmse", "mae", "r2"}
    assert 0 < metrics["mae"] <= metrics["rmse"] < 20_000  # in DM, not in standard deviations
    intervals = json.loads((regression_run / "eval_intervals.json").read_text())["intervals"]
    for name in ("rmse", "mae", "r2"):
        low, high = intervals[name]
        assert low <= metrics[name] <= high and low < high
    baselines = json.loads((regression_run / "train_results.json").read_text())["baseline"]
    assert list(baselines) == ["ridge", "hist_gradient_boosting"]  # a table: linear and gradient boosting
    for metrics in baselines.values():
        assert set(metrics) == {"rmse", "mae", "r2"} and metrics["r2"] > 0.2  # duration explains much of the amount
    history = json.loads((regression_run / "train_results.json").read_text())["history"]
    assert all("rmse" in row and "train_loss" in row for row in history)


def test_regression_card_shows_regression_sections_and_figures(regression_run):
    from huggingface_hub import ModelCard

    card = ModelCard.load(regression_run / "README.md")
    text = card.text
    assert "A regression model predicting `credit_amount`" in text
    assert "| metric | this model | 95 % CI | ridge regression | gradient boosting |" in text
    assert "| rmse |" in text and "| r2 |" in text and "HistGradientBoosting" not in text
    assert "RMSE (root mean squared error)" in text and "ECE is" not in text
    assert "figures/predicted_vs_actual.png" in text and "figures/residuals.png" in text
    assert (regression_run / "figures" / "predicted_vs_actual.png").stat().st_size > 1000
    assert (regression_run / "figures" / "residuals.png").stat().st_size > 1000
    assert "| credit_amount | rows | mean |" in text  # the target's summary instead of class counts
    assert "regression" in card.data.tags
    names = {r.metric_type for r in card.data.eval_results}
    assert {"rmse", "mae", "r_squared"} <= names
    assert "confusion_matrix" not in text


def _test_rows(tiny_bert, credit_sample):
    """The test split the run scored, rebuilt from the same config, as rows and true amounts."""
    from hf_adapt.config import config_from_dict
    from hf_adapt.data import DataSpec, load_labelled
    from hf_adapt.recipes.finetune import FinetuneConfig

    cfg = config_from_dict(FinetuneConfig, regression_values(tiny_bert, credit_sample))
    test = load_labelled(DataSpec.from_config(cfg)).splits["test"]
    return [{c: test[i][c] for c in COLUMNS} for i in range(len(test))], np.asarray(test["label"])


def test_load_adapted_predicts_numbers_in_the_original_unit(regression_run, tiny_bert, credit_sample):
    from hf_adapt.errors import ModelError
    from hf_adapt.predict import Regressor, load_adapted
    from hf_adapt.tasks import regression_metrics

    predictor = load_adapted(str(regression_run))
    assert isinstance(predictor, Regressor) and predictor.target == "credit_amount"
    rows, actual = _test_rows(tiny_bert, credit_sample)
    values = predictor.predict_values(rows)
    assert values.shape == (len(rows),) and np.isfinite(values).all()
    saved = json.loads((regression_run / "eval_results.json").read_text())
    again = regression_metrics(values, actual)  # the reloaded model scores what the run reported
    for name in ("rmse", "mae", "r2"):
        assert again[name] == pytest.approx(saved[name], rel=1e-4, abs=1e-4)
    single = predictor.predict(rows[0])
    assert single == [{"value": pytest.approx(values[0], rel=1e-5)}]
    with pytest.raises(ModelError, match="no class probabilities"):
        predictor.predict_proba(rows[:1])


def test_explain_attributes_the_single_output_per_column(regression_run, tiny_bert, credit_sample, tmp_path):
    from hf_adapt.explain import explain

    rows, _ = _test_rows(tiny_bert, credit_sample)
    row_file = tmp_path / "row.json"
    row_file.write_text(json.dumps(rows[0]))
    _, json_path = explain(str(regression_run), str(row_file), out=tmp_path / "why", steps=16)
    result = json.loads(json_path.read_text())
    assert result["target"] == "credit_amount" and "probabilities" not in result
    assert result["explained_output"].startswith("output(credit_amount)")
    assert {c["column"] for c in result["columns"]} >= set(COLUMNS)
    total = sum(c["attribution"] for c in result["columns"])
    assert total == pytest.approx(result["output_at_input"] - result["output_at_baseline"],
                                  abs=abs(result["convergence_delta"]) + 1e-3)
    value = json.loads(json.dumps(result))["predicted_value"]
    from hf_adapt.predict import load_adapted

    assert value == pytest.approx(load_adapted(str(regression_run)).predict_values([rows[0]])[0], rel=1e-4)


def test_cross_validation_scores_model_and_both_table_baselines_per_fold(tiny_bert, credit_sample, tmp_path):
    out = train_finetune(tmp_path / "cv", **regression_values(tiny_bert, credit_sample, cv_folds=3,
                                                              num_train_epochs=1, card_examples=0))
    cv = json.loads((out / "cv_results.json").read_text())
    assert cv["k"] == 3 and len(cv["folds"]) == 3
    assert set(cv["summary"]) == {"model", "ridge", "hist_gradient_boosting"}
    for name in ("model", "ridge", "hist_gradient_boosting"):
        assert set(cv["summary"][name]) == {"rmse", "mae", "r2"}
        assert cv["summary"][name]["rmse"]["folds"] == 3
    assert cv["summary"]["ridge"]["r2"]["mean"] > 0.2
    card = (out / "README.md").read_text()
    assert "3-fold shuffled cross-validation" in card and "gradient boosting" in card
    assert "held_label_counts" not in cv["folds"][0]


def test_serving_answers_the_number(regression_run, tiny_bert, credit_sample, tmp_path):
    pytest.importorskip("fastapi")
    from hf_adapt.serve.app import Server, create_app
    from hf_adapt.serve.config import ServeConfig
    from hf_adapt.serve.models import load_served
    from tests.serve.helpers import call, running

    served = load_served(str(regression_run), None, False, "cpu")
    rows, _ = _test_rows(tiny_bert, credit_sample)
    expected = served.model.predict_values(rows[:4])
    cfg = ServeConfig(model=str(regression_run), feedback_log=str(tmp_path / "feedback" / "served.jsonl"))
    with running(create_app(Server(cfg, served))) as url:
        status, body, _ = call(f"{url}/v1/predict", {"inputs": rows[:4]})
        why_status, why, _ = call(f"{url}/v1/explain", {"input": rows[0], "steps": 8})
        answer = body["predictions"][0]["prediction_id"]
        bad = call(f"{url}/v1/feedback", {"id": answer, "feedback": "down", "correction": "high"})
        good = call(f"{url}/v1/feedback", {"id": answer, "feedback": "down", "correction": 1234.5})
    assert status == 200
    got = [p["value"] for p in body["predictions"]]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert "probabilities" not in body["predictions"][0]
    assert why_status == 200 and why["target"] == "credit_amount"
    assert bad[0] == 422 and "takes the right number" in bad[1]["detail"]
    assert good[0] == 201, good[1]
    from hf_adapt.feedback.log import read_feedback

    (record,) = read_feedback(str(tmp_path / "feedback" / "served.jsonl")).records
    assert record["correction"] == "1234.5" and float(record["completion"]) == pytest.approx(got[0], rel=1e-6)


def test_export_refuses_a_regression_model(regression_run, tmp_path):
    from hf_adapt.errors import ModelError
    from hf_adapt.export import export

    with pytest.raises(ModelError, match="export writes single-label classifiers; this is a regression model"):
        export(str(regression_run), tmp_path / "exported")
    assert not (tmp_path / "exported").exists()


def test_hybrid_regression_starts_from_ridge_and_reloads(tiny_bert, credit_sample, tmp_path):
    """table_features: the wide path holds ridge regression on the encoded columns; the model's test numbers reload."""
    from hf_adapt.explain import explain
    from hf_adapt.predict import load_adapted
    from hf_adapt.tasks import regression_metrics

    out = train_finetune(tmp_path / "hybrid", **regression_values(tiny_bert, credit_sample, table_features="auto",
                                                                  num_train_epochs=1, card_examples=1))
    info = json.loads((out / "hf_adapt.json").read_text())
    assert sorted(info["data"]["table_features"]) == sorted(COLUMNS)
    metrics = json.loads((out / "eval_results.json").read_text())
    ridge = json.loads((out / "train_results.json").read_text())["baseline"]["ridge"]
    assert metrics["r2"] > ridge["r2"] - 0.15  # starts at the linear model: near it after one epoch, not at chance
    card = (out / "README.md").read_text()
    assert "ridge regression (alpha 1, on the standardised target) fitted on the training rows" in card
    rows, actual = _test_rows(tiny_bert, credit_sample)
    again = regression_metrics(load_adapted(str(out)).predict_values(rows), actual)
    assert again["rmse"] == pytest.approx(metrics["rmse"], rel=1e-4)
    row_file = tmp_path / "row.json"
    row_file.write_text(json.dumps(rows[0]))
    result = json.loads(explain(str(out), str(row_file), out=tmp_path / "why", steps=8)[1].read_text())
    assert result["target"] == "credit_amount" and {c["column"] for c in result["columns"]} >= set(COLUMNS)


@pytest.fixture(scope="module")
def ink_manifest(tmp_path_factory):
    """240 real scikit-learn digits as PNGs in a manifest whose target is each image's total ink (a number)."""
    import pandas as pd
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path_factory.mktemp("ink")
    (root / "images").mkdir()
    rows = []
    for i in range(240):
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(root / "images" / f"{i}.png")
        rows.append({"path": f"images/{i}.png", "ink": float(digits.images[i].sum())})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_image_regression_writes_examples_and_grad_cam_and_reloads(tiny_timm_convnet, ink_manifest, tmp_path):
    from hf_adapt.config import config_from_dict
    from hf_adapt.data import DataSpec, load_labelled
    from hf_adapt.explain import explain
    from hf_adapt.predict import load_adapted
    from hf_adapt.recipes.finetune import FinetuneConfig
    from hf_adapt.tasks import regression_metrics

    values = {"model_name_or_path": str(tiny_timm_convnet), "data": str(ink_manifest), "image_column": "path",
              "label_column": "ink", "task": "regression", "metric_for_best_model": "rmse", "text_template": None,
              "reset_head": True, "image_size": 32, "card_examples": 2, "bootstrap_resamples": 100}
    out = train_finetune(tmp_path / "ink", **values)
    card = (out / "README.md").read_text()
    assert "examples/0.png" in card and "evidence that raises its prediction" in card
    assert (out / "examples" / "0.png").exists()
    data = load_labelled(DataSpec.from_config(config_from_dict(FinetuneConfig, values)))
    predictor = load_adapted(str(out))
    again = regression_metrics(predictor.predict_values(data.inputs("test", "image")),
                               np.asarray(data.splits["test"]["label"]))
    assert again["rmse"] == pytest.approx(json.loads((out / "eval_results.json").read_text())["rmse"], rel=1e-4)
    _, json_path = explain(str(out), str(ink_manifest.parent / "images" / "5.png"), out=tmp_path / "why")
    result = json.loads(json_path.read_text())
    assert result["kind"] == "image" and result["target"] == "ink" and "probabilities" not in result
    assert float(result["predicted_label"]) == pytest.approx(result["predicted_value"], rel=1e-5)


@pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores
def test_a_regression_model_pushes_and_loads_back_from_the_hub(tiny_bert, credit_sample, tmp_path, monkeypatch):
    import re

    from huggingface_hub import ModelCard

    import hf_adapt
    from hf_adapt.hub import PushSettings, push_output
    from tests.hub_server import LocalHub, hub_env, record_backoff, run_card_snippet

    repo = "hf-adapt-tests/credit-amount"
    out = train_finetune(tmp_path / "out", **regression_values(tiny_bert, credit_sample, num_train_epochs=1,
                                                               card_examples=0, base_model_id="hf-adapt-tests/tiny-bert"))
    with LocalHub({"hf-adapt-tests/tiny-bert": tiny_bert}) as hub:
        hub_env(monkeypatch, hub, tmp_path, token="hf_TestTokenThatMustNeverLeak0123456789")
        record_backoff(monkeypatch)
        push_output(out, PushSettings(repo_id=repo, backoff_seconds=0.01))
        rows = _test_rows(tiny_bert, credit_sample)[0][:5]
        pulled = hf_adapt.load_adapted(repo)
        np.testing.assert_allclose(pulled.predict_values(rows), hf_adapt.load_adapted(str(out)).predict_values(rows),
                                   rtol=1e-6)
        card = hub.repo(repo).files("main")["README.md"].decode()
        proc = run_card_snippet(card, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"\[\{'value': -?[0-9.]+", proc.stdout.strip().splitlines()[-1])
    data = ModelCard(card).data
    assert data.base_model == "hf-adapt-tests/tiny-bert" and "regression" in data.tags
    assert {r.metric_type for r in data.eval_results} == {"rmse", "mae", "r_squared"}


def test_regression_transfers_from_a_classifier_and_says_which_head_was_dropped(tiny_bert, credit_sample, tmp_path):
    from hf_adapt.predict import Regressor, load_adapted

    parent = train_finetune(tmp_path / "parent", model_name_or_path=str(tiny_bert), data=str(credit_sample),
                            card_examples=0, bootstrap_resamples=0)
    child = train_finetune(tmp_path / "child", **regression_values(tiny_bert, credit_sample, init_from=str(parent),
                                                                   num_train_epochs=1, card_examples=0))
    card = (child / "README.md").read_text()
    assert ("a regression head (one output: credit_amount, standardised); the parent's 2-label head (bad, good) was "
            "dropped") in card
    predictor = load_adapted(str(child))
    assert isinstance(predictor, Regressor) and json.loads((child / "hf_adapt.json").read_text())["init_from"]
    assert np.isfinite(predictor.predict_values(_test_rows(tiny_bert, credit_sample)[0][:3])).all()


def test_the_card_states_paired_differences_from_each_baseline(regression_run):

    differences = json.loads((regression_run / "train_results.json").read_text())["baseline_differences"]
    metrics = json.loads((regression_run / "eval_results.json").read_text())
    baselines = json.loads((regression_run / "train_results.json").read_text())["baseline"]
    for name in ("ridge", "hist_gradient_boosting"):
        for metric in ("rmse", "mae", "r2"):
            entry = differences[name][metric]
            assert entry["difference"] == pytest.approx(metrics[metric] - baselines[name][metric], abs=1e-6)
            low, high = entry["interval"]
            assert low <= entry["difference"] <= high
    card = (regression_run / "README.md").read_text()
    assert "Paired differences on the same test rows" in card
    assert "- ridge regression: rmse " in card and "- gradient boosting: rmse " in card
