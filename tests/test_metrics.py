"""Metrics against scikit-learn and hand computation on small inputs; bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pytest

from hf_adapt.metrics import (
    LOWER_IS_BETTER,
    binary_score_metrics,
    bootstrap_intervals,
    classification_metrics,
    expected_calibration_error,
    is_better,
    softmax,
)

BINARY_KEYS = {"accuracy", "macro_f1", "auroc", "log_loss", "ece", "brier", "gini", "ks"}


def test_binary_metrics_match_definitions():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    m = classification_metrics(np.log(probs), labels)
    assert set(m) == BINARY_KEYS
    assert m["accuracy"] == 0.75
    assert m["auroc"] == 1.0  # every positive scores above every negative
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.65, 0.8])))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


def test_gini_ks_brier_by_hand():
    # ranked by score: P P N N P N; (TPR, FPR) after each: (1/3, 0) (2/3, 0) (2/3, 1/3) (2/3, 2/3) (1, 2/3) (1, 1)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.1])
    labels = np.array([1, 1, 0, 0, 1, 0])
    m = classification_metrics(np.log(np.stack([1 - scores, scores], axis=1)), labels)
    assert m["auroc"] == pytest.approx(7 / 9)  # 3 + 3 + 1 of 9 positive-negative pairs ordered right
    assert m["gini"] == pytest.approx(5 / 9)
    assert m["ks"] == pytest.approx(2 / 3)  # at threshold 0.8, not where Gini would put it
    assert m["brier"] == pytest.approx((0.1**2 + 0.2**2 + 0.7**2 + 0.6**2 + 0.5**2 + 0.1**2) / 6)
    assert binary_score_metrics(scores, labels) == pytest.approx({k: m[k] for k in ("auroc", "gini", "ks", "brier")})
    tie = binary_score_metrics(np.array([0.5, 0.5]), np.array([0, 1]))  # a tie counts half, and separates nothing
    assert tie["auroc"] == 0.5 and tie["gini"] == 0.0 and tie["ks"] == 0.0 and tie["brier"] == 0.25


def test_multiclass_brier_sums_over_classes_and_has_no_gini_or_ks():
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3]])
    m = classification_metrics(np.log(probs), np.array([0, 2]))
    assert set(m) == {"accuracy", "macro_f1", "auroc", "log_loss", "ece", "brier"}
    assert m["brier"] == pytest.approx(((0.09 + 0.04 + 0.01) + (0.04 + 0.25 + 0.49)) / 2)
    assert "brier" in LOWER_IS_BETTER and is_better("brier", 0.1, 0.2)


def test_agrees_with_scikit_learn_on_random_inputs_with_ties_and_absent_classes():
    from sklearn.metrics import accuracy_score, brier_score_loss, f1_score, log_loss, roc_auc_score, roc_curve

    rng = np.random.default_rng(0)
    for trial in range(30):
        k, n = (2, 3, 5)[trial % 3], int(rng.integers(6, 60))
        labels = rng.integers(0, k - (trial % 4 == 0 and k > 2), size=n)  # sometimes the last class never occurs
        logits = np.round(rng.normal(size=(n, k)) * (0.5, 3.0, 40.0)[trial % 3], 1)  # ties, and saturated softmax
        m = classification_metrics(logits, labels)
        probs, present = softmax(logits), np.unique(labels)
        predictions = probs.argmax(axis=1)
        expected = {
            "accuracy": accuracy_score(labels, predictions),
            "macro_f1": f1_score(labels, predictions, average="macro", labels=np.union1d(labels, predictions),
                                 zero_division=0),
            "log_loss": log_loss(labels, probs, labels=list(range(k))),
            "brier": brier_score_loss(labels, probs[:, 1] if k == 2 else probs, labels=list(range(k))),
        }
        if k == 2 and len(present) == 2:
            fpr, tpr, _ = roc_curve(labels, probs[:, 1])
            expected |= {"auroc": roc_auc_score(labels, probs[:, 1]), "ks": np.max(tpr - fpr)}
        elif len(present) > 2:
            expected["auroc"] = roc_auc_score(labels, softmax(logits[:, present]), multi_class="ovr", labels=present)
        for key, value in expected.items():
            assert m[key] == pytest.approx(value, abs=1e-12), (trial, key)


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
    assert np.isnan(m["gini"]) and np.isnan(m["ks"]) and m["brier"] == 0.25


def test_bad_labels_and_logits_fail_with_the_reason():
    with pytest.raises(ValueError, match=r"outside 0..1"):
        classification_metrics(np.zeros((2, 2)), np.array([0, 2]))
    with pytest.raises(ValueError, match="non-finite"):
        classification_metrics(np.array([[0.0, np.nan]]), np.array([0]))


def test_ece_zero_when_confidence_matches_accuracy():
    probs = np.array([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert expected_calibration_error(probs, np.array([1, 1, 1, 1])) == pytest.approx(0.75)


def test_is_better_knows_direction():
    assert is_better("auroc", 0.8, 0.7) and not is_better("auroc", 0.6, 0.7)
    assert is_better("log_loss", 0.3, 0.5) and is_better("ece", 0.1, None)
    assert not is_better("auroc", float("nan"), None)


def _binary_task(n, seed):
    rng = np.random.default_rng(seed)
    labels = (rng.uniform(size=n) < 0.3).astype(int)
    logits = np.stack([np.zeros(n), rng.normal(size=n) + 1.5 * labels - 0.5], axis=1)
    return logits, labels


def test_bootstrap_intervals_contain_the_estimate_and_narrow_with_more_rows():
    small, large = _binary_task(100, seed=1), _binary_task(1000, seed=2)
    point = classification_metrics(*small)
    narrow = bootstrap_intervals(classification_metrics, *large, n_resamples=200)
    wide = bootstrap_intervals(classification_metrics, *small, n_resamples=200)
    assert set(wide) == set(point) == BINARY_KEYS
    for key in ("auroc", "gini", "ks", "brier", "accuracy", "log_loss"):
        low, high = wide[key]
        assert low < point[key] < high, key
        assert narrow[key][1] - narrow[key][0] < 0.6 * (high - low), key  # ~ 1 / sqrt(10) as wide
    assert wide["gini"] == pytest.approx(tuple(2 * v - 1 for v in wide["auroc"]))  # the same resamples for all


def test_cluster_bootstrap_resamples_whole_patients():
    logits, labels = _binary_task(100, seed=4)
    copies = 5  # five images of each of 100 patients, all alike: only 100 independent observations
    repeated = (np.repeat(logits, copies, axis=0), np.repeat(labels, copies))
    patients = np.repeat(np.arange(100), copies)

    def width(intervals):
        return intervals["auroc"][1] - intervals["auroc"][0]

    by_row = width(bootstrap_intervals(classification_metrics, *repeated, n_resamples=300))
    by_patient = width(bootstrap_intervals(classification_metrics, *repeated, n_resamples=300, groups=patients))
    independent = width(bootstrap_intervals(classification_metrics, logits, labels, n_resamples=300))
    assert by_row < 0.6 * by_patient  # rows would claim sqrt(5) x the precision there is
    assert by_patient == pytest.approx(independent, rel=0.25)


def test_bootstrap_is_seeded():
    data = _binary_task(80, seed=3)
    first = bootstrap_intervals(classification_metrics, *data, n_resamples=100, seed=7)
    assert bootstrap_intervals(classification_metrics, *data, n_resamples=100, seed=7) == first
    assert bootstrap_intervals(classification_metrics, *data, n_resamples=100, seed=8) != first


def test_bootstrap_leaves_out_undefined_resamples():
    rows = np.arange(10)

    def fn(x):
        return {"mean": x.mean(),
                "one_if_row_0": 1.0 if (x == 0).any() else float("nan"),  # finite in ~65 % of resamples
                "rare": 1.0 if (x == 0).sum() >= 2 else float("nan")}  # finite in ~26 %

    intervals = bootstrap_intervals(fn, rows, n_resamples=400)
    assert intervals["one_if_row_0"] == (1.0, 1.0)  # the NaN resamples are left out, not propagated
    assert np.isnan(intervals["rare"]).all()  # fewer than half the resamples define it
    assert 2.0 < intervals["mean"][0] < 4.5 < intervals["mean"][1] < 7.0

    # one positive in 20 rows: about a third of resamples hold no positive, so no AUROC; the interval survives
    logits, labels = np.zeros((20, 2)), np.zeros(20, dtype=int)
    labels[0], logits[0, 1] = 1, 3.0
    auroc = bootstrap_intervals(classification_metrics, logits, labels, n_resamples=200)["auroc"]
    assert auroc == (1.0, 1.0)


def test_bootstrap_rejects_misaligned_arrays():
    with pytest.raises(ValueError, match="equal length"):
        bootstrap_intervals(classification_metrics, np.zeros((3, 2)), np.zeros(4, dtype=int))
