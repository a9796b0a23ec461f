"""Calibration fitted on held-out logits: it lowers log loss and ECE on fresh draws from the same miscalibrated
model, keeps what it must keep (temperature: the ranking of classes; all: the order of scores), survives saving,
and refuses what it cannot fit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_adapt.calibration import Calibration, fit_calibration
from hf_adapt.errors import ConfigError, DataError
from hf_adapt.metrics import expected_calibration_error, softmax


def _draw(n: int, seed: int, classes: int = 2, overconfidence: float = 3.0):
    """Labels drawn from true probabilities; logits that claim them ``overconfidence`` times too sharply."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(0, 1.2, size=(n, classes))
    probs = softmax(true_logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return true_logits * overconfidence + 0.3, labels


def _log_loss(logits, labels) -> float:
    probs = softmax(np.asarray(logits, dtype=np.float64))
    return float(-np.log(probs[np.arange(len(labels)), labels]).mean())


@pytest.mark.parametrize("method, classes", [("temperature", 2), ("temperature", 4), ("platt", 2), ("isotonic", 2)])
def test_calibration_improves_fresh_draws(method, classes):
    held_logits, held_labels = _draw(2000, 0, classes)
    test_logits, test_labels = _draw(2000, 1, classes)
    calibration = fit_calibration(method, held_logits, held_labels)
    after = calibration.apply(test_logits)
    assert _log_loss(after, test_labels) < _log_loss(test_logits, test_labels) - 0.05
    assert (expected_calibration_error(softmax(after), test_labels)
            < expected_calibration_error(softmax(test_logits), test_labels) / 2)
    if method == "temperature":
        assert calibration.params["temperature"] > 2  # the logits were 3x too sharp
        assert (after.argmax(1) == test_logits.argmax(1)).all()
    else:  # the order of the positive scores is kept (ties allowed for isotonic's steps)
        order = np.argsort(test_logits[:, 1] - test_logits[:, 0])
        assert (np.diff(softmax(after)[order, 1]) >= -1e-12).all()
    again = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    np.testing.assert_array_equal(again.apply(test_logits), after)


def test_isotonic_probabilities_stay_inside_zero_and_one():
    logits, labels = _draw(500, 2)
    probs = softmax(fit_calibration("isotonic", logits, labels).apply(logits * 100))
    assert probs.min() > 0 and probs.max() < 1 and np.isfinite(np.log(probs)).all()


def test_what_cannot_be_fitted_is_refused():
    logits, labels = _draw(100, 3, classes=3)
    with pytest.raises(ConfigError, match="platt maps one class's probability and needs a binary task"):
        fit_calibration("platt", logits, labels)
    with pytest.raises(ConfigError, match="not one of none, temperature, platt, isotonic"):
        fit_calibration("beta", logits, labels)
    with pytest.raises(DataError, match="more than one class"):
        fit_calibration("temperature", logits, np.zeros(100, dtype=int))
    assert fit_calibration("none", logits, labels) is None
