"""The task object (hf_adapt.tasks): config refusals, reading a numeric target, the target scaling, metrics."""

from __future__ import annotations

import numpy as np
import pytest

from hf_adapt.config import config_from_dict
from hf_adapt.errors import ConfigError, DataError, ModelError
from hf_adapt.recipes.finetune import FinetuneConfig
from hf_adapt.tasks import Regression, TargetScaler, get_task, regression_metrics, task_from_info

REGRESSION = {"task": "regression", "metric_for_best_model": "rmse", "label_column": "target", "text_template": None}


@pytest.fixture(scope="module")
def diabetes_csv(tmp_path_factory):
    """scikit-learn's diabetes data (442 patients, 10 measurements, disease progression after a year), unscaled."""
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True, scaled=False).frame
    path = tmp_path_factory.mktemp("diabetes") / "diabetes.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("values, message", [
    ({"operating_point": "youden"}, "operating_point.*does not apply to task: regression"),
    ({"calibration": "temperature"}, "calibration.*does not apply to task: regression"),
    ({"class_weights": "balanced"}, "class_weights.*no classes"),
    ({"balanced_sampler": True}, "balanced_sampler"),
    ({"fairness": {"constraint": "equalized_odds", "sensitive_column": "sex"}}, "fairness.*does not apply"),
    ({"positive_label": "1"}, "positive_label"),
    ({"train_samples_per_class": 5}, "train_samples_per_class"),
    ({"metric_for_best_model": "auroc"}, "auroc is a classification metric.*rmse"),
    ({"baseline": "logistic_regression"}, "logistic_regression is a classifier"),
    ({"sensitive_columns": ["age"]}, "sensitive_columns.*does not apply to task: regression"),
])
def test_regression_refuses_classification_options_before_training(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(FinetuneConfig, {**REGRESSION, **values})


def test_classification_refuses_regression_options():
    with pytest.raises(ConfigError, match="regression_loss: huber applies to task: regression"):
        config_from_dict(FinetuneConfig, {"regression_loss": "huber"})
    with pytest.raises(ConfigError, match="rmse is a regression metric"):
        config_from_dict(FinetuneConfig, {"metric_for_best_model": "rmse"})
    with pytest.raises(ConfigError, match="ridge is a regression baseline"):
        config_from_dict(FinetuneConfig, {"baseline": "ridge"})


def test_continual_and_pretrain_refuse_regression():
    from hf_adapt.recipes.continual import ContinualConfig
    from hf_adapt.recipes.pretrain import PretrainConfig

    with pytest.raises(ConfigError, match="class-incremental learning adds classes"):
        config_from_dict(ContinualConfig, {"task": "regression", "experiences": [{"name": "a", "classes": [0, 1]}]})
    with pytest.raises(ConfigError, match="does not apply to hf-adapt pretrain"):
        config_from_dict(PretrainConfig, {"task": "regression", "data": "x.txt"})


def _load(path, **values):
    from hf_adapt.data import DataSpec, load_labelled

    cfg = config_from_dict(FinetuneConfig, {**REGRESSION, "data": str(path), **values})
    return load_labelled(DataSpec.from_config(cfg))


def test_regression_reads_a_numeric_target_and_splits_at_random(diabetes_csv):
    data = _load(diabetes_csv)
    assert data.labels == ["target"] and data.num_labels == 1 and data.task == "regression"
    train = np.asarray(data.splits["train"]["label"])
    assert train.dtype == np.float64 and len(np.unique(train)) > 50  # the numbers themselves, not class ids
    assert sum(data.origin["splits"].values()) == 442
    assert "random" in data.origin["split_method"] and "stratified" not in data.origin["split_method"]
    summary = data.origin["target_summary"]["train"]
    assert summary["rows"] == len(train) and summary["mean"] == pytest.approx(train.mean())
    assert "label_counts" not in data.origin


@pytest.mark.parametrize("bad, message", [("", "target is missing"), ("high", "'high' is not a number"),
                                          ("inf", "not a finite number")])
def test_a_bad_target_is_refused_naming_file_row_and_column(diabetes_csv, tmp_path, bad, message):
    import pandas as pd

    frame = pd.read_csv(diabetes_csv)
    frame["target"] = frame["target"].astype(object)
    frame.loc[7, "target"] = bad
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=rf"bad.csv \(split 'train'\) row 7, column 'target': .*{message}"):
        _load(path)


def test_grouped_folds_for_a_numeric_target_keep_groups_whole():
    from hf_adapt.data import group_folds

    labels = np.linspace(0, 1, 40)
    groups = np.repeat(np.arange(10), 4)
    folds = group_folds(labels, groups, 5, seed=0)
    assert len(folds) == 5
    for train, held in folds:
        assert not set(groups[train]) & set(groups[held])
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(40))


def test_target_scaling_round_trips_and_is_checked_when_loaded():
    task = Regression("huber").fit_scaler([10.0, 20.0, 30.0], "price")
    encoded = task.encode([10.0, 20.0, 30.0])
    assert np.allclose(encoded, [-1.2247449, 0, 1.2247449], atol=1e-6)
    assert np.allclose(task.decode(np.asarray(encoded)[:, None]), [10, 20, 30], atol=1e-4)
    loaded = task_from_info({"task": task.info()}, ["price"])
    assert loaded.scaler == task.scaler and loaded.loss_name == "huber"
    with pytest.raises(ModelError, match="task.target must be"):
        TargetScaler.from_dict({"column": "price", "mean": 1.0, "std": 0.0})
    assert task_from_info({}, ["a", "b"]).name == "classification"  # outputs written before tasks existed


def test_regression_metrics_match_scikit_learn_in_the_original_unit():
    from sklearn.metrics import mean_absolute_error, r2_score

    rng = np.random.default_rng(0)
    actual = rng.normal(100, 15, 200)
    predicted = actual + rng.normal(0, 5, 200)
    metrics = regression_metrics(predicted, actual)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - actual) ** 2)))
    assert metrics["mae"] == pytest.approx(mean_absolute_error(actual, predicted))
    assert metrics["r2"] == pytest.approx(r2_score(actual, predicted))
    task = Regression().fit_scaler(actual, "y")  # standardised outputs and labels score in the original unit
    scaled = task.metrics(task.encode(predicted), np.asarray(task.encode(actual)))
    assert scaled["rmse"] == pytest.approx(metrics["rmse"], rel=1e-5)


def test_regression_loss_is_mse_or_huber_on_the_single_output():
    import torch

    outputs = torch.tensor([[0.0], [3.0]])
    batch = {"inputs": None, "labels": torch.tensor([0.0, 0.0])}
    mse = get_task("regression", "mse").loss(lambda model, inputs: outputs)(None, batch)["loss"]
    huber = get_task("regression", "huber").loss(lambda model, inputs: outputs)(None, batch)["loss"]
    assert mse.item() == pytest.approx(4.5) and huber.item() == pytest.approx((0 + 2.5) / 2)


def test_class_folders_are_refused_as_a_regression_target(digits_folder):
    with pytest.raises(DataError, match="holds classes .*not numbers; task: regression needs a numeric target"):
        _load(digits_folder, label_column="label", text_template=None)


def test_a_regression_hybrid_wide_path_is_ridge_on_the_standardised_target():
    from sklearn.linear_model import Ridge

    rng = np.random.default_rng(0)
    features = rng.normal(size=(80, 5))
    target = features @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + rng.normal(0, 0.1, 80)
    weight, bias = Regression().fit_wide(features, target.tolist(), seed=0)
    assert weight.shape == (1, 5) and bias.shape == (1,)
    expected = Ridge(alpha=1.0).fit(features, target).predict(features)
    np.testing.assert_allclose(features @ weight.T[:, 0] + bias[0], expected, rtol=1e-6)


def test_tune_searches_a_regression_run_on_its_own_metrics():
    from hf_adapt.recipes.finetune import tune_objectives

    objectives = tune_objectives(config_from_dict(FinetuneConfig, {**REGRESSION, "metric_for_best_model": "mae"}))
    assert objectives == {"mae": "minimize", "rmse": "minimize", "r2": "maximize"}
    assert next(iter(tune_objectives(config_from_dict(FinetuneConfig, {})))) == "auroc"
