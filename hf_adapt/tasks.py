"""What a supervised model predicts, as one object per task: how the label column is read and encoded, how many
outputs the head has, the loss, the metrics, the baselines that fit it, and what is saved with the model so that
``load_adapted`` can undo the encoding.

- ``classification``: one class per row; softmax over the classes, cross-entropy (optionally class-weighted).
- ``regression``: one number per row; the target is standardised with the training split's mean and standard
  deviation (saved as the ``task`` block of ``hf_adapt.json`` and undone at prediction), one output, MSE or Huber
  loss, and RMSE, MAE and R² in the original unit.
- ``multi_label``: several labels per row; one sigmoid output per label, binary cross-entropy, a threshold per
  label chosen on validation and saved (:class:`hf_adapt.multilabel.MultiLabel`).

The recipe asks its task (:func:`get_task`) instead of testing ``cfg.task``; torch and scikit-learn are imported
when a task is used, not when this module is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from hf_adapt.errors import ConfigError, DataError, ModelError

TASKS = ("classification", "multi_label", "regression")
REGRESSION_METRICS = ("rmse", "mae", "r2")
TASK_FORMAT = 1  # version of the ``task`` block of hf_adapt.json


class Task(Protocol):
    """One kind of supervised target. A recipe reads labels, trains, scores and saves through it."""

    name: str
    metric_names: tuple[str, ...]

    def check_config(self, cfg: Any) -> None:
        """Refuse, before any data is read, the settings that make no sense for this task."""

    def fit(self, data: Any) -> Task:
        """This task bound to loaded data (its classes, or its target's training-split scaling)."""

    def tuned(self, logits: np.ndarray, labels: np.ndarray, where: str) -> Task:
        """After training, this task with what it chooses on held-out outputs (multi-label: a threshold per label);
        ``where`` names those rows (the validation split, a fold) for the record."""

    def baseline_outputs(self, model: Any, inputs: Any) -> np.ndarray:
        """A fitted scikit-learn baseline's predictions on ``inputs``, as model outputs are (for ``metrics``)."""

    wide_model: str  # the linear model a hybrid table model's wide path starts from

    def fit_wide(self, features: np.ndarray, labels: list[Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Weights (outputs x width) and bias of that linear model on a hybrid's encoded training rows."""

    def read_labels(self, raw: dict[str, Any], spec: Any) -> tuple[dict[str, Any], list[str]]:
        """The splits with a ``label`` column as the task trains on it, and the output names (head size)."""

    def label_facts(self, data: Any) -> dict[str, Any]:
        """What the data's origin (and the card) says of the labels of each split."""

    def encode(self, values: list[Any]) -> list[Any]:
        """A split's ``label`` values as the loss takes them."""

    def loss(self, logits_fn: Any, class_weights: Any = None) -> Any:
        """The loop task (:class:`hf_adapt.loop.Task`): a batch to ``{"loss", "logits"}``."""

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Metrics of model outputs against encoded labels."""

    def info(self) -> dict[str, Any]:
        """The ``task`` block saved in ``hf_adapt.json``."""

    def head_description(self, labels: list[str], new: bool) -> str:
        """How a card names the head over ``labels``: a new one (``new``), or a parent's that was dropped."""

    def model_noun(self, labels: list[str]) -> str:
        """What the card's summary calls the model, e.g. 'A 2-class classifier (bad, good)'."""

    def explained(self, outputs: np.ndarray, labels: list[str], target: str | None,
                  predicted: str | None) -> dict[str, Any]:
        """What an explanation of one input's ``outputs`` (one row) attributes: ``index`` (and ``other``, whose output
        is subtracted: a binary log-odds) of the output, ``explained_output`` (how the output is named) and the
        ``facts`` about the prediction the explanation reports."""


@dataclass
class Classification:
    """Single-label softmax classification: the labels are class names, the head has one logit per class."""

    num_labels: int = 0  # set by fit
    name: str = "classification"
    metric_names: tuple[str, ...] = ("accuracy", "macro_f1", "auroc", "log_loss", "ece", "brier", "gini", "ks")
    wide_model: str = "logistic regression"

    def fit_wide(self, features: np.ndarray, labels: list[Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        return fit_linear(features, labels, self.num_labels, seed)

    def fit(self, data: Any) -> Classification:
        return Classification(data.num_labels)

    def baseline_outputs(self, model: Any, inputs: Any) -> np.ndarray:
        # predict_proba columns follow model.classes_; align to all label ids
        probs = np.full((len(inputs), self.num_labels), 1e-7)
        probs[:, model.classes_] = model.predict_proba(inputs)
        return np.log(probs)

    def check_config(self, cfg: Any) -> None:
        if getattr(cfg, "regression_loss", "mse") != "mse":
            raise ConfigError(f"regression_loss: {cfg.regression_loss} applies to task: regression; this task is "
                              "classification (cross-entropy)")
        metric = getattr(cfg, "metric_for_best_model", None)
        if metric is not None and metric not in self.metric_names:
            kind = "regression" if metric in REGRESSION_METRICS else "multi-label"
            raise ConfigError(f"metric_for_best_model: {metric} is a {kind} metric; task: classification takes "
                              f"one of {list(self.metric_names)}")
        if getattr(cfg, "baseline", None) in REGRESSION_BASELINES:
            raise ConfigError(f"baseline: {cfg.baseline} is a regression baseline; task: classification takes "
                              "logistic_regression, hist_gradient_boosting or tfidf_logistic_regression")

    def read_labels(self, raw: dict[str, Any], spec: Any) -> tuple[dict[str, Any], list[str]]:
        from hf_adapt.data.checks import check_unseen_labels
        from hf_adapt.data.splits import encode_labels, label_names

        names = label_names(raw, spec.label_column)
        encoded = {split: encode_labels(ds, spec.label_column, names) for split, ds in raw.items()}
        if not spec.streamed:  # a stream's train split here is its first rows; a class they lack may come later
            check_unseen_labels(encoded, names)
        return encoded, names

    def label_facts(self, data: Any) -> dict[str, Any]:
        return {"label_counts": {split: data.label_counts(split) for split in data.splits}}

    def encode(self, values: list[Any]) -> list[Any]:
        return list(values)

    def class_weights(self, labels: list[Any], num_labels: int) -> Any:
        """``class_weights: balanced``: scikit-learn's balanced weight per class."""
        from hf_adapt.loop import balanced_class_weights

        return balanced_class_weights(labels, num_labels)

    def tuned(self, logits: np.ndarray, labels: np.ndarray, where: str) -> Classification:
        """Nothing to choose on validation (a multi-label task chooses its thresholds there)."""
        return self

    def loss(self, logits_fn: Any, class_weights: Any = None) -> Any:
        from hf_adapt.loop import ClassificationTask

        return ClassificationTask(logits_fn, class_weights)

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        from hf_adapt.metrics import classification_metrics

        return classification_metrics(logits, labels)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "format": TASK_FORMAT}

    def model_noun(self, labels: list[str]) -> str:
        return f"A {len(labels)}-class classifier ({', '.join(labels)})"

    def head_description(self, labels: list[str], new: bool) -> str:
        names = ", ".join(labels)
        return f"a classification head for {len(labels)} labels ({names})" if new else f"{len(labels)}-label head ({names})"

    def explained(self, outputs: np.ndarray, labels: list[str], target: str | None,
                  predicted: str | None) -> dict[str, Any]:
        from hf_adapt.metrics import softmax

        probs = softmax(np.asarray(outputs, dtype=np.float64)[None])[0]
        predicted = predicted or labels[int(probs.argmax())]
        name = predicted if target is None else target
        if name not in labels:
            raise ConfigError(f"target {name!r} is not one of this model's labels {labels}")
        t = labels.index(name)
        other = 1 - t if len(labels) == 2 else None  # binary: the log-odds of the explained class
        explained = (f"logit({labels[t]})" if other is None
                     else f"logit({labels[t]}) - logit({labels[other]}): log-odds of {labels[t]!r}")
        return {"index": t, "other": other, "explained_output": explained,
                "facts": {"predicted_label": predicted, "probabilities": dict(zip(labels, map(float, probs))),
                          "target": labels[t]}}


def fit_linear(features: np.ndarray, labels: list[int], num_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Weights ``(num_labels x width)`` and bias of logistic regression on ``features``, as logits: a binary
    model's log-odds go to the second label (the first's logit is 0), so their softmax is its probability."""
    from sklearn.linear_model import LogisticRegression

    if len(set(labels)) < 2:
        raise DataError(f"table_features: the training rows hold one class only ({labels[0] if labels else 'none'}); "
                        "the wide path's logistic regression needs two")
    model = LogisticRegression(max_iter=2000, random_state=seed).fit(features, labels)
    weight = np.zeros((num_labels, features.shape[1]))
    bias = np.zeros(num_labels)
    classes = [int(c) for c in model.classes_]
    if len(classes) == 2:  # the first present label's logit stays 0
        weight[classes[1]], bias[classes[1]] = model.coef_[0], model.intercept_[0]
    else:
        weight[classes], bias[classes] = model.coef_, model.intercept_
    absent = sorted(set(range(num_labels)) - set(classes))
    bias[absent] = bias[classes].min() - 10.0  # a label the rows lack starts improbable
    return weight, bias


@dataclass
class TargetScaler:
    """The training split's mean and standard deviation of a numeric target: the model learns
    ``(y - mean) / std`` and its output is mapped back with ``output * std + mean``."""

    column: str
    mean: float
    std: float

    @classmethod
    def fit(cls, values: Any, column: str) -> TargetScaler:
        values = np.asarray(values, dtype=np.float64)
        std = float(values.std())
        return cls(column, float(values.mean()), std if std > 0 else 1.0)  # a constant target: no scaling

    def encode(self, values: Any) -> np.ndarray:
        return (np.asarray(values, dtype=np.float64) - self.mean) / self.std

    def decode(self, values: Any) -> np.ndarray:
        return np.asarray(values, dtype=np.float64) * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, values: Any, where: str = "hf_adapt.json") -> TargetScaler:
        ok = (isinstance(values, dict) and isinstance(values.get("column"), str)
              and all(isinstance(values.get(k), (int, float)) and not isinstance(values.get(k), bool)
                      and math.isfinite(values[k]) for k in ("mean", "std")) and values["std"] > 0)
        if not ok:
            raise ModelError(f"{where}: task.target must be {{column, mean, std > 0}} with finite numbers, got "
                             f"{values!r}"[:400])
        return cls(values["column"], float(values["mean"]), float(values["std"]))


# options that only mean something for classes: refused for regression before anything is read
CLASSIFICATION_ONLY = {
    "operating_point": ("none", "a decision threshold needs classes; a regression model predicts a number"),
    "operating_target": (None, "it belongs to operating_point, which needs classes"),
    "calibration": ("none", "it calibrates class probabilities; a regression model has none"),
    "fairness": (None, "its group rules pick decision thresholds on class probabilities"),
    "class_weights": ("none", "there are no classes to weight"),
    "balanced_sampler": (False, "there are no classes to balance"),
    "positive_label": (None, "there is no positive class"),
    "train_fraction": (None, "label budgets are drawn per class"),
    "train_samples_per_class": (None, "there are no classes"),
    "sensitive_columns": (None, "the per-group report scores classes (regression subgroups are not implemented yet)"),
    "sensitive_bins": (None, "it belongs to sensitive_columns"),
}
REGRESSION_BASELINES = ("ridge", "tfidf_ridge")


@dataclass
class Regression:
    """One standardised number per row; ``scaler`` is fitted on the training split when labels are read."""

    loss_name: str = "mse"
    scaler: TargetScaler | None = None
    name: str = "regression"
    metric_names: tuple[str, ...] = REGRESSION_METRICS
    wide_model: str = "ridge regression (alpha 1, on the standardised target)"

    def fit_wide(self, features: np.ndarray, labels: list[Any], seed: int) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.linear_model import Ridge

        model = Ridge(alpha=1.0).fit(features, np.asarray(labels, dtype=np.float64))
        return model.coef_[None, :], np.asarray([model.intercept_])

    def check_config(self, cfg: Any) -> None:
        from hf_adapt.config import refuse_set

        refuse_set(cfg, CLASSIFICATION_ONLY, "task: regression")
        metric = getattr(cfg, "metric_for_best_model", None)
        if metric is not None and metric not in REGRESSION_METRICS:
            raise ConfigError(f"metric_for_best_model: {metric} is a classification metric; task: regression takes "
                              f"one of {list(REGRESSION_METRICS)} (rmse and mae: lower is better), e.g. "
                              "metric_for_best_model: rmse")
        baseline = getattr(cfg, "baseline", None)
        if baseline in ("logistic_regression", "tfidf_logistic_regression"):
            raise ConfigError(f"baseline: {baseline} is a classifier; task: regression takes auto, none, ridge, "
                              "tfidf_ridge or hist_gradient_boosting")

    def read_labels(self, raw: dict[str, Any], spec: Any) -> tuple[dict[str, Any], list[str]]:
        from datasets import Value

        column, encoded = spec.label_column, {}
        for split, dataset in raw.items():
            if type(dataset.features.get(column)).__name__ == "ClassLabel":  # class folders, or a labelled Hub set
                raise DataError(f"{source_of(spec, split)}: label column {column!r} holds classes "
                                f"({', '.join(dataset.features[column].names[:5])}, ...), not numbers; task: "
                                "regression needs a numeric target column (a manifest or table with numbers)")
            where = f"{source_of(spec, split)} (split {split!r})"
            values = [_target_value(v, where, row, column) for row, v in enumerate(dataset[column])]
            dataset = dataset.remove_columns([column])
            encoded[split] = dataset.add_column("label", values).cast_column("label", Value("float64"))
        return encoded, [column]

    def label_facts(self, data: Any) -> dict[str, Any]:
        summary = {}
        for split, dataset in data.splits.items():
            values = np.asarray(dataset["label"], dtype=np.float64)
            summary[split] = {"rows": int(len(values)), "mean": float(values.mean()), "std": float(values.std()),
                              "min": float(values.min()), "median": float(np.median(values)),
                              "max": float(values.max())}
        return {"target_summary": summary}

    def fit_scaler(self, train_values: Any, column: str) -> Regression:
        """This task with the target scaling of the training split's values."""
        return Regression(self.loss_name, TargetScaler.fit(train_values, column))

    def fit(self, data: Any) -> Regression:
        return self.fit_scaler(data.splits["train"]["label"], data.labels[0])

    def baseline_outputs(self, model: Any, inputs: Any) -> np.ndarray:
        return self._scaler().encode(model.predict(inputs))[:, None]

    def encode(self, values: list[Any]) -> list[float]:
        return self._scaler().encode(values).astype(np.float32).tolist()

    def tuned(self, logits: np.ndarray, labels: np.ndarray, where: str) -> Regression:
        return self

    def decode(self, outputs: Any) -> np.ndarray:
        """Model outputs (standardised, shape (n,) or (n, 1)) as numbers in the target's unit."""
        return self._scaler().decode(np.asarray(outputs, dtype=np.float64).reshape(-1))

    def loss(self, logits_fn: Any, class_weights: Any = None) -> Any:
        return RegressionLoss(logits_fn, self.loss_name)

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return regression_metrics(self.decode(logits), self.decode(labels))

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "format": TASK_FORMAT, "loss": self.loss_name, "target": self._scaler().to_dict()}

    def model_noun(self, labels: list[str]) -> str:
        return f"A regression model predicting `{labels[0]}` (a number, in its own unit)"

    def head_description(self, labels: list[str], new: bool) -> str:
        return f"a regression head (one output: {labels[0]}, standardised)" if new else f"regression head ({labels[0]})"

    def explained(self, outputs: np.ndarray, labels: list[str], target: str | None,
                  predicted: str | None) -> dict[str, Any]:
        if target not in (None, labels[0]):
            raise ConfigError(f"target {target!r}: a regression model has one output, {labels[0]!r}")
        scaler = self._scaler()
        value = float(self.decode(np.asarray(outputs)[:1])[0])
        return {"index": 0, "other": None,
                "explained_output": (f"output({labels[0]}): the standardised prediction; {labels[0]} = output x "
                                     f"{scaler.std:.6g} + {scaler.mean:.6g}"),
                "facts": {"predicted_label": f"{value:.6g}", "predicted_value": value, "target": labels[0]}}

    def _scaler(self) -> TargetScaler:
        if self.scaler is None:
            raise RuntimeError("the regression target is not scaled yet: call fit_scaler on the training values")
        return self.scaler


def _target_value(value: Any, source: str, row: int, column: str) -> float:
    """A numeric target as a float; a missing, non-numeric or non-finite one is refused naming the file, row and
    column."""
    from hf_adapt.data.rows import is_missing

    where = f"{source} row {row}, column {column!r}"
    if is_missing(value):
        raise DataError(f"{where}: the regression target is missing; every row needs a number")
    if isinstance(value, bool):
        raise DataError(f"{where}: the regression target {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: the regression target {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: the regression target {value!r} is not a finite number")
    return number


def source_of(spec: Any, split: str) -> str:
    """The file (or data source) a split came from, for messages."""
    return str((spec.data_files or {}).get(split) or spec.source)


def regression_metrics(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² (scikit-learn's definitions) of ``predicted`` against ``actual``, in the target's unit.
    R² is NaN when ``actual`` is constant (undefined there)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    predicted, actual = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if not np.isfinite(predicted).all():
        raise ValueError(f"predictions hold {int(np.sum(~np.isfinite(predicted)))} non-finite values")
    r2 = float(r2_score(actual, predicted)) if np.ptp(actual) > 0 else float("nan")
    return {"rmse": float(math.sqrt(mean_squared_error(actual, predicted))),
            "mae": float(mean_absolute_error(actual, predicted)), "r2": r2}


class RegressionLoss:
    """MSE or Huber (delta 1, in standard deviations of the target) on the single output."""

    def __init__(self, logits_fn: Any, loss: str = "mse"):
        self.logits_fn, self.loss_name = logits_fn, loss

    def __call__(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        import torch.nn.functional as F

        outputs = self.logits_fn(model, batch["inputs"])
        predicted, target = outputs.float().reshape(-1), batch["labels"].float().reshape(-1)
        loss = F.huber_loss(predicted, target) if self.loss_name == "huber" else F.mse_loss(predicted, target)
        return {"loss": loss, "logits": outputs}


def get_task(name: str = "classification", regression_loss: str = "mse") -> Task:
    """The task called ``name``: classification, regression or multi_label."""
    if name == "classification":
        return Classification()
    if name == "regression":
        return Regression(regression_loss)
    if name == "multi_label":
        from hf_adapt.multilabel import MultiLabel

        return MultiLabel()
    raise ConfigError(f"task {name!r} is not one of {list(TASKS)}")


def task_of(cfg: Any) -> Task:
    """The task a config asks for, its settings checked."""
    task = get_task(getattr(cfg, "task", "classification"), getattr(cfg, "regression_loss", "mse"))
    task.check_config(cfg)
    return task


def task_from_info(info: dict[str, Any], labels: list[str], where: str = "hf_adapt.json") -> Task:
    """The task of a saved model (``hf_adapt.json``'s ``task`` block; outputs without one are classifiers) with
    ``labels``, its ``label_map.json``."""
    block = info.get("task") or {"name": "classification"}
    if not isinstance(block, dict) or block.get("name") not in TASKS:
        raise ModelError(f"{where}: task {block!r} is not one this version of hf-adapt loads {list(TASKS)}"[:400])
    if block["name"] == "classification":
        return Classification(len(labels))
    if block["name"] == "multi_label":
        from hf_adapt.multilabel import MultiLabel

        return MultiLabel.from_info(block, labels, where)
    return Regression(block.get("loss", "mse"), TargetScaler.from_dict(block.get("target"), where))
