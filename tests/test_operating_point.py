"""Decision thresholds: each rule on a hand-checkable case, the errors people will meet, and intervals."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from hf_adapt.errors import DataError, OperatingPointError
from hf_adapt.operating_point import OperatingPoint, select_threshold, threshold_intervals, threshold_metrics

# ranked by score: P P P N P N N P N N; (TP, FP) at each threshold, highest first:
# 0.95 (1, 0)  0.9 (2, 0)  0.8 (3, 0)  0.7 (3, 1)  0.6 (4, 1)  0.5 (4, 2)  0.4 (4, 3)  0.3 (5, 3)  0.2 (5, 4)  0.1 (5, 5)
SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95])
LABELS = np.array([0, 0, 1, 0, 0, 1, 0, 1, 1, 1])


def test_threshold_metrics_by_hand():
    m = threshold_metrics(SCORES, LABELS, 0.6)  # calls 0.6 and above positive: TP 4, FP 1, FN 1, TN 4
    assert m == pytest.approx({"sensitivity": 0.8, "specificity": 0.8, "ppv": 0.8, "npv": 0.8, "positive_rate": 0.5})
    none_positive = threshold_metrics(SCORES, LABELS, 0.99)
    assert none_positive["sensitivity"] == 0.0 and none_positive["specificity"] == 1.0
    assert np.isnan(none_positive["ppv"]) and none_positive["npv"] == 0.5  # nothing called positive: PPV undefined
    assert np.isnan(threshold_metrics(SCORES, np.zeros(10), 0.5)["sensitivity"])  # no positives at all


@pytest.mark.parametrize(("rule", "target", "threshold", "sensitivity", "specificity"), [
    ("sensitivity", 0.8, 0.6, 0.8, 0.8),    # the highest threshold with 4 of 5 positives
    ("sensitivity", 0.7, 0.6, 0.8, 0.8),    # 3.5 positives round up to 4
    ("sensitivity", 1.0, 0.3, 1.0, 0.4),
    ("specificity", 0.8, 0.6, 0.8, 0.8),    # the lowest threshold with at most 1 false positive
    ("specificity", 1.0, 0.8, 0.6, 1.0),
    ("youden", None, 0.8, 0.6, 1.0),        # J = 0.6 at 0.8 and at 0.6: the higher threshold wins the tie
])
def test_each_rule_on_a_hand_made_case(rule, target, threshold, sensitivity, specificity):
    point = select_threshold(SCORES, LABELS.astype(bool), rule, target)  # boolean labels, as the recipe passes
    assert isinstance(point, OperatingPoint) and (point.rule, point.target) == (rule, target)
    assert point.threshold == threshold
    assert point.metrics["sensitivity"] == pytest.approx(sensitivity)
    assert point.metrics["specificity"] == pytest.approx(specificity)
    assert point.metrics == threshold_metrics(SCORES, LABELS, threshold)


def test_sensitivity_target_is_met_with_the_best_specificity_on_a_rare_positive_class(caplog):
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=600) < 0.05).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(size=600) + 2.0 * labels - 2.0)))
    with caplog.at_level(logging.WARNING, logger="hf_adapt.operating_point"):
        point = select_threshold(scores, labels, "sensitivity", 0.95)
    assert labels.sum() >= 20 and not caplog.records
    assert point.metrics["sensitivity"] >= 0.95
    higher = np.unique(scores[scores > point.threshold])[0]  # the next candidate up misses the target
    assert threshold_metrics(scores, labels, higher)["sensitivity"] < 0.95


def test_one_class_validation_fails_with_the_reason():
    with pytest.raises(OperatingPointError, match=r"validation split has only 'negative' rows \(10\): "
                                                  r"sensitivity/specificity/AUROC are undefined"):
        select_threshold(SCORES, np.zeros(10), "youden")
    with pytest.raises(DataError, match="only 'positive' rows"):  # a DataError like other bad-data errors
        select_threshold(SCORES, np.ones(10), "sensitivity", 0.9)


@pytest.mark.parametrize(("rule", "target", "message"), [
    ("sensitivity", 0.0, r"'sensitivity' needs a target sensitivity in \(0, 1\]; got 0.0"),
    ("specificity", 1.5, r"'specificity' needs a target specificity in \(0, 1\]; got 1.5"),
    ("sensitivity", None, "needs a target sensitivity"),
    ("youden", 0.9, "'youden' takes no target"),
    ("f1", None, "unknown operating point rule 'f1'"),
])
def test_rule_and_target_are_checked(rule, target, message):
    with pytest.raises(OperatingPointError, match=message):
        select_threshold(SCORES, LABELS, rule, target)


def test_target_met_only_by_a_degenerate_threshold():
    scores = np.array([0.1, 0.3, 0.6, 0.9])
    # the lowest score is a positive: every positive found only when every case is called positive
    with pytest.raises(OperatingPointError, match=r"target sensitivity 0.99 is met on validation only by calling every "
                                                  r"case positive \(specificity 0.00 at threshold 0.1\); lower the "
                                                  r"target or add validation positives \(there are 2\)"):
        select_threshold(scores, np.array([1, 0, 0, 1]), "sensitivity", 0.99)
    # the highest score is a negative: no false positive only when every case is called negative
    with pytest.raises(OperatingPointError, match=r"target specificity 1 is met on validation only by calling every "
                                                  r"case negative \(sensitivity 0.00 at threshold above every score\); "
                                                  r"lower the target or add validation negatives \(there are 2\)"):
        select_threshold(scores, np.array([1, 0, 1, 0]), "specificity", 1.0)
    # the two highest are negatives: specificity 0.5 is reached only by calling every positive negative
    with pytest.raises(OperatingPointError, match="only by calling every positive case negative"):
        select_threshold(np.array([0.1, 0.2, 0.3, 0.8, 0.9]), np.array([0, 1, 0, 0, 0]), "specificity", 0.5)


def test_few_validation_positives_warn_with_the_count(caplog):
    with caplog.at_level(logging.WARNING, logger="hf_adapt.operating_point"):
        select_threshold(SCORES, LABELS, "sensitivity", 0.8)
    messages = [r.getMessage() for r in caplog.records]
    assert any("only 5 positives" in m and "noisy" in m for m in messages), messages


def test_threshold_intervals_at_a_fixed_threshold():
    rng = np.random.default_rng(1)
    labels = (rng.uniform(size=300) < 0.3).astype(int)
    scores = 1 / (1 + np.exp(-(rng.normal(size=300) + 2.0 * labels - 1.0)))
    point = threshold_metrics(scores, labels, 0.5)
    intervals = threshold_intervals(scores, labels, 0.5, n_resamples=300, seed=3)
    assert set(intervals) == set(point)
    for key, (low, high) in intervals.items():
        assert 0.0 <= low < point[key] < high <= 1.0, key
    assert threshold_intervals(scores, labels, 0.5, n_resamples=300, seed=3) == intervals
