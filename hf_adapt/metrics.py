"""Classification metrics, computed offline from logits with scikit-learn."""

from __future__ import annotations

import numpy as np

# Metrics where lower is better; everything else is maximised.
LOWER_IS_BETTER = {"log_loss", "ece", "loss", "perplexity"}


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


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1, AUROC (binary, or macro one-vs-rest), log loss and ECE.

    AUROC is NaN when the labels hold a single class (it is undefined there).
    """
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    num_classes = logits.shape[1]
    probs = softmax(logits)
    predictions = probs.argmax(axis=1)
    classes = list(range(num_classes))
    present = np.unique(labels)
    if len(present) < 2:
        auroc = float("nan")
    elif num_classes == 2:
        auroc = float(roc_auc_score(labels, probs[:, 1]))
    else:
        # over the classes present, renormalised (a softmax of their logits: stable where their probabilities
        # underflow), so a class absent from a small split does not make AUROC undefined
        sub = softmax(logits[:, present])
        if len(present) == 2:  # two of more classes present: one binary AUROC between them
            auroc = float(roc_auc_score(labels == present[1], sub[:, 1]))
        else:
            auroc = float(roc_auc_score(labels, sub, multi_class="ovr", average="macro", labels=present))
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        # over the classes that occur (in labels or predictions), like AUROC above
        "macro_f1": float(f1_score(labels, predictions, average="macro", labels=np.union1d(labels, predictions),
                                   zero_division=0)),
        "auroc": auroc,
        "log_loss": float(log_loss(labels, probs, labels=classes)),
        "ece": expected_calibration_error(probs, labels),
    }


def is_better(metric: str, new: float, best: float | None) -> bool:
    if best is None or np.isnan(best):
        return not np.isnan(new)
    return new < best if metric in LOWER_IS_BETTER else new > best
