"""Multi-label metrics, thresholds and label parsing, checked against scikit-learn's definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as sk

from hf_adapt.errors import DataError
from hf_adapt.multilabel import (
    average_precision,
    choose_thresholds,
    label_set,
    multilabel_metrics,
    per_label_metrics,
    positive_weights,
    sigmoid,
)


def _data(seed=0, rows=300, labels=5):
    rng = np.random.default_rng(seed)
    targets = (rng.random((rows, labels)) < np.linspace(0.05, 0.5, labels)).astype(int)
    logits = 2.0 * (targets - 0.5) + rng.normal(0, 1.5, (rows, labels))
    logits[:, 0] = np.round(logits[:, 0], 1)  # ties
    return logits, targets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_are_scikit_learns(seed):
    logits, targets = _data(seed)
    probs = sigmoid(logits)
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    predicted = (probs >= thresholds).astype(int)
    found = multilabel_metrics(logits, targets, thresholds)
    assert found["micro_f1"] == pytest.approx(sk.f1_score(targets, predicted, average="micro"))
    assert found["macro_f1"] == pytest.approx(sk.f1_score(targets, predicted, average="macro"))
    assert found["map"] == pytest.approx(sk.average_precision_score(targets, probs, average="macro"))
    assert found["auroc"] == pytest.approx(sk.roc_auc_score(targets, probs, average="macro"))
    assert found["subset_accuracy"] == pytest.approx(sk.accuracy_score(targets, predicted))
    assert found["hamming_loss"] == pytest.approx(sk.hamming_loss(targets, predicted))
    rows = per_label_metrics(logits, targets, thresholds, list("abcde"))
    for j, row in enumerate(rows):
        assert row["support"] == targets[:, j].sum()
        assert row["average_precision"] == pytest.approx(sk.average_precision_score(targets[:, j], probs[:, j]))
        assert row["f1"] == pytest.approx(sk.f1_score(targets[:, j], predicted[:, j]))
        assert row["recall"] == pytest.approx(sk.recall_score(targets[:, j], predicted[:, j]))


def test_targets_not_annotated_are_left_out_of_every_metric():
    """Continual learning: rows 0-149 annotate labels 0-1, rows 150-299 labels 2-4 (-1 elsewhere). Each label is
    scored on its own rows, and the pooled metrics count the annotated (row, label) pairs alone, as scikit-learn
    does on those pairs."""
    logits, targets = _data(3)
    thresholds = np.array([0.3, 0.4, 0.5, 0.6, 0.7])
    masked = targets.copy()
    masked[:150, 2:] = -1
    masked[150:, :2] = -1
    found = multilabel_metrics(logits, masked, thresholds)
    probs, known = sigmoid(logits), masked >= 0
    predicted = (probs >= thresholds).astype(int)
    blocks = [(slice(0, 150), slice(0, 2)), (slice(150, 300), slice(2, 5))]
    pairs_true = np.concatenate([targets[r, c].ravel() for r, c in blocks])
    pairs_pred = np.concatenate([predicted[r, c].ravel() for r, c in blocks])
    assert found["micro_f1"] == pytest.approx(sk.f1_score(pairs_true, pairs_pred))
    assert found["hamming_loss"] == pytest.approx(np.mean(pairs_true != pairs_pred))
    per_label = [(targets[known[:, j], j], probs[known[:, j], j], predicted[known[:, j], j]) for j in range(5)]
    assert found["map"] == pytest.approx(np.mean([sk.average_precision_score(t, p) for t, p, _ in per_label]))
    assert found["auroc"] == pytest.approx(np.mean([sk.roc_auc_score(t, p) for t, p, _ in per_label]))
    assert found["macro_f1"] == pytest.approx(np.mean([sk.f1_score(t, d) for t, _, d in per_label]))
    right = [(predicted[r, c] == targets[r, c]).all(axis=1) for r, c in blocks]
    assert found["subset_accuracy"] == pytest.approx(np.concatenate(right).mean())
    chosen, _ = choose_thresholds(logits, masked)
    for j in range(5):
        alone, _ = choose_thresholds(logits[known[:, j], j:j + 1], targets[known[:, j], j:j + 1])
        assert chosen[j] == pytest.approx(alone[0])


def test_a_label_without_positives_is_left_out_where_undefined():
    logits, targets = _data(3)
    targets[:, 1] = 0
    found = multilabel_metrics(logits, targets)
    probs = sigmoid(logits)
    defined = [0, 2, 3, 4]
    assert found["map"] == pytest.approx(np.mean([sk.average_precision_score(targets[:, j], probs[:, j])
                                                  for j in defined]))
    assert found["auroc"] == pytest.approx(np.mean([sk.roc_auc_score(targets[:, j], probs[:, j]) for j in defined]))
    assert np.isnan(average_precision(probs[:, 1], targets[:, 1].astype(bool)))
    thresholds, defaulted = choose_thresholds(logits, targets)
    assert defaulted == [1] and thresholds[1] == 0.5


def test_thresholds_maximise_f1_on_the_rows_they_are_chosen_on():
    logits, targets = _data(4)
    thresholds, _ = choose_thresholds(logits, targets)
    probs = sigmoid(logits)
    for j, threshold in enumerate(thresholds):
        chosen = sk.f1_score(targets[:, j], probs[:, j] >= threshold)
        best = max(sk.f1_score(targets[:, j], probs[:, j] >= t) for t in np.unique(probs[:, j]))
        assert chosen == pytest.approx(best)
        assert not np.any(probs[:, j] == threshold)  # a midpoint, never a row's own score


def test_positive_weights_balance_each_label():
    targets = np.array([[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]])
    assert positive_weights(targets).tolist() == [3.0, 4.0, 1 / 3]  # no positive: 4 negatives over one


@pytest.mark.parametrize("value, expected", [
    (["b", "a", "a"], ["a", "b"]), ('["effusion", "edema"]', ["edema", "effusion"]), ("a|b|", ["a", "b"]),
    ("", []), (None, []), (float("nan"), []), ([], []),
])
def test_a_row_s_labels_are_read_from_a_list_json_or_a_joined_string(value, expected):
    assert label_set(value, "|", "x.csv row 3") == expected


def test_an_unreadable_label_list_names_the_row():
    with pytest.raises(DataError, match="x.csv row 3: .* not one"):
        label_set('["a", ', "|", "x.csv row 3")
    with pytest.raises(DataError, match="x.csv row 4: expected a list"):
        label_set(7, "|", "x.csv row 4")
