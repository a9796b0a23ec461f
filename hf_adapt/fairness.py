"""Bias mitigation by post-processing: group-specific decision rules chosen on validation with fairlearn's
``ThresholdOptimizer``, saved with the model, and applied at predict time when the row carries the sensitive value.

The optimiser's rules are randomised: for a group, a score is compared with one of two thresholds, chosen with the
probabilities it fitted (equalized odds may also give a constant answer with some probability). hf-adapt makes the
draw reproducible: it comes from the SHA-256 of the input the model reads, so the same input always gets the same
decision, in the run's test numbers, in ``load_adapted`` and in serving alike. The sensitive column decides which
rule applies; it need not be (and, where the law says so, must not be) a model input.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_adapt.errors import ConfigError, DataError

CONSTRAINTS = ("equalized_odds", "demographic_parity", "true_positive_rate_parity")
KEYS = ("constraint", "sensitive_column", "bins")


def check_fairness(values: Any) -> None:
    """Shape checks of a ``fairness:`` block, before any data loads."""
    if values is None:
        return
    if not isinstance(values, dict):
        raise ConfigError(f"fairness must be a mapping like {{constraint: equalized_odds, sensitive_column: sex}}, "
                          f"got {values!r}")
    unknown = sorted(set(values) - set(KEYS))
    if unknown:
        raise ConfigError(f"fairness: unknown key(s) {unknown}; allowed: {list(KEYS)}")
    if values.get("constraint") not in CONSTRAINTS:
        raise ConfigError(f"fairness.constraint {values.get('constraint')!r} is not one of {', '.join(CONSTRAINTS)}")
    if not isinstance(values.get("sensitive_column"), str) or not values["sensitive_column"]:
        raise ConfigError("fairness.sensitive_column: name the column whose groups get their own thresholds")
    bins = values.get("bins")
    if bins is not None and (not isinstance(bins, list) or not all(isinstance(b, int | float) for b in bins)):
        raise ConfigError(f"fairness.bins must be a list of numbers (bin edges), got {bins!r}")


def _scores_estimator():
    """A fitted scikit-learn 'estimator' whose prediction is its one input column: the model's validation scores."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Scores(ClassifierMixin, BaseEstimator):
        def fit(self, X, y):  # noqa: N803 - scikit-learn's names
            self.fitted_, self.classes_ = True, np.array([0, 1])
            return self

        def predict(self, X):  # noqa: N803
            return np.asarray(X, dtype=np.float64)[:, 0]

    return Scores().fit(np.zeros((2, 1)), np.array([0, 1]))


@dataclass
class GroupRules:
    constraint: str
    column: str
    bins: list[float] | None
    rules: dict[str, dict[str, Any]]  # group -> p_ignore, constant, p0, t0, op0, p1, t1, op1
    used_as_input: bool = False
    positive_label: str | None = None  # the class a positive decision gives

    def decide(self, scores: np.ndarray, groups: list[str], keys: list[str]) -> np.ndarray:
        """Positive decisions for positive-class ``scores`` of rows in ``groups``; ``keys`` (the inputs as the model
        reads them) fix each row's draw."""
        unknown = sorted({g for g in groups if g not in self.rules})
        if unknown:
            raise DataError(f"{self.column} group(s) {unknown} had no rows on validation, so no rule was fitted for "
                            f"them; known groups: {sorted(self.rules)}")
        out = np.zeros(len(scores), dtype=bool)
        for i, (score, group, key) in enumerate(zip(scores, groups, keys)):
            rule, (u, v) = self.rules[group], draws(key)
            if u < rule["p_ignore"]:
                out[i] = v < rule["constant"]
                continue
            first = (u - rule["p_ignore"]) / (1 - rule["p_ignore"]) < rule["p0"]
            threshold, operator = (rule["t0"], rule["op0"]) if first else (rule["t1"], rule["op1"])
            out[i] = score > threshold if operator == ">" else score < threshold
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"constraint": self.constraint, "sensitive_column": self.column, "bins": self.bins,
                "rules": self.rules, "used_as_input": self.used_as_input, "positive_label": self.positive_label}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GroupRules:
        return cls(values["constraint"], values["sensitive_column"], values.get("bins"), values["rules"],
                   values.get("used_as_input", False), values.get("positive_label"))


def draws(key: str) -> tuple[float, float]:
    """Two numbers in [0, 1) fixed by ``key``: the rule's draws for that input."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64, int.from_bytes(digest[8:16], "big") / 2**64


def fit_group_rules(constraint: str, column: str, bins: list[float] | None, scores: np.ndarray, positive: np.ndarray,
                    groups: list[str]) -> GroupRules:
    """fairlearn's ThresholdOptimizer on validation scores: balanced accuracy under ``constraint``."""
    from fairlearn.postprocessing import ThresholdOptimizer

    if len(set(groups)) < 2:
        raise DataError(f"fairness: the validation split holds one {column} group ({groups[0]!r}); there is nothing "
                        "to equalise")
    optimizer = ThresholdOptimizer(estimator=_scores_estimator(), constraints=constraint, objective="balanced_accuracy_score",
                                   prefit=True, predict_method="predict")
    optimizer.fit(np.asarray(scores, dtype=np.float64)[:, None], np.asarray(positive, dtype=int),
                  sensitive_features=np.asarray(groups, dtype=object))
    rules = {}
    for group, rule in optimizer.interpolated_thresholder_.interpolation_dict.items():
        rules[str(group)] = {
            "p_ignore": float(rule.get("p_ignore", 0.0)), "constant": float(rule.get("prediction_constant", 0.0)),
            "p0": float(rule["p0"]), "t0": float(rule["operation0"].threshold), "op0": rule["operation0"].operator,
            "p1": float(rule["p1"]), "t1": float(rule["operation1"].threshold), "op1": rule["operation1"].operator,
        }
    return GroupRules(constraint, column, bins, rules)


def gaps(positive: np.ndarray, decided: np.ndarray, groups: list[str]) -> dict[str, float]:
    """Overall accuracy and balanced accuracy, and the between-group gaps as fairlearn defines them (max minus min
    over groups of the selection rate, the true positive rate, and the worse of the TPR and FPR gaps), in numpy so a
    bootstrap of them is quick (the tests check them against fairlearn's functions)."""
    positive, decided, groups = np.asarray(positive, dtype=bool), np.asarray(decided, dtype=bool), np.asarray(groups)
    rates = {"selection": [], "tpr": [], "fpr": []}
    for group in np.unique(groups):
        rows = groups == group
        rates["selection"].append(decided[rows].mean())
        rates["tpr"].append(decided[rows & positive].mean() if (rows & positive).any() else np.nan)
        rates["fpr"].append(decided[rows & ~positive].mean() if (rows & ~positive).any() else np.nan)

    def spread(values: list[float]) -> float:
        return float(np.nanmax(values) - np.nanmin(values))

    tpr_rate = decided[positive].mean() if positive.any() else np.nan
    tnr_rate = (~decided[~positive]).mean() if (~positive).any() else np.nan
    return {"accuracy": float((positive == decided).mean()), "balanced_accuracy": float(np.nanmean([tpr_rate, tnr_rate])),
            "demographic_parity_difference": spread(rates["selection"]),
            "equal_opportunity_difference": spread(rates["tpr"]),
            "equalized_odds_difference": max(spread(rates["tpr"]), spread(rates["fpr"]))}


def compare(positive: np.ndarray, before: np.ndarray, after: np.ndarray, groups: list[str], resamples: int = 200,
            seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each measure before and after, with 95 % percentile-bootstrap intervals over the rows (the same draws for
    both, so the intervals of the change are paired)."""
    point_before, point_after = gaps(positive, before, groups), gaps(positive, after, groups)
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups, dtype=object)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in point_before}
    for _ in range(resamples):
        rows = rng.integers(0, len(positive), len(positive))
        if len(set(groups[rows])) < 2 or len(set(positive[rows])) < 2:
            continue
        b, a = gaps(positive[rows], before[rows], list(groups[rows])), gaps(positive[rows], after[rows], list(groups[rows]))
        for name in samples:
            samples[name].append((b[name], a[name]))
    out = {}
    for name in point_before:
        values = np.asarray(samples[name], dtype=np.float64).reshape(-1, 2)
        out[name] = {"before": point_before[name], "after": point_after[name],
                     "before_interval": _interval(values[:, 0]), "after_interval": _interval(values[:, 1]),
                     "change_interval": _interval(values[:, 1] - values[:, 0])}
    return out


def _interval(values: np.ndarray) -> list[float | None]:
    if not len(values):
        return [None, None]
    return [float(np.nanpercentile(values, 2.5)), float(np.nanpercentile(values, 97.5))]
