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

A target of -1 means "not annotated" (continual learning: an experience annotates its own labels only): each label
is then scored on the rows that annotate it, and the pooled metrics count annotated (row, label) pairs only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from hf_adapt.errors import ConfigError, DataError, ModelError
from hf_adapt.metrics import auroc_of

TASK_FORMAT = 1  # version of the ``task`` block of hf_adapt.json (hf_adapt.tasks.TASK_FORMAT)

MULTI_LABEL_METRICS = ("micro_f1", "macro_f1", "map", "auroc", "subset_accuracy", "hamming_loss")
DEFAULT_THRESHOLD = 0.5  # where validation cannot choose one (a label without a positive validation row)
NOT_ANNOTATED = -1  # a target no one labelled: neither trained on nor scored


def sigmoid(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -logits))  # 1 / (1 + exp(-x)) without overflow


def _checked(logits: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits as floats, which (row, label) targets are positive, and which are annotated (not -1)."""
    logits, targets = np.asarray(logits, dtype=np.float64), np.asarray(targets)
    if logits.ndim != 2 or logits.shape != targets.shape or len(logits) == 0:
        raise ValueError(f"logits and targets must be (rows, labels) of one shape with rows > 0; got {logits.shape} "
                         f"and {targets.shape}")
    if not np.isfinite(logits).all():
        raise ValueError(f"logits hold {int(np.sum(~np.isfinite(logits)))} non-finite values (NaN or inf)")
    if not np.isin(targets, (0, 1, NOT_ANNOTATED)).all():
        raise ValueError(f"targets must be 0/1 per label (-1: not annotated); got values {np.unique(targets)[:5].tolist()}")
    return logits, targets == 1, targets != NOT_ANNOTATED


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
    """F1 per column of (rows, labels) booleans (``predicted`` false where not annotated); NaN where a label
    neither occurs nor is predicted."""
    true_positives = (predicted & positive).sum(axis=0)
    denominator = predicted.sum(axis=0) + positive.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, 2 * true_positives / np.maximum(denominator, 1), np.nan)


def multilabel_metrics(logits: np.ndarray, targets: np.ndarray, thresholds: np.ndarray | None = None
                       ) -> dict[str, float]:
    """The metrics of the module docstring for ``logits`` (rows, labels) against 0/1 ``targets``, deciding each
    label at its threshold (default 0.5)."""
    logits, positive, known = _checked(logits, targets)
    probs = sigmoid(logits)
    cut = np.full(logits.shape[1], DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, dtype=float)
    predicted = (probs >= cut) & known
    pooled = 2 * (predicted & positive).sum() / max(predicted.sum() + positive.sum(), 1)
    per_label_f1 = _f1(predicted, positive)
    labels = range(logits.shape[1])
    aps = [average_precision(probs[known[:, j], j], positive[known[:, j], j]) for j in labels]
    both = [j for j in labels if 0 < positive[:, j].sum() < known[:, j].sum()]
    wrong = (predicted != positive) & known
    rows = known.any(axis=1)
    nan = float("nan")
    return {
        "micro_f1": float(pooled) if predicted.any() or positive.any() else nan,
        "macro_f1": float(np.nanmean(per_label_f1)) if np.isfinite(per_label_f1).any() else nan,
        "map": float(np.nanmean(aps)) if np.isfinite(aps).any() else nan,
        "auroc": float(np.mean([auroc_of(probs[known[:, j], j], positive[known[:, j], j]) for j in both]))
                 if both else nan,
        "subset_accuracy": float(np.mean(~wrong[rows].any(axis=1))) if rows.any() else nan,
        "hamming_loss": float(wrong.sum() / known.sum()) if known.any() else nan,
    }


def per_label_metrics(logits: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
                      names: list[str]) -> list[dict[str, Any]]:
    """Each label's support (positive rows), AUROC, average precision, and precision, recall and F1 at its
    threshold; NaN where undefined."""
    logits, positive, known = _checked(logits, targets)
    probs = sigmoid(logits)
    rows = []
    for j, name in enumerate(names):
        scores, truth = probs[known[:, j], j], positive[known[:, j], j]
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
    logits, positive, known = _checked(logits, targets)
    probs = sigmoid(logits)
    thresholds, defaulted = np.full(logits.shape[1], DEFAULT_THRESHOLD), []
    for j in range(logits.shape[1]):
        truth = positive[known[:, j], j]
        if not truth.any():
            defaulted.append(j)
            continue
        scores = probs[known[:, j], j]
        order = np.argsort(scores, kind="mergesort")[::-1]
        ranked = scores[order]
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


# ----------------------------------------------------------------------------- the task


# options that only mean something for one class per row: refused for multi-label before anything is read
SINGLE_LABEL_ONLY = {
    "operating_point": ("none", "each label gets its own threshold, chosen on validation for the best F1"),
    "operating_target": (None, "it belongs to operating_point"),
    "calibration": ("none", "it calibrates one softmax over the classes; multi-label outputs are separate sigmoids"),
    "fairness": (None, "its group rules pick one decision threshold of a binary classifier"),
    "balanced_sampler": (False, "a row carries several labels, so no sampler balances them all; class_weights: "
                                "balanced weights each label's positives (pos_weight) instead"),
    "positive_label": (None, "every label is a positive of its own"),
    "train_fraction": (None, "label budgets are drawn per class"),
    "train_samples_per_class": (None, "label budgets are drawn per class"),
    "table_features": ("none", "the hybrid table model is not implemented for task: multi_label yet"),
    "init_from": (None, "continuing another output is not implemented for task: multi_label yet"),
}


class MultiLabelLoss:
    """Binary cross-entropy of each label's logit, positives weighted by ``pos_weight`` (per label) when given."""

    def __init__(self, logits_fn: Any, pos_weight: Any = None):
        self.logits_fn, self.pos_weight = logits_fn, pos_weight

    def __call__(self, model: Any, batch: dict[str, Any]) -> dict[str, Any]:
        import torch.nn.functional as F

        logits = self.logits_fn(model, batch["inputs"])
        weight = None if self.pos_weight is None else self.pos_weight.to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float(), pos_weight=weight)
        return {"loss": loss, "logits": logits}


@dataclass
class MultiLabel:
    """Several labels per row: one sigmoid output per label, binary cross-entropy, and a threshold per label that
    :meth:`tuned` chooses on validation (0.5 until then). See the module docstring for the metrics."""

    names: tuple[str, ...] = ()  # set by fit
    thresholds: tuple[float, ...] | None = None  # set by tuned
    chosen_on: str | None = None  # the held-out rows the thresholds were chosen on
    defaulted: tuple[str, ...] = ()  # labels without a held-out positive, left at 0.5
    name: str = "multi_label"
    metric_names: tuple[str, ...] = MULTI_LABEL_METRICS
    wide_model: str = "one logistic regression per label"

    def check_config(self, cfg: Any) -> None:
        from hf_adapt.config import refuse_set

        refuse_set(cfg, SINGLE_LABEL_ONLY, "task: multi_label")
        metric = getattr(cfg, "metric_for_best_model", None)
        if metric is not None and metric not in MULTI_LABEL_METRICS:
            raise ConfigError(f"metric_for_best_model: {metric} is not a multi-label metric; task: multi_label takes "
                              f"one of {list(MULTI_LABEL_METRICS)} (hamming_loss: lower is better), e.g. "
                              "metric_for_best_model: map")
        if getattr(cfg, "regression_loss", "mse") != "mse":
            raise ConfigError("regression_loss applies to task: regression; task: multi_label trains binary "
                              "cross-entropy per label")
        if getattr(cfg, "baseline", None) in ("ridge", "tfidf_ridge"):
            raise ConfigError(f"baseline: {cfg.baseline} is a regression baseline; task: multi_label takes auto, "
                              "none, logistic_regression, hist_gradient_boosting or tfidf_logistic_regression")

    def read_labels(self, raw: dict[str, Any], spec: Any) -> tuple[dict[str, Any], list[str]]:
        """Each split's labels as a 0/1 vector per row over the training split's label names: from ``label_columns``
        (0/1 columns), or from the ``label_column`` holding each row's label list."""
        from datasets import Sequence, Value

        columns = list(getattr(spec, "label_columns", None) or [])
        sets = {split: _row_label_sets(ds, spec, columns, split) for split, ds in raw.items()}
        names = columns or sorted({name for labels in sets[_train_split(sets)] for name in labels})
        if not names:
            raise DataError(f"{spec.source}: the training rows carry no label at all; task: multi_label needs rows "
                            "with labels")
        _check_unseen(sets, names)
        index = {name: i for i, name in enumerate(names)}
        encoded = {}
        for split, dataset in raw.items():
            vectors = [[0] * len(names) for _ in sets[split]]
            for vector, labels in zip(vectors, sets[split]):
                for label in labels:
                    vector[index[label]] = 1
            dropped = [c for c in (columns or [spec.label_column]) if c in dataset.column_names]
            encoded[split] = dataset.remove_columns(dropped).add_column("label", vectors).cast_column(
                "label", Sequence(Value("int8")))
        return encoded, names

    def label_facts(self, data: Any) -> dict[str, Any]:
        return {"label_counts": {split: data.label_counts(split) for split in data.splits},
                "label_cardinality": {split: float(np.mean(np.sum(data.splits[split]["label"], axis=1)))
                                      for split in data.splits}}

    def fit(self, data: Any) -> MultiLabel:
        import logging

        absent = [name for name, count in data.label_counts("train").items() if count in (0, len(data.splits["train"]))]
        if absent:
            logging.getLogger("hf_adapt.multilabel").warning(
                "label(s) %s are on every training row or on none: the model cannot learn them from these rows, "
                "and their baselines predict their training rate", absent)
        return MultiLabel(tuple(data.labels))

    def class_weights(self, labels: list[Any], num_labels: int) -> Any:
        """``class_weights: balanced``: each label's positives weighted by its negatives / positives (pos_weight)."""
        import torch

        return torch.as_tensor(positive_weights(np.asarray(labels)), dtype=torch.float32)

    def encode(self, values: list[Any]) -> list[list[float]]:
        return np.asarray(values, dtype=np.float32).tolist()

    def loss(self, logits_fn: Any, class_weights: Any = None) -> Any:
        return MultiLabelLoss(logits_fn, class_weights)

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        return multilabel_metrics(logits, labels, None if self.thresholds is None else np.asarray(self.thresholds))

    def tuned(self, logits: np.ndarray, labels: np.ndarray, where: str) -> MultiLabel:
        """This task with each label's F1-best threshold on these held-out rows (``where``: which they are)."""
        thresholds, defaulted = choose_thresholds(logits, labels)
        return MultiLabel(self.names, tuple(float(t) for t in thresholds), where,
                          tuple(self.names[j] for j in defaulted))

    def per_label(self, logits: np.ndarray, labels: np.ndarray) -> list[dict[str, Any]]:
        return per_label_metrics(logits, labels, self._thresholds(), list(self.names))

    def decide(self, logits: np.ndarray) -> np.ndarray:
        """Each row's 0/1 decision per label at the thresholds."""
        return sigmoid(logits) >= self._thresholds()

    def baseline_outputs(self, model: Any, inputs: Any) -> np.ndarray:
        probs = np.column_stack([p[:, 1] if p.shape[1] > 1 else np.zeros(len(p)) for p in model.predict_proba(inputs)])
        probs = np.clip(probs, 1e-7, 1 - 1e-7)
        return np.log(probs) - np.log1p(-probs)  # log-odds, as the model's outputs

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "format": TASK_FORMAT, "thresholds": [float(t) for t in self._thresholds()],
                "thresholds_chosen_on": self.chosen_on, "default_thresholds": list(self.defaulted)}

    def model_noun(self, labels: list[str]) -> str:
        return f"A multi-label classifier ({len(labels)} labels, any number per input: {', '.join(labels)})"

    def head_description(self, labels: list[str], new: bool) -> str:
        names = ", ".join(labels)
        return (f"a multi-label head (one sigmoid output per label: {names})" if new
                else f"{len(labels)}-label multi-label head ({names})")

    def explained(self, outputs: np.ndarray, labels: list[str], target: str | None,
                  predicted: str | None) -> dict[str, Any]:
        probs = sigmoid(np.asarray(outputs, dtype=np.float64))
        chosen = [name for name, p, t in zip(labels, probs, self._thresholds()) if p >= t]
        name = target or labels[int(np.argmax(probs))]
        if name not in labels:
            raise ConfigError(f"target {name!r} is not one of this model's labels {labels}")
        t = labels.index(name)
        return {"index": t, "other": None, "explained_output": f"logit({name}): the log-odds of label {name!r}",
                "facts": {"predicted_label": ", ".join(chosen) or "(none)", "predicted_labels": chosen,
                          "probabilities": dict(zip(labels, map(float, probs))), "target": name}}

    def _thresholds(self) -> np.ndarray:
        return (np.full(len(self.names), DEFAULT_THRESHOLD) if self.thresholds is None
                else np.asarray(self.thresholds, dtype=np.float64))

    @classmethod
    def from_info(cls, block: dict[str, Any], labels: list[str], where: str) -> MultiLabel:
        """The task of a saved model: its ``task`` block's thresholds, one per label of ``label_map.json``."""
        thresholds = block.get("thresholds")
        if (not isinstance(thresholds, list) or len(thresholds) != len(labels)
                or not all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thresholds)):
            raise ModelError(f"{where}: task.thresholds must hold one number in [0, 1] per label ({len(labels)}), "
                             f"got {thresholds!r}"[:400])
        return cls(tuple(labels), tuple(float(t) for t in thresholds), block.get("thresholds_chosen_on"),
                   tuple(block.get("default_thresholds") or ()))


def _train_split(sets: dict[str, Any]) -> str:
    from hf_adapt.data.files import SPLIT_NAMES

    return next(split for split in sets if SPLIT_NAMES.get(split, split) == "train")


def _row_label_sets(dataset: Any, spec: Any, columns: list[str], split: str) -> list[list[str]]:
    """Each row's labels: the names of the ``columns`` holding 1 (refusing anything but 0/1), or the list in
    ``spec.label_column`` (see :func:`label_set`)."""
    from hf_adapt.data.rows import is_missing

    source = str((spec.data_files or {}).get(split) or spec.source)
    if not columns:
        separator = getattr(spec, "label_separator", "|")
        return [label_set(value, separator, f"{source} (split {split!r}) row {row}, column {spec.label_column!r}")
                for row, value in enumerate(dataset[spec.label_column])]
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise DataError(f"{source} (split {split!r}): label_columns {missing} not found; columns are "
                        f"{dataset.column_names}")
    rows: list[list[str]] = [[] for _ in range(len(dataset))]
    for column in columns:
        for row, value in enumerate(dataset[column]):
            flag = None if is_missing(value) or isinstance(value, str) else value
            if flag not in (0, 1, True, False):
                raise DataError(f"{source} (split {split!r}) row {row}, column {column!r}: {value!r} is not 0 or 1; "
                                "label_columns hold one 0/1 flag per label")
            if flag:
                rows[row].append(column)
    return rows


def _check_unseen(sets: dict[str, list[list[str]]], names: list[str]) -> None:
    """A validation or test label the training rows never carry: no model learns it, and scores would hide it."""
    known = set(names)
    for split, rows in sets.items():
        unseen = [(row, label) for row, labels in enumerate(rows) for label in labels if label not in known]
        if unseen:
            row, label = unseen[0]
            raise DataError(f"split {split!r} row {row}: label {label!r} never appears in the train split "
                            f"({len(unseen)} such label(s) in {split!r}); a model cannot learn a label it never "
                            "trains on: add train rows with it, or drop it")


SUBGROUP_METRICS = ("micro_f1", "macro_f1", "map")


def subgroup_metrics(logits: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
                     groups: dict[str, list[str]], n_boot: int = 0, seed: int = 0) -> dict[str, Any]:
    """Per sensitive column and group: its test rows, micro-F1, macro-F1 and mAP at the thresholds (95 % bootstrap
    intervals over the group's rows with ``n_boot``), and per metric the gap between the best and worst group."""
    from hf_adapt.metrics import bootstrap_intervals

    def score(group_logits, group_targets):
        found = multilabel_metrics(group_logits, group_targets, thresholds)
        return {name: found[name] for name in SUBGROUP_METRICS}

    columns = {}
    for column, values in groups.items():
        rows = []
        for group in sorted(set(values)):
            at = np.asarray([v == group for v in values])
            metrics = score(logits[at], targets[at])
            intervals = (bootstrap_intervals(score, logits[at], targets[at], n_resamples=n_boot, seed=seed)
                         if n_boot else {})
            rows.append({"group": group, "rows": int(at.sum()), "metrics": metrics, "intervals": intervals})
        gaps = {}
        for name in SUBGROUP_METRICS:
            values_of = [r["metrics"][name] for r in rows if r["metrics"][name] == r["metrics"][name]]
            gaps[name] = max(values_of) - min(values_of) if len(values_of) > 1 else float("nan")
        columns[column] = {"groups": rows, "gaps": gaps}
    return {"columns": columns, "metrics": list(SUBGROUP_METRICS), "resamples": n_boot}
