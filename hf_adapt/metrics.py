"""Classification metrics, computed offline from logits.

Accuracy, macro-F1, AUROC, log loss and the binary ranking metrics are computed with numpy
here rather than through ``sklearn.metrics``: the definitions are scikit-learn's (the tests
check them against it), but sklearn's input validation costs milliseconds per call, which a
1000-resample bootstrap pays a thousand times.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Metrics where lower is better; everything else is maximised.
LOWER_IS_BETTER = {"log_loss", "ece", "brier", "loss", "perplexity", "rmse", "mae", "hamming_loss"}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al., 2017)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def _roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct score, highest first, starting at (0, 0): ``sklearn.metrics.roc_curve``
    with ``drop_intermediate=False``. Both classes must be present."""
    order = np.argsort(scores, kind="mergesort")[::-1]
    ranked = scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tps = np.cumsum(positive[order], dtype=np.float64)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def _trapezoid_area(fpr: np.ndarray, tpr: np.ndarray) -> float:
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)  # trapezoids, as sklearn.metrics.auc


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    return _trapezoid_area(*_roc_points(scores, positive))


def auroc_of(scores: np.ndarray, positive: np.ndarray) -> float:
    """``sklearn.metrics.roc_auc_score`` of ``scores`` against booleans ``positive``; both classes must be present."""
    return _auroc(np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool))


def binary_score_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """AUROC, Gini, KS and Brier score of positive-class probabilities ``scores`` against 0/1 ``labels``.

    Gini is ``2 * AUROC - 1``; KS (Kolmogorov-Smirnov) is the largest ``TPR - FPR`` over all
    thresholds of the ROC curve; Brier is ``mean((score - label) ** 2)``. AUROC, Gini and KS
    are NaN when ``labels`` hold a single class (they are undefined there); Brier is always
    defined. These are the definitions ``classification_metrics`` reports for binary tasks.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must be 1-D of one length; got shapes {scores.shape} and {labels.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"scores hold {int(np.sum(~np.isfinite(scores)))} non-finite values (NaN or inf)")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 (1 = positive); got values {np.unique(labels)[:5].tolist()}")
    positive = labels.astype(bool)
    brier = float(np.mean((scores - positive) ** 2))
    if positive.all() or not positive.any():
        nan = float("nan")
        return {"auroc": nan, "gini": nan, "ks": nan, "brier": brier}
    fpr, tpr = _roc_points(scores, positive)
    auroc = _trapezoid_area(fpr, tpr)
    return {"auroc": auroc, "gini": 2 * auroc - 1, "ks": float(np.max(tpr - fpr)), "brier": brier}


def _class_indices(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``labels`` as int64 class indices, checked to lie in ``0..num_classes - 1``."""
    labels = np.asarray(labels)
    if labels.dtype.kind == "b" or (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be class indices (integers); got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        outside = sorted({int(v) for v in labels[(labels < 0) | (labels >= num_classes)]})
        raise ValueError(f"labels hold {outside[:5]}, outside 0..{num_classes - 1} for logits with {num_classes} columns")
    return labels.astype(np.int64, copy=False)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, AUROC (binary, or macro one-vs-rest), log loss, ECE and Brier score; Gini and KS for binary.

    AUROC (and Gini, KS) is NaN when the labels hold a single class (it is undefined there).
    Brier score: for binary tasks (two logit columns) the usual ``mean((p_positive - y) ** 2)``;
    for multi-class tasks ``mean`` over rows of ``sum`` over classes of ``(p - onehot) ** 2``
    (the original multi-class Brier, which is twice the binary one on two classes). Binary
    tasks add ``gini`` (``2 * AUROC - 1``) and ``ks`` (largest ``TPR - FPR``, see
    ``binary_score_metrics``); multi-class tasks have no such keys.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or len(logits) == 0:
        raise ValueError(f"logits must be (n, classes) with n > 0; got shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError(f"logits hold {int(np.sum(~np.isfinite(logits)))} non-finite values (NaN or inf)")
    num_classes = logits.shape[1]
    labels = _class_indices(labels, num_classes)
    if labels.shape != (len(logits),):
        raise ValueError(f"{len(logits)} rows of logits for labels of shape {labels.shape}")
    probs = softmax(logits)
    predictions = probs.argmax(axis=1)
    present = np.unique(labels)
    binary_scores = None
    if num_classes == 2:
        binary_scores = binary_score_metrics(probs[:, 1], labels)
        auroc, brier = binary_scores["auroc"], binary_scores["brier"]
    else:
        if len(present) < 2:
            auroc = float("nan")
        else:
            # over the classes present, renormalised (a softmax of their logits: stable where their probabilities
            # underflow), so a class absent from a small split does not make AUROC undefined
            sub = softmax(logits[:, present])
            if len(present) == 2:  # two of more classes present: one binary AUROC between them
                auroc = _auroc(sub[:, 1], labels == present[1])
            else:  # macro one-vs-rest over the classes present, as roc_auc_score(multi_class="ovr", labels=present)
                auroc = float(np.mean([_auroc(sub[:, i], labels == c) for i, c in enumerate(present)]))
        onehot = np.zeros_like(probs)
        onehot[np.arange(len(labels)), labels] = 1.0
        brier = float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))

    # macro-F1 over the classes that occur (in labels or predictions), like AUROC above; every such class
    # has a nonzero denominator, so zero_division never applies
    occurring = np.union1d(labels, predictions)
    true_positives = np.bincount(labels[predictions == labels], minlength=num_classes)[occurring]
    f1 = 2 * true_positives / (np.bincount(labels, minlength=num_classes)[occurring]
                               + np.bincount(predictions, minlength=num_classes)[occurring])
    # sklearn's log_loss: probabilities clipped to [eps, 1 - eps]
    eps = np.finfo(np.float64).eps
    true_class_prob = np.clip(probs[np.arange(len(labels)), labels], eps, 1 - eps)
    metrics = {
        "accuracy": float(np.mean(predictions == labels)),
        "macro_f1": float(np.mean(f1)),
        "auroc": auroc,
        "log_loss": float(-np.mean(np.log(true_class_prob))),
        "ece": expected_calibration_error(probs, labels),
        "brier": brier,
    }
    if binary_scores is not None:
        metrics["gini"] = binary_scores["gini"]
        metrics["ks"] = binary_scores["ks"]
    return metrics


def bootstrap_intervals(fn: Callable[..., dict[str, float]], *arrays: np.ndarray, n_resamples: int = 1000,
                        confidence: float = 0.95, seed: int = 0,
                        groups: np.ndarray | None = None) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap confidence intervals for every metric ``fn`` returns.

    Each resample draws ``len(arrays[0])`` row indices with replacement and applies the same
    indices to every array, then calls ``fn(*resampled_arrays)``. With ``groups`` (a group id
    per row, e.g. the patient) it is a cluster bootstrap: whole groups are drawn with
    replacement, all rows of each, since rows of one patient are not independent. For each metric, resamples
    where it is not finite (AUROC of a resample holding one class, say) are left out; when
    fewer than half the resamples give a finite value, its interval is ``(nan, nan)``. The
    interval is the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of the
    rest. The same ``seed`` gives the same intervals.

    Args:
        fn: metrics of the (resampled) arrays, a dict of floats.
        *arrays: row-aligned arrays (logits and labels, scores and labels ...).
        n_resamples: bootstrap resamples.
        confidence: the interval's coverage, in (0, 1).
        seed: seed of the resampling generator.
        groups: row-aligned group ids for a cluster bootstrap; None resamples rows.
    """
    if not arrays:
        raise ValueError("bootstrap_intervals needs at least one array to resample")
    arrays = tuple(np.asarray(a) for a in arrays)
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise ValueError(f"bootstrap_intervals needs non-empty arrays of equal length; got {[len(a) for a in arrays]}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1; got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1); got {confidence}")
    rng = np.random.default_rng(seed)
    members = None
    if groups is not None:
        if len(groups) != n:
            raise ValueError(f"groups has {len(groups)} entries for {n} rows")
        _, group_of_row = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        order = np.argsort(group_of_row, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(group_of_row))[:-1])  # the rows of each group
    values: dict[str, np.ndarray] = {}
    for r in range(n_resamples):
        if members is None:
            rows = rng.integers(0, n, size=n)
        else:
            rows = np.concatenate([members[g] for g in rng.integers(0, len(members), size=len(members))])
        for key, value in fn(*(a[rows] for a in arrays)).items():
            # a metric missing from some resamples counts as NaN there
            values.setdefault(key, np.full(n_resamples, np.nan))[r] = float(value)
    alpha = (1 - confidence) / 2
    intervals = {}
    for key, samples in values.items():
        finite = samples[np.isfinite(samples)]
        if 2 * finite.size < n_resamples:
            intervals[key] = (float("nan"), float("nan"))
        else:
            low, high = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
            intervals[key] = (float(low), float(high))
    return intervals


def paired_differences(fn: Callable[..., dict[str, float]], outputs: np.ndarray, other: np.ndarray,
                       labels: np.ndarray, n_resamples: int = 1000, seed: int = 0,
                       groups: np.ndarray | None = None,
                       other_fn: Callable[..., dict[str, float]] | None = None) -> dict[str, dict[str, object]]:
    """Each metric of ``fn(outputs, labels)`` minus the same metric of ``other_fn(other, labels)`` (default ``fn``):
    two models scored on the same rows, with a paired percentile-bootstrap 95 % interval of the difference (both
    drawn on the same resampled rows, or groups). ``{metric: {"difference", "interval"}}``; an interval that
    excludes 0 says the two differ."""
    other_fn = other_fn or fn

    def difference(a, b, y):
        mine, theirs = fn(a, y), other_fn(b, y)
        return {key: mine[key] - theirs[key] for key in mine if key in theirs}

    point = difference(np.asarray(outputs), np.asarray(other), np.asarray(labels))
    intervals = bootstrap_intervals(difference, outputs, other, labels, n_resamples=n_resamples, seed=seed,
                                    groups=groups)
    return {key: {"difference": float(value), "interval": list(intervals[key])} for key, value in point.items()}


def is_better(metric: str, new: float, best: float | None) -> bool:
    if best is None or np.isnan(best):
        return not np.isnan(new)
    return new < best if metric in LOWER_IS_BETTER else new > best
