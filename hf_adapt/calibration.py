"""Probability calibration, fitted on held-out logits and applied to logits, so every consumer (metrics, the
operating point, ``load_adapted``, serving) sees calibrated probabilities with no change of its own.

- ``temperature``: logits / T, with T minimising the held-out negative log-likelihood (any number of classes;
  it never changes which class is most probable).
- ``platt`` (binary): the positive class's probability is ``sigmoid(a * s + b)``, ``s`` the logit margin
  (positive minus negative), with ``a`` and ``b`` fitted by maximum likelihood (scikit-learn's logistic
  regression, unpenalised).
- ``isotonic`` (binary): a non-decreasing step map of the positive probability (scikit-learn's
  ``IsotonicRegression``), clipped away from 0 and 1 so log loss stays finite.

A calibration is saved as plain numbers (``to_dict``) in ``hf_adapt.json`` and rebuilt with ``from_dict``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hf_adapt.errors import ConfigError, DataError

logger = logging.getLogger("hf_adapt.calibration")

METHODS = ("none", "temperature", "platt", "isotonic")
BINARY_ONLY = ("platt", "isotonic")
EPSILON = 1e-6  # isotonic probabilities are kept in [EPSILON, 1 - EPSILON]
FEW_FOR_ISOTONIC = 1000  # below this many held-out rows isotonic steps overfit (its steps reach 0 and 1)


@dataclass
class Calibration:
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    positive: int | None = None  # binary methods: the class whose probability is mapped

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated logits: their softmax is the calibrated probabilities."""
        logits = np.asarray(logits, dtype=np.float64)
        if self.method == "temperature":
            return logits / self.params["temperature"]
        positive = self._positive_probability(_margin(logits, self.positive))
        return _binary_logits(positive, self.positive)

    def _positive_probability(self, margin: np.ndarray) -> np.ndarray:
        if self.method == "platt":
            return _sigmoid(self.params["a"] * margin + self.params["b"])
        x, y = np.asarray(self.params["x"]), np.asarray(self.params["y"])
        return np.clip(np.interp(_sigmoid(margin), x, y), EPSILON, 1 - EPSILON)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "positive": self.positive, **self.params}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Calibration:
        values = dict(values)
        method, positive = values.pop("method"), values.pop("positive", None)
        if method not in METHODS[1:]:
            raise ValueError(f"unknown calibration method {method!r}")
        return cls(method, values, positive)


def check_method(method: str, num_labels: int) -> None:
    if method not in METHODS:
        raise ConfigError(f"calibration {method!r} is not one of {', '.join(METHODS)}")
    if method in BINARY_ONLY and num_labels != 2:
        raise ConfigError(f"calibration: {method} maps one class's probability and needs a binary task; this one has "
                          f"{num_labels} labels: use temperature")


def fit_calibration(method: str, logits: np.ndarray, labels: np.ndarray, positive: int | None = None) -> Calibration | None:
    """Fit ``method`` on held-out ``logits`` (n, k) and integer ``labels``; None for ``"none"``."""
    if method == "none":
        return None
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    check_method(method, logits.shape[1])
    if len(np.unique(labels)) < 2:
        raise DataError(f"calibration: {method} needs held-out rows of more than one class; they hold only "
                        f"class {int(labels[0])}")
    if method == "temperature":
        return Calibration("temperature", {"temperature": _temperature(logits, labels)})
    positive = 1 if positive is None else positive
    margin, target = _margin(logits, positive), (labels == positive).astype(int)
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=np.inf, solver="lbfgs", max_iter=1000).fit(margin[:, None], target)
        return Calibration("platt", {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}, positive)
    from sklearn.isotonic import IsotonicRegression

    if len(labels) < FEW_FOR_ISOTONIC:
        logger.warning("isotonic calibration on %d held-out rows: below about %d its steps overfit (probabilities near "
                       "0 and 1 on test); platt or temperature suit small validation sets", len(labels), FEW_FOR_ISOTONIC)

    model = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(_sigmoid(margin), target)
    return Calibration("isotonic", {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}, positive)


def _temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean())

    return float(np.exp(minimize_scalar(nll, bounds=(-4.0, 4.0), method="bounded").x))


def _margin(logits: np.ndarray, positive: int) -> np.ndarray:
    return logits[:, positive] - logits[:, 1 - positive]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _binary_logits(positive_probability: np.ndarray, positive: int) -> np.ndarray:
    p = np.clip(positive_probability, 1e-12, 1 - 1e-12)
    out = np.zeros((len(p), 2))
    out[:, positive] = np.log(p)
    out[:, 1 - positive] = np.log1p(-p)
    return out
