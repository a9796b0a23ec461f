"""Metrics against scikit-learn on hand-checkable inputs."""

from __future__ import annotations

import numpy as np
import pytest

from hf_adapt.metrics import classification_metrics, expected_calibration_error, is_better


def test_binary_metrics_match_definitions():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    m = classification_metrics(np.log(probs), labels)
    assert m["accuracy"] == 0.75
    assert m["auroc"] == 1.0  # every positive scores above every negative
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.65, 0.8])))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_multiclass_auroc_is_one_vs_rest_and_survives_absent_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=200)
    logits = rng.normal(size=(200, 4))
    logits[np.arange(200), labels] += 2.0  # informative, class 3 never occurs
    m = classification_metrics(logits, labels)
    assert 0.8 < m["auroc"] <= 1.0
    assert m["accuracy"] > 0.6


def test_single_class_auroc_is_nan_not_an_error():
    m = classification_metrics(np.zeros((3, 2)), np.array([1, 1, 1]))
    assert np.isnan(m["auroc"]) and m["accuracy"] in (0.0, 1.0)


def test_ece_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 1, 1, 1])) == pytest.approx(0.75)


def test_is_better_knows_direction():
    assert is_better("auroc", 0.8, 0.7) and not is_better("auroc", 0.6, 0.7)
    assert is_better("log_loss", 0.3, 0.5) and is_better("ece", 0.1, None)
    assert not is_better("auroc", float("nan"), None)
