"""Imbalance, operating points, bootstrap intervals and cross-validation through the finetune recipe
(tiny BERT on 200 real German Credit rows: wiring, not quality)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.errors import ConfigError, DataError
from hf_adapt.loop import ExampleDataset, balanced_class_weights, make_loader
from hf_adapt.recipes.finetune import FinetuneConfig, main


def _config(tiny_bert, credit_sample, tmp_path, **overrides) -> FinetuneConfig:
    values = dict(
        model_name_or_path=str(tiny_bert), base_model_id="hf-adapt-tests/tiny-bert", data=str(credit_sample),
        output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=16,
        learning_rate=5e-3, max_length=128, report_to="none", torch_num_threads=1, bootstrap_resamples=200,
    )
    values.update(overrides)
    return config_from_dict(FinetuneConfig, values)


@pytest.fixture(scope="module")
def sensitivity_run(tiny_bert, credit_sample, tmp_path_factory):
    cfg = _config(tiny_bert, credit_sample, tmp_path_factory.mktemp("op"), positive_label="bad",
                  operating_point="sensitivity", operating_target=0.8, class_weights="balanced")
    return cfg, main(cfg)


def test_threshold_meets_the_target_on_validation_and_is_reported_on_test(sensitivity_run):
    cfg, result = sensitivity_run
    out = result.output_dir
    info = json.loads((out / "hf_adapt.json").read_text())
    point = info["operating_point"]
    assert point["positive_label"] == "bad" and point["rule"] == "sensitivity" and point["target"] == 0.8
    assert point["validation"]["sensitivity"] >= 0.8
    assert 0 < point["threshold"] < 1
    metrics = json.loads((out / "eval_results.json").read_text())
    for name in ("sensitivity", "specificity", "ppv", "npv", "gini", "ks", "brier"):
        assert name in metrics
    assert metrics["gini"] == pytest.approx(2 * metrics["auroc"] - 1)
    # the reported sensitivity is that of the saved threshold on the test rows
    predictor = hf_adapt.load_adapted(str(out))
    test = result.data.splits["test"]
    rows = [{c: test[i][c] for c in result.data.feature_columns} for i in range(len(test))]
    probs = predictor.predict_proba(rows)[:, predictor.labels.index("bad")]
    is_bad = np.asarray(test["label"]) == result.data.labels.index("bad")
    assert metrics["sensitivity"] == pytest.approx(float((probs[is_bad] >= point["threshold"]).mean()))


def test_load_adapted_applies_the_threshold_not_argmax(sensitivity_run):
    _, result = sensitivity_run
    predictor = hf_adapt.load_adapted(str(result.output_dir))
    threshold = predictor.operating_point["threshold"]
    test = result.data.splits["test"]
    rows = [{c: test[i][c] for c in result.data.feature_columns} for i in range(len(test))]
    predictions = predictor.predict(rows)
    for prediction in predictions:
        expected = "bad" if prediction["probabilities"]["bad"] >= threshold else "good"
        assert prediction["label"] == expected
    argmax = [max(p["probabilities"], key=p["probabilities"].get) for p in predictions]
    assert argmax != [p["label"] for p in predictions], "threshold at 0.5 by chance: the test shows nothing"


def test_intervals_cover_every_headline_metric(sensitivity_run):
    _, result = sensitivity_run
    out = result.output_dir
    intervals = json.loads((out / "eval_intervals.json").read_text())
    metrics = json.loads((out / "eval_results.json").read_text())
    assert intervals["resamples"] == 200 and intervals["confidence"] == 0.95
    assert set(intervals["intervals"]) == set(metrics)
    for name in ("auroc", "gini", "ks", "brier", "sensitivity", "specificity"):
        low, high = intervals["intervals"][name]
        assert low <= metrics[name] <= high, name
        # a rate at 0 or 1 (the tiny model's threshold may call every test row positive) is 0 or 1 in every resample
        assert low < high or (name in ("sensitivity", "specificity") and low == high in (0.0, 1.0)), name


def test_card_shows_the_operating_point_intervals_and_score_distribution(sensitivity_run):
    _, result = sensitivity_run
    out = result.output_dir
    card = ModelCard.load(out / "README.md")
    assert "### Operating point" in card.text and "95 % CI" in card.text
    assert "figures/score_distribution.png" in card.text and (out / "figures/score_distribution.png").is_file()
    assert "Class imbalance: class-weighted cross-entropy" in card.text
    assert "figures/explain_0.png" in card.text and (out / "figures/explain_0.json").is_file()
    explained = json.loads((out / "figures/explain_0.json").read_text())
    assert {c["column"] for c in explained["columns"]} - {"(template text)"} <= set(result.data.feature_columns)
    assert {r.metric_type for r in card.data.eval_results} >= {"roc_auc", "gini", "brier_score", "recall"}


@pytest.mark.parametrize("keep", ["refit", "best_fold"])
def test_cross_validation_reports_folds_and_keeps_a_model(keep, tiny_bert, credit_sample, tmp_path):
    cfg = _config(tiny_bert, credit_sample, tmp_path, cv_folds=3, cv_keep=keep, num_train_epochs=2,
                  bootstrap_resamples=0, operating_point="youden", early_stopping_patience=1)
    result = main(cfg)
    cv = json.loads((result.output_dir / "cv_results.json").read_text())
    pooled = result.data.origin["splits"]["train"] + result.data.origin["splits"]["validation"]
    assert cv["k"] == 3 and len(cv["folds"]) == 3
    assert sum(f["held_rows"] for f in cv["folds"]) == pooled
    assert sorted(set(cv["fold_of_row"])) == [1, 2, 3] and len(cv["fold_of_row"]) == pooled
    assert set(cv["summary"]) == {"model", "logistic_regression", "hist_gradient_boosting"}
    aurocs = [f["metrics"]["auroc"] for f in cv["folds"]]
    assert cv["summary"]["model"]["auroc"]["mean"] == pytest.approx(np.mean(aurocs))
    assert cv["summary"]["model"]["auroc"]["std"] == pytest.approx(np.std(aurocs, ddof=1))
    pooled_labels = np.asarray(list(result.data.splits["train"]["label"]) + list(result.data.splits["validation"]["label"]))
    fold_of_row = np.asarray(cv["fold_of_row"])
    for fold in cv["folds"]:
        held = pooled_labels[fold_of_row == fold["fold"]]
        assert len(held) == fold["held_rows"] == len(pooled_labels) - fold["train_rows"]  # a partition
        counts = {name: int((held == i).sum()) for i, name in enumerate(result.data.labels)}
        assert fold["held_label_counts"] == counts and min(counts.values()) > 0  # stratified
        assert fold["epochs"] == 2  # nothing selected on the held-out fold: no early stop, no best epoch
    point = json.loads((result.output_dir / "hf_adapt.json").read_text())["operating_point"]
    card = ModelCard.load(result.output_dir / "README.md").text
    assert "### Cross-validation" in card and "gradient boosting" in card
    if keep == "refit":
        assert cv["refit_epochs"] == 2 and cv["chosen_fold"] is None
        assert "pooled out-of-fold" in point["selected_on"]
    else:
        best = max(range(3), key=lambda i: aurocs[i]) + 1
        assert cv["chosen_fold"] == best
        assert point["selected_on"] == f"held-out fold {best}"


def test_balanced_class_weights_match_scikit_learn():
    from sklearn.utils.class_weight import compute_class_weight

    labels = [0] * 90 + [1] * 10
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=np.array(labels))
    assert balanced_class_weights(labels, 2).tolist() == pytest.approx(expected.tolist())
    assert balanced_class_weights([0, 0, 2], 3)[1] == 0  # an absent class adds no loss


def test_balanced_sampler_draws_classes_equally_and_is_seeded():
    labels = [0] * 95 + [1] * 5
    dataset = ExampleDataset(list(range(100)), labels)

    def drawn(seed):
        loader = make_loader(dataset, lambda xs, train: torch.tensor(xs), 50, train=True, seed=seed, balanced=True)
        return torch.cat([batch["labels"] for _ in range(10) for batch in loader])

    first = drawn(0)
    assert len(first) == 1000 and 0.4 < first.float().mean() < 0.6  # 5 % positives drawn about half the time
    assert torch.equal(first, drawn(0)) and not torch.equal(first, drawn(1))


def test_evaluation_settings_are_checked_before_training(tiny_bert, credit_sample, tmp_path):
    with pytest.raises(ConfigError, match="operating_point: sensitivity needs operating_target"):
        _config(tiny_bert, credit_sample, tmp_path, operating_point="sensitivity")
    with pytest.raises(ConfigError, match="not both"):
        _config(tiny_bert, credit_sample, tmp_path, class_weights="balanced", balanced_sampler=True)
    with pytest.raises(ConfigError, match="cv_folds must be >= 2"):
        _config(tiny_bert, credit_sample, tmp_path, cv_folds=1)


def test_single_class_validation_split_is_refused_before_training(tiny_bert, credit_sample, tmp_path):
    import pandas as pd

    frame = pd.read_csv(credit_sample)
    good = frame[frame.creditability == "good"]
    files = {"train": tmp_path / "train.csv", "validation": tmp_path / "validation.csv", "test": tmp_path / "test.csv"}
    frame.iloc[:120].to_csv(files["train"], index=False)
    good.iloc[:20].to_csv(files["validation"], index=False)
    frame.iloc[120:].to_csv(files["test"], index=False)
    cfg = _config(tiny_bert, credit_sample, tmp_path, data_files={k: str(v) for k, v in files.items()},
                  output_dir=str(tmp_path / "out"))
    with pytest.raises(DataError, match="validation split .* holds only class 'good': AUROC"):
        main(cfg)
    assert not (tmp_path / "out").exists()


def test_operating_point_needs_a_binary_task(tiny_timm_convnet, digits_folder, tmp_path):
    cfg = config_from_dict(FinetuneConfig, dict(
        model_name_or_path=str(tiny_timm_convnet), data=str(digits_folder), label_column="label", report_to="none",
        output_dir=str(tmp_path / "o"), operating_point="youden"))
    with pytest.raises((ConfigError, DataError), match="operating_point needs a binary task"):
        main(cfg)
