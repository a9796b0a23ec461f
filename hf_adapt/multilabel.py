"""Multi-label classification, where a row may carry several labels at once (a radiograph showing an effusion and a
cardiomegaly): one sigmoid output per label, binary cross-entropy, and one decision threshold per label chosen on
validation.

The metrics are scikit-learn's definitions (the tests check them against it), computed with numpy because a
bootstrap calls them a thousand times:

- ``micro_f1``: F1 over every (row, label) decision pooled; ``macro_f1``: the mean of the per-label F1, over the
  labels that occur (in the targets or the predictions);
- ``map``: mean average precision over the labels with a positive row (``average_precision_score``);
- ``auroc``: mean per-label AUROC over the labels with both a positive and a negative row;
- ``subset_accuracy``: the share of rows whose whole label set is right; ``hamming_loss``: the share of wrong
  (row, label) decisions.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hf_adapt.metrics import auroc_of

MULTI_LABEL_METRICS = ("micro_f1", "macro_f1", "map", "auroc", "subset_accuracy", "hamming_loss")
LOWER_IS_BETTER = {"hamming_loss"}
DEFAULT_THRESHOLD = 0.5  # where validation cannot choose one (a label without a positive validation row)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -logits))  # 1 / (1 + exp(-x)) without overflow


def _checked(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    if logits.ndim != 2 or logits.shape != targets.shape or len(logits) == 0:
        raise ValueError(f"logits and targets must be (rows, labels) of one shape with rows > 0; got {logits.shape} "
                         f"and {targets.shape}")
    if not np.isfinite(logits).all():
        raise ValueError(f"logits hold {int(np.sum(~np.isfinite(logits)))} non-finite values (NaN or inf)")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError(f"targets must be 0/1 per label; got values {np.unique(targets)[:5].tolist()}")
    return logits, targets.astype(bool)


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """``sklearn.metrics.average_precision_score``: the sum over thresholds of (recall gained) x precision; NaN
    without a positive row."""
    total = int(positive.sum())
    if total == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")[::-1]
    ranked = scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    true_positives = np.cumsum(positive[order], dtype=np.float64)[last_of_tie]
    precision = true_positives / (last_of_tie + 1)
    recall_gain = np.diff(np.r_[0.0, true_positives]) / total
    return float(np.sum(recall_gain * precision))


def _f1(predicted: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """F1 per column of (rows, labels) booleans; NaN where a label neither occurs nor is predicted."""
    true_positives = (predicted & positive).sum(axis=0)
    denominator = predicted.sum(axis=0) + positive.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * true_positives / np.maximum(denominator, 1), np.nan)


def multilabel_metrics(logits: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | None = None
                       ) -> dict[str, float]:
    """The metrics of the module docstring for ``logits`` (rows, labels) against 0/1 ``targets``, deciding each
    label at its threshold (default 0.5)."""
    logits, positive = _checked(logits, targets)
    probs = sigmoid(logits)
    cut = np.full(logits.shape[1], DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, dtype=float)
    predicted = probs >= cut
    pooled = 2 * (predicted & positive).sum() / max(predicted.sum() + positive.sum(), 1)
    per_label_f1 = _f1(predicted, positive)
    aps = [average_precision(probs[:, j], positive[:, j]) for j in range(logits.shape[1])]
    both = [j for j in range(logits.shape[1]) if 0 < positive[:, j].sum() < len(positive)]
    nan = float("nan")
    return {
        "micro_f1": float(pooled) if predicted.any() or positive.any() else nan,
        "macro_f1": float(np.nanmean(per_label_f1)) if np.isfinite(per_label_f1).any() else nan,
        "map": float(np.nanmean(aps)) if np.isfinite(aps).any() else nan,
        "auroc": float(np.mean([auroc_of(probs[:, j], positive[:, j]) for j in both])) if both else nan,
        "subset_accuracy": float(np.mean((predicted == positive).all(axis=1))),
        "hamming_loss": float(np.mean(predicted != positive)),
    }


def per_label_metrics(logits: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
                      names: list[str]) -> list[dict[str, Any]]:
    """Each label's support (positive rows), AUROC, average precision, and precision, recall and F1 at its
    threshold; NaN where undefined."""
    logits, positive = _checked(logits, targets)
    probs = sigmoid(logits)
    rows = []
    for j, name in enumerate(names):
        scores, truth = probs[:, j], positive[:, j]
        predicted = scores >= thresholds[j]
        hits = int((predicted & truth).sum())
        nan = float("nan")
        rows.append({
            "label": name, "support": int(truth.sum()), "threshold": float(thresholds[j]),
            "auroc": auroc_of(scores, truth) if 0 < truth.sum() < len(truth) else nan,
            "average_precision": average_precision(scores, truth),
            "precision": hits / predicted.sum() if predicted.any() else nan,
            "recall": hits / truth.sum() if truth.any() else nan,
            "f1": float(_f1(predicted[:, None], truth[:, None])[0]),
        })
    return rows


def choose_thresholds(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Per label, the threshold on its probability that maximises F1 on these (validation) rows: the midpoint
    between the lowest probability predicted positive and the next one below, so that rows scored like those
    decide alike. A label without a positive row keeps 0.5. Returns the thresholds and the indices of the labels
    that kept the default."""
    logits, positive = _checked(logits, targets)
    probs = sigmoid(logits)
    thresholds, defaulted = np.full(logits.shape[1], DEFAULT_THRESHOLD), []
    for j in range(logits.shape[1]):
        truth = positive[:, j]
        if not truth.any():
            defaulted.append(j)
            continue
        order = np.argsort(probs[:, j], kind="mergesort")[::-1]
        ranked = probs[order, j]
        last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
        true_positives = np.cumsum(truth[order], dtype=np.float64)[last_of_tie]
        f1 = 2 * true_positives / (last_of_tie + 1 + truth.sum())
        best = int(np.argmax(f1))  # the first (highest threshold) of equal F1s: fewest positive decisions
        below = ranked[last_of_tie[best] + 1] if last_of_tie[best] + 1 < ranked.size else 0.0
        thresholds[j] = (ranked[last_of_tie[best]] + below) / 2
    return thresholds, defaulted


def positive_weights(targets: np.ndarray, cap: float = 100.0) -> np.ndarray:
    """``pos_weight`` per label for ``BCEWithLogitsLoss``: negatives / positives in the training rows, capped (a label
    with no positive row gets the cap's ratio to one positive, not infinity)."""
    positive = np.asarray(targets, dtype=np.float64)
    positives = positive.sum(axis=0)
    negatives = len(positive) - positives
    return np.clip(negatives / np.maximum(positives, 1.0), 1.0 / cap, cap)


def label_set(value: Any, separator: str, where: str) -> list[str]:
    """One row's labels: a list (a datasets sequence, JSON, parquet), a JSON list in a string (``["a", "b"]``), or a
    ``separator``-joined string (``a|b``); empty means no label. Anything else is refused, naming ``where``."""
    from hf_adapt.data.rows import is_missing
    from hf_adapt.errors import DataError

    if isinstance(value, str) and value.strip().startswith("["):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: {value[:80]!r} starts like a JSON list but is not one ({err.msg})") from None
    if isinstance(value, (list, tuple)):
        items = [str(v).strip() for v in value if not is_missing(v)]
    elif isinstance(value, str) or is_missing(value):
        items = [] if is_missing(value) else [v.strip() for v in value.split(separator)]
    else:
        raise DataError(f"{where}: expected a list of labels or a {separator!r}-separated string, got {value!r}")
    return sorted({item for item in items if item})
