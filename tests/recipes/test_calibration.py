"""calibration: in the finetune recipe: fitted on validation, saved, applied by load_adapted (what users get is what
the card reports), the operating point chosen on calibrated scores, and before/after in the card and figure."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hf_adapt
from hf_adapt.errors import ConfigError
from hf_adapt.metrics import classification_metrics
from tests.conftest import train_finetune


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic"])
def test_calibrated_probabilities_are_what_load_adapted_gives(method, tiny_bert, credit_sample, tmp_path):
    out = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(credit_sample),
                         calibration=method, operating_point="youden", bootstrap_resamples=0)  # youden: always met
    info = json.loads((out / "hf_adapt.json").read_text())
    results = json.loads((out / "calibration_results.json").read_text())
    reported = json.loads((out / "eval_results.json").read_text())
    assert info["calibration"]["method"] == method and info["calibration"]["fitted_on"] == "the validation split"
    assert set(results["test"]) == {"ece", "brier", "log_loss"}
    assert results["test"]["log_loss"]["after"] == pytest.approx(reported["log_loss"])
    # the test rows, rebuilt as the run split them, through load_adapted: the calibrated numbers come back
    from hf_adapt.data import DataSpec, load_labelled

    data = load_labelled(DataSpec(source=str(credit_sample), label_column="creditability",
                                  text_template=hf_adapt.options.QUICKSTART_TEMPLATE))
    predictor = hf_adapt.load_adapted(str(out))
    logits = predictor.logits(data.inputs("test", "text")).numpy()
    again = classification_metrics(logits, np.asarray(data.splits["test"]["label"]))
    assert again["log_loss"] == pytest.approx(reported["log_loss"], abs=1e-4)
    assert again["ece"] == pytest.approx(results["test"]["ece"]["after"], abs=1e-4)
    card = (out / "README.md").read_text()
    assert "### Calibration" in card and f"`{method}`" in card
    assert "| log_loss |" in card.split("### Calibration")[1]
    if method == "temperature":
        assert info["calibration"]["temperature"] > 0


def test_a_binary_calibration_on_three_labels_is_refused_before_training(tiny_bert, credit_sample, tmp_path):
    with pytest.raises(ConfigError, match="platt maps one class's probability and needs a binary task"):
        train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(credit_sample),
                       label_column="housing", text_template=None, calibration="platt")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keep, where", [("best_fold", "held-out fold"), ("refit", "pooled out-of-fold")])
def test_cross_validation_calibrates_on_held_out_folds(keep, where, tiny_bert, credit_sample, tmp_path):
    out = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(credit_sample), cv_folds=3,
                         cv_keep=keep, calibration="temperature", bootstrap_resamples=0, baseline="none")
    info = json.loads((out / "hf_adapt.json").read_text())
    assert where in info["calibration"]["fitted_on"]
