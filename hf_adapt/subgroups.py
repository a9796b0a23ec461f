"""Subgroup evaluation on the test split: per-group metrics and gaps with fairlearn, and card sentences.

Groups come from sensitive columns of the test rows (``group_values``); numeric columns are
cut into bands by ``sensitive_bins``. ``subgroup_report`` returns a JSON-ready dict (None
where a metric is undefined, e.g. sensitivity for a group without positives), and
``limitation_sentences`` says in plain words which gaps are large, never why.
"""

from __future__ import annotations

import bisect
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hf_adapt.errors import ConfigError, DataError

MISSING = "missing"
SMALL_GROUP = 30  # fewer test rows than this: the group's numbers are too noisy to judge
MAX_UNBINNED_VALUES = 10


def _is_missing(value: Any) -> bool:
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    try:
        return bool(value != value)  # NaN, NaT and pandas NA are unequal to themselves
    except TypeError:  # pandas NA refuses bool()
        return True


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fmt(number: float) -> str:
    return f"{number:g}"


def band_names(bins: Sequence[float]) -> list[str]:
    """Names of the bands cut by ``bins``, lowest first: ``[25, 35]`` -> ``<25``, ``25 to <35``, ``>=35``.

    Bands are closed on the left: 25 falls in ``25 to <35``.
    """
    middle = [f"{_fmt(lo)} to <{_fmt(hi)}" for lo, hi in zip(bins[:-1], bins[1:])]
    return [f"<{_fmt(bins[0])}", *middle, f">={_fmt(bins[-1])}"]


def group_values(column_values: Sequence[Any], bins: Sequence[float] | None, column: str) -> list[str]:
    """Group name of each row of a sensitive column.

    Numbers with ``bins`` (sorted edges) fall in the bands of ``band_names``; other values
    become ``str(value)`` (numbers as ``25``, not ``25.0``); None, NaN and blank strings
    become ``"missing"``. A numeric column with more than 10 distinct values needs bins.

    Raises:
        ConfigError: bins that are not increasing numbers, bins for a non-numeric column,
            or a many-valued numeric column without bins.
    """
    present = [v for v in column_values if not _is_missing(v)]
    numeric = bool(present) and all(_is_number(v) for v in present)
    if bins is not None:
        bins = list(bins)
        if not bins or not all(_is_number(b) for b in bins) or any(a >= b for a, b in zip(bins[:-1], bins[1:])):
            raise ConfigError(f"sensitive_bins[{column!r}] must be increasing numbers, e.g. [25, 35, 50]; got {bins}")
        if not numeric:
            example = next((v for v in present if not _is_number(v)), None)
            raise ConfigError(f"sensitive_bins given for {column!r}, but its values are not all numbers "
                              f"(e.g. {example!r}); drop the bins to group by value")
        names = band_names(bins)
        return [MISSING if _is_missing(v) else names[bisect.bisect_right(bins, v)] for v in column_values]
    if numeric:
        distinct = len(set(present))
        if distinct > MAX_UNBINNED_VALUES:
            raise ConfigError(
                f"sensitive column {column!r} is numeric with {distinct} distinct values; give bands as "
                f"sensitive_bins, e.g. {{{column}: [25, 35, 50]}}, to group it"
            )
        return [MISSING if _is_missing(v) else _fmt(v) for v in column_values]
    return [MISSING if _is_missing(v) else str(v) for v in column_values]


def _order_key(name: str) -> tuple:
    """Bands (``band_names``) in numeric order, then numbers, then other names alphabetically; ``missing`` last."""
    if name == MISSING:
        return (3, 0.0, name)
    band = re.fullmatch(r"<(\S+)|(\S+) to <\S+|>=(\S+)", name)
    try:
        number = float(next(g for g in band.groups() if g) if band else name)
    except ValueError:
        return (2, 0.0, name)
    if band is None:
        return (1, number, name)
    return (0, -math.inf if name.startswith("<") else math.inf if name.startswith(">=") else number, name)


def _json_float(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _auroc(y_true: np.ndarray, y_pred: np.ndarray, y_score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float("nan") if len(np.unique(y_true)) < 2 else float(roc_auc_score(y_true, y_score))


def _true_positive_rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from fairlearn.metrics import true_positive_rate

    # fairlearn says 0 for a group without positives; it is undefined, and a 0 would fake a gap
    return float(true_positive_rate(y_true, y_pred, pos_label=1)) if np.any(y_true == 1) else float("nan")


def _false_positive_rate(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from fairlearn.metrics import false_positive_rate

    return float(false_positive_rate(y_true, y_pred, pos_label=1)) if np.any(y_true == 0) else float("nan")


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    # over the classes that occur in the group, like hf_adapt.metrics
    return float(f1_score(y_true, y_pred, average="macro", labels=np.union1d(y_true, y_pred), zero_division=0))


def subgroup_report(y_true: Sequence[int], y_pred: Sequence[int], y_score: np.ndarray | None,
                    groups: Mapping[str, Sequence[str]], labels: Sequence[str], positive_label: str | None = None,
                    bins: Mapping[str, Sequence[float] | None] | None = None, n_boot: int = 0,
                    seed: int = 0) -> dict[str, Any]:
    """Per-group metrics and between-group gaps for each sensitive column, as a JSON-ready dict.

    Args:
        y_true: true label indices into ``labels``.
        y_pred: predicted label indices.
        y_score: binary tasks: the positive class's probability ``(n,)``, or all class
            probabilities ``(n, k)``; gives per-group AUROC. None skips AUROC; unused for
            multiclass tasks.
        groups: column name -> group name per row (``group_values``).
        labels: class names; two of them make the task binary.
        positive_label: binary tasks: the class whose rates are reported; ``labels[1]``
            when None. Ignored for multiclass tasks.
        bins: the ``sensitive_bins`` used to make ``groups``, recorded in the report.
        n_boot: bootstrap resamples for each group's 95 % interval of each metric (fairlearn's ``MetricFrame``
            bootstrap, seeded with ``seed``); 0 for none. A group's ``ci`` maps metric -> [low, high].

    Binary tasks get per group ``n``, ``accuracy``, ``selection_rate`` (share predicted
    positive), ``true_positive_rate`` (sensitivity), ``false_positive_rate`` and ``auroc``,
    and the gaps ``demographic_parity_difference`` (selection rates), ``equal_opportunity_difference``
    (true positive rates) and ``equalized_odds_difference`` (the larger of the TPR and FPR
    gaps). Multiclass tasks get ``n``, ``accuracy``, ``macro_f1`` and ``accuracy_difference``.
    Every gap is max minus min over the groups where the metric is defined that have at
    least 30 rows and a real value (not ``missing``): smaller groups are marked ``small``,
    listed, and left out of gaps their noise would dominate. Undefined values are None.
    """
    import pandas as pd
    from fairlearn.metrics import MetricFrame, count, selection_rate
    from sklearn.metrics import accuracy_score

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    if len(y_pred) != n:
        raise DataError(f"{n} true labels but {len(y_pred)} predictions")
    binary = len(labels) == 2
    sample_params: dict[str, dict[str, np.ndarray]] = {}
    if binary:
        positive_label = labels[1] if positive_label is None else positive_label
        if positive_label not in labels:
            raise ConfigError(f"positive_label {positive_label!r} is not one of the labels {list(labels)}")
        positive = list(labels).index(positive_label)
        y_true, y_pred = (y_true == positive).astype(int), (y_pred == positive).astype(int)
        metrics = {"n": count, "accuracy": accuracy_score, "selection_rate": selection_rate,
                   "true_positive_rate": _true_positive_rate, "false_positive_rate": _false_positive_rate}
        if y_score is not None:
            score = np.asarray(y_score, dtype=np.float64)
            score = score[:, positive] if score.ndim == 2 else score
            if len(score) != n:
                raise DataError(f"{n} true labels but {len(score)} scores")
            metrics["auroc"] = _auroc
            sample_params["auroc"] = {"y_score": score}
    else:
        positive_label = None
        metrics = {"n": count, "accuracy": accuracy_score, "macro_f1": _macro_f1}

    columns = {}
    for column, values in groups.items():
        if len(values) != n:
            raise DataError(f"sensitive column {column!r} has {len(values)} values for {n} test rows")
        boot = {"n_boot": n_boot, "ci_quantiles": [0.025, 0.975], "random_state": seed} if n_boot else {}
        frame = MetricFrame(metrics=metrics, y_true=y_true, y_pred=y_pred, sample_params=sample_params,
                            sensitive_features=pd.Series(list(values), name=column, dtype=object), **boot)
        columns[column] = _column_report(frame, list(metrics), binary, (bins or {}).get(column))
    return {"positive_label": positive_label, "labels": list(labels), "n": n, "columns": columns}



def _column_report(frame, metrics: list[str], binary: bool, bins: Sequence[float] | None) -> dict[str, Any]:
    """One sensitive column's groups (ordered, small ones marked), its gaps, and the overall metrics."""
    by_group = frame.by_group
    low, high = frame.by_group_ci if frame.ci_quantiles else (None, None)
    rows = {}
    for name in sorted(by_group.index, key=lambda g: _order_key(str(g))):
        row = {"n": int(by_group.loc[name, "n"])}
        row.update({m: _json_float(by_group.loc[name, m]) for m in metrics if m != "n"})
        row["small"] = row["n"] < SMALL_GROUP
        if low is not None:
            row["ci"] = {m: [_json_float(low.loc[name, m]), _json_float(high.loc[name, m])] for m in metrics if m != "n"}
        rows[str(name)] = row
    judged = [row for name, row in rows.items() if _judged(name, row)]
    if binary:
        # equalized odds: the worse of the TPR and FPR gaps, as fairlearn defines it
        tpr, fpr = _spread(judged, "true_positive_rate"), _spread(judged, "false_positive_rate")
        gaps = {
            "demographic_parity_difference": _spread(judged, "selection_rate"),
            "equal_opportunity_difference": tpr,
            "equalized_odds_difference": max((g for g in (tpr, fpr) if g is not None), default=None),
        }
    else:
        gaps = {"accuracy_difference": _spread(judged, "accuracy")}
    return {
        "bins": None if bins is None else [float(b) for b in bins],
        "metric_names": [m for m in metrics if m != "n"],
        "overall": {m: int(v) if m == "n" else _json_float(v) for m, v in frame.overall.items()},
        "groups": rows,
        "gaps": gaps,
    }


def _judged(name: str, row: Mapping[str, Any]) -> bool:
    """Groups large enough to compare: at least ``SMALL_GROUP`` rows, and a real value (not ``missing``)."""
    return not row["small"] and name != MISSING


def _spread(rows: list[Mapping[str, Any]], metric: str) -> float | None:
    values = [row[metric] for row in rows if row.get(metric) is not None]
    return float(max(values) - min(values)) if len(values) >= 2 else None


def _describe(column: str, report: Mapping[str, Any], group: str) -> str:
    rows = report["groups"]
    where = f"{column} {group}" if report.get("bins") is not None and group != MISSING else f"{column} = {group!r}"
    return f"{where} (n={rows[group]['n']})"


def _extremes(report: Mapping[str, Any], metric: str) -> tuple[str, str] | None:
    """The groups with the lowest and the highest defined ``metric``."""
    defined = {g: row[metric] for g, row in report["groups"].items()
               if row.get(metric) is not None and _judged(g, row)}
    if len(defined) < 2:
        return None
    return min(defined, key=defined.get), max(defined, key=defined.get)


def limitation_sentences(report: Mapping[str, Any], min_gap: float = 0.05) -> list[str]:
    """Plain sentences for the card's limitations, one per gap of at least ``min_gap`` and per column with small groups.

    Binary tasks: a sentence on the sensitivity (equal opportunity) gap and one on the
    selection-rate (demographic parity) gap; multiclass tasks: one on the accuracy gap.
    When no gap reaches ``min_gap``, one sentence says so. The sentences report numbers
    from this test set only and say nothing about causes.
    """
    positive = report.get("positive_label")
    checks = [
        ("equal_opportunity_difference", "true_positive_rate", f"Sensitivity (true positive rate for {positive!r})"),
        ("demographic_parity_difference", "selection_rate", f"The share predicted {positive!r} (selection rate)"),
        ("accuracy_difference", "accuracy", "Accuracy"),
    ]
    gap_sentences, small_sentences = [], []
    for column, col in report["columns"].items():
        for gap_name, metric, subject in checks:
            gap = col["gaps"].get(gap_name)
            extremes = _extremes(col, metric)
            if gap is None or gap < min_gap or extremes is None:
                continue
            low, high = extremes
            gap_sentences.append(f"{subject} is {gap:.2f} lower for {_describe(column, col, low)} "
                                 f"than for {_describe(column, col, high)}.")
        small = [g for g, row in col["groups"].items() if row["small"]]
        if small:
            named = ", ".join(_describe(column, col, g) for g in small)
            small_sentences.append(f"Groups with fewer than {SMALL_GROUP} test rows are too small to judge: {named}.")
    if report["columns"] and not gap_sentences:
        names = ", ".join(report["columns"])
        measures = "sensitivity and selection rate" if positive is not None else "accuracy"
        gap_sentences.append(f"Gaps in {measures} between the groups of {names} are all below {min_gap:.2f} "
                             f"on this test set of {report['n']} rows.")
    return gap_sentences + small_sentences
