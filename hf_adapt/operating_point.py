"""Decision thresholds for binary classifiers: pick one on validation, report it on test.

A threshold turns positive-class probabilities into decisions: a case is called positive
when its score is ``>= threshold``. ``select_threshold`` picks it on validation scores by a
rule (a target sensitivity, a target specificity, or maximum Youden J); ``threshold_metrics``
gives sensitivity, specificity, PPV and NPV at a fixed threshold (on test, once chosen), and
``threshold_intervals`` their bootstrap intervals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from hf_adapt.errors import OperatingPointError
from hf_adapt.metrics import bootstrap_intervals

logger = logging.getLogger("hf_adapt.operating_point")

Rule = Literal["sensitivity", "specificity", "youden"]
RULES = ("sensitivity", "specificity", "youden")
# below this many validation cases of a class, one case moves sensitivity (or specificity) by more than 5 points
FEW_CASES = 20


@dataclass
class OperatingPoint:
    """A threshold chosen on validation, with the rule that chose it and its validation ``threshold_metrics``."""

    threshold: float
    rule: str
    target: float | None
    metrics: dict[str, float] = field(default_factory=dict)  # threshold_metrics on the scores it was chosen on
    selected_on: str = "the validation split"


def _scores_and_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(f"scores and labels must be 1-D of one length; got shapes {scores.shape} and {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"labels must be 0/1 or boolean (1 = positive); got values {np.unique(labels)[:5].tolist()}")
    return scores, labels.astype(bool)


def threshold_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV, NPV and the positive rate when calling ``score >= threshold`` positive.

    Args:
        scores: positive-class probabilities, one per case.
        labels: 0/1 or boolean, 1 (True) for a positive case.
        threshold: the decision threshold.

    Returns:
        ``sensitivity`` (TP / positives), ``specificity`` (TN / negatives), ``ppv`` (TP / called
        positive), ``npv`` (TN / called negative) and ``positive_rate`` (called positive / all);
        NaN where the denominator is zero (no positives, say).
    """
    scores, positive = _scores_and_labels(scores, labels)
    called = scores >= threshold
    tp = int(np.count_nonzero(called & positive))
    fp = int(np.count_nonzero(called)) - tp
    fn = int(np.count_nonzero(positive)) - tp
    tn = len(scores) - tp - fp - fn

    def ratio(num: int, den: int) -> float:
        return num / den if den else float("nan")

    return {"sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp), "ppv": ratio(tp, tp + fp),
            "npv": ratio(tn, tn + fn), "positive_rate": ratio(tp + fp, len(scores))}


def select_threshold(scores: np.ndarray, labels: np.ndarray, rule: Rule, target: float | None = None) -> OperatingPoint:
    """Choose a decision threshold on validation ``scores`` by ``rule``.

    Candidates are the distinct scores (the thresholds of ``sklearn.metrics.roc_curve``).

    - ``"sensitivity"``: the highest threshold whose sensitivity is ``>= target``, so
      specificity is as high as the target allows.
    - ``"specificity"``: the lowest threshold whose specificity is ``>= target``, so
      sensitivity is as high as the target allows.
    - ``"youden"``: the threshold with the largest sensitivity + specificity - 1 (the highest
      one on ties); ``target`` must be None.

    Args:
        scores: validation positive-class probabilities.
        labels: 0/1 or boolean, 1 (True) for a positive case.
        rule: one of ``"sensitivity"``, ``"specificity"``, ``"youden"``.
        target: the sensitivity or specificity to reach, in (0, 1].

    Raises:
        OperatingPointError: a rule or target that does not fit, validation holding one class,
            or a target met only by calling every case positive (sensitivity rule, specificity
            0) or every case negative (specificity rule, sensitivity 0).

    A validation split with fewer than 20 positives (or negatives) gets a warning: each case
    then moves the rate by more than 5 points, so the threshold is noisy.
    """
    _check_rule(rule, target)
    scores, positive = _scores_and_labels(scores, labels)
    n_pos, n_neg = _check_validation(scores, positive, rule)

    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(positive, scores, drop_intermediate=False)
    # thresholds[0] calls every case negative (inf, or max + 1 in older scikit-learn); the rest are the scores.
    # Rates from counts, each one division, so that 4 of 5 is exactly 0.8 when compared with a target
    tp, fp = np.rint(tpr * n_pos), np.rint(fpr * n_neg)
    tpr, fpr, specificity = tp / n_pos, fp / n_neg, (n_neg - fp) / n_neg
    if rule == "sensitivity":
        i = int(np.argmax(tpr >= target))  # tpr rises as the threshold falls: the first hit is the highest threshold
        if fpr[i] == 1.0:
            everyone = "every case" if i == len(thresholds) - 1 else "every negative case"
            raise OperatingPointError(
                f"target sensitivity {target:g} is met on validation only by calling {everyone} positive "
                f"(specificity 0.00 at threshold {thresholds[i]:.4g}); lower the target or add validation positives "
                f"(there are {n_pos})")
    elif rule == "specificity":
        meets = np.flatnonzero(specificity >= target)  # specificity falls as the threshold falls: the last hit is lowest
        i = int(meets[-1])
        if tpr[i] == 0.0:
            everyone = "every case" if i == 0 else "every positive case"
            shown = "above every score" if i == 0 else f"{thresholds[i]:.4g}"
            raise OperatingPointError(
                f"target specificity {target:g} is met on validation only by calling {everyone} negative "
                f"(sensitivity 0.00 at threshold {shown}); lower the target or add validation negatives "
                f"(there are {n_neg})")
    else:
        # in integers (J times positives times negatives), so equal J ties exactly; over the distinct scores only,
        # as the all-negative threshold is no operating point
        j = tp[1:] * n_neg - fp[1:] * n_pos
        i = 1 + int(np.argmax(j))
        if j[i - 1] <= 0:
            logger.warning("Youden J is %.3f at best on validation: the scores do not separate the classes",
                           j[i - 1] / (n_pos * n_neg))
    threshold = float(thresholds[i])
    return OperatingPoint(threshold=threshold, rule=rule, target=target,
                          metrics=threshold_metrics(scores, positive, threshold))



def _check_rule(rule: Rule, target: float | None) -> None:
    if rule not in RULES:
        raise OperatingPointError(f"unknown operating point rule {rule!r}; expected one of {', '.join(RULES)}")
    if rule == "youden":
        if target is not None:
            raise OperatingPointError(f"rule 'youden' takes no target (got {target}); it maximises "
                                      "sensitivity + specificity - 1")
    elif target is None or not 0 < target <= 1:
        raise OperatingPointError(f"rule {rule!r} needs a target {rule} in (0, 1]; got {target}")


def _check_validation(scores: np.ndarray, positive: np.ndarray, rule: Rule) -> tuple[int, int]:
    """The numbers of validation positives and negatives; both must be there, and few of either gets a warning."""
    if not np.isfinite(scores).all():
        raise OperatingPointError(f"validation scores hold {int(np.sum(~np.isfinite(scores)))} non-finite values")
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        only = "positive" if n_neg == 0 else "negative"
        raise OperatingPointError(
            f"validation split has only {only!r} rows ({len(scores)}): sensitivity/specificity/AUROC are undefined; "
            f"a threshold needs both positive and negative cases on validation")
    for name, count in (("positives", n_pos), ("negatives", n_neg)):
        if count < FEW_CASES:
            logger.warning("validation has only %d %s: the %s threshold is noisy (one case moves %s by %.0f points)",
                           count, name, rule, "sensitivity" if name == "positives" else "specificity", 100 / count)
    return n_pos, n_neg


def threshold_intervals(scores: np.ndarray, labels: np.ndarray, threshold: float, n_resamples: int = 1000,
                        seed: int = 0, confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of ``threshold_metrics`` at a fixed ``threshold`` (see ``bootstrap_intervals``).

    The threshold stays fixed: the intervals cover the test-set uncertainty of the rates at it,
    not the uncertainty of choosing it on validation.
    """
    scores, positive = _scores_and_labels(scores, labels)
    return bootstrap_intervals(lambda s, y: threshold_metrics(s, y, threshold), scores, positive,
                               n_resamples=n_resamples, confidence=confidence, seed=seed)


def decide_labels(probs: np.ndarray, labels: list[str], point: dict | None) -> list[str]:
    """:func:`decide` in label names, for an ``hf_adapt.json`` operating point (``positive_label``,
    ``threshold``) or None."""
    if point is None:
        return [labels[i] for i in decide(probs)]
    return [labels[i] for i in decide(probs, labels.index(point["positive_label"]), point["threshold"])]


def decide(probs: np.ndarray, positive: int | None = None, threshold: float | None = None) -> np.ndarray:
    """Predicted class ids for rows of probabilities: the ``positive`` class when its probability is at
    least ``threshold`` (binary tasks with an operating point), else the other class; without a
    threshold, the most probable class. The one decision rule of training reports and serving."""
    probs = np.asarray(probs)
    if threshold is None:
        return probs.argmax(axis=1)
    return np.where(probs[:, positive] >= threshold, positive, 1 - positive)
