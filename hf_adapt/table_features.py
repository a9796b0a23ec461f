"""Hybrid table models: a row's columns enter the head beside the pooled text embedding.

A table scored by a language model alone loses what a scorecard keeps: a number's magnitude and order.
``table_features`` gives the text model a second input, the row's columns encoded as a scorecard encodes
them, read by two paths beside the text path:

- **wide**: one linear layer over the encoded columns, set to logistic regression fitted on the same
  encoding of the training rows (scikit-learn, L2, C=1) and kept there;
- **deep**: a small MLP over the same encoding (its first layer learns an embedding of every category),
  whose last layer starts at zero.

The logits are the sum of the text head's, the wide path's and the deep path's: one linear read of the
concatenated pooled text embedding, table embedding and features. The text head also starts at zero, so
the untrained model *is* the fitted logistic regression, and training adds what the text and the deep
path find beyond it: they learn the residual the linear model leaves. (Training the wide path too moved it
away from the regularised fit and scored lower on German Credit's cross-validation folds on 4 of 5.)

The encoding (:class:`TableEncoder`, ``table_features.json`` beside the adapter) is fitted on the training
rows only: numbers are imputed with the training median and standardised, with a was-missing indicator
for every column that had missing values in training; categories (text and true/false columns) are
one-hot over the training vocabulary. At prediction a missing number takes the training median (flagged
where training saw missing values) and a category never seen in training is encoded as "unknown" (all
zeros); a row that lacks a column is refused by name (:mod:`hf_adapt.inputs`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hf_adapt.data.rows import is_missing
from hf_adapt.errors import ConfigError, DataError, ModelError
from hf_adapt.tasks import fit_linear  # noqa: F401 - the classifier's wide path, where hybrids have long found it

logger = logging.getLogger("hf_adapt.table_features")

FILE = "table_features.json"
FORMAT = 1  # table_features.json's layout; a file of another is refused
_NEITHER = ("table_features: column(s) {} hold values that are neither numbers nor categories (dates, lists, all "
            "empty ...); leave them out of table_features")
DEEP_WIDTH = 64  # hidden units of the deep path
UNKNOWN_RULE = ("a missing number takes the training median (with its was-missing indicator where training had "
                "missing values); a category not seen in training is encoded as unknown (no category); a row that "
                "lacks a column is refused, naming it")


def resolve_columns(table_features: str | list | None, data) -> list[str]:
    """The columns ``table_features`` names for ``data`` (a :class:`~hf_adapt.data.LabelledData`): ``auto``, a
    table's feature columns (none for texts and images); ``none``, none; a list, those columns, checked."""
    if table_features in (None, "none"):
        return []
    if table_features == "auto":
        return list(data.feature_columns) if data.kind == "table" else []
    if not isinstance(table_features, list) or not table_features or not all(isinstance(c, str) for c in table_features):
        raise ConfigError(f"table_features must be auto, none or a non-empty list of column names, got {table_features!r}")
    if data.kind == "image":
        raise ConfigError("table_features applies to table and text data; this data holds images")
    columns = data.splits["train"].column_names
    unknown = [c for c in table_features if c not in columns]
    if unknown:
        raise ConfigError(f"table_features names column(s) {unknown} that the data lacks (columns: {columns})")
    reserved = [c for c in table_features if c in ("label", data.input_column, data.origin.get("grouped_by"))]
    if reserved:
        raise ConfigError(f"table_features may not name the label, the text column or the group column (an id that "
                          f"groups the splits: the model would learn who, not what): {reserved}")
    absent = {split: [c for c in table_features if c not in ds.column_names] for split, ds in data.splits.items()}
    if any(absent.values()):
        raise ConfigError(f"table_features: every split must carry the columns; missing "
                          f"{ {k: v for k, v in absent.items() if v} }")
    if len(set(table_features)) != len(table_features):
        raise ConfigError(f"table_features names a column twice: {table_features}")
    return list(table_features)


def column_kinds(dataset, columns: list[str]) -> dict[str, str]:
    """How each column of a ``datasets.Dataset`` is read: "number", "text", "bool" or "other"."""
    kinds = {}
    for column in columns:
        dtype = str(getattr(dataset.features[column], "dtype", ""))
        kinds[column] = ("bool" if dtype == "bool" else "number" if dtype.startswith(("int", "uint", "float"))
                         else "text" if dtype in ("string", "large_string") else "other")
    return kinds


def category(value: Any) -> str:
    """A category as the encoder keys it: numbers written as training wrote them (1.0 is "1"); missing (None, NaN, a
    blank string, as a served row's empty cell is read) as ``"missing"``."""
    from hf_adapt.data import format_value

    return "missing" if isinstance(value, str) and not value.strip() else format_value(value)


@dataclass
class TableEncoder:
    """The fitted encoding of a row's columns: standardised numbers, was-missing indicators, one-hot categories."""

    numeric: list[dict[str, Any]] = field(default_factory=list)  # {"column", "median", "mean", "std"}
    indicators: list[dict[str, Any]] = field(default_factory=list)  # {"column", "mean", "std"}
    categorical: list[dict[str, Any]] = field(default_factory=list)  # {"column", "categories": [...]}

    @property
    def columns(self) -> list[str]:
        """The columns read, in the order their features come."""
        return list(dict.fromkeys(e["column"] for e in self.numeric + self.categorical))

    @property
    def features(self) -> list[tuple[str, str]]:
        """``(column, feature name)`` of every encoded position, in order."""
        return ([(e["column"], e["column"]) for e in self.numeric]
                + [(e["column"], f"{e['column']} missing") for e in self.indicators]
                + [(e["column"], f"{e['column']}={value}") for e in self.categorical for value in e["categories"]])

    @property
    def width(self) -> int:
        return len(self.numeric) + len(self.indicators) + sum(len(e["categories"]) for e in self.categorical)

    @classmethod
    def fit(cls, rows: list[dict[str, Any]], kinds: dict[str, str]) -> TableEncoder:
        """Fit on training rows (dicts holding every column of ``kinds``); a column of another kind is refused."""
        encoder = cls()
        for column, kind in kinds.items():
            values = [row[column] for row in rows]
            if kind == "number":
                numbers = np.array([np.nan if is_missing(v) else float(v) for v in values], dtype=np.float64)
                missing = np.isnan(numbers)
                if np.isinf(numbers).any():
                    raise DataError(f"table_features: column {column!r} holds an infinite number in training row "
                                    f"{int(np.flatnonzero(np.isinf(numbers))[0])}; numbers must be finite")
                if missing.all():
                    raise DataError(f"table_features: column {column!r} is empty in every training row")
                median = float(np.median(numbers[~missing]))
                filled = np.where(missing, median, numbers)
                encoder.numeric.append({"column": column, "median": median, **_moments(filled)})
                if missing.any():
                    encoder.indicators.append({"column": column, **_moments(missing.astype(np.float64))})
            elif kind in ("text", "bool"):
                categories = sorted({category(v) for v in values})
                if len(categories) > 100 and len(categories) > len(rows) // 2:
                    logger.warning("table_features: column %r has %d distinct values in %d training rows: an id or "
                                   "free text, which a one-hot encoding cannot generalise from", column,
                                   len(categories), len(rows))
                encoder.categorical.append({"column": column, "categories": categories})
            else:
                raise DataError(_NEITHER.format([column]))
        return encoder

    def encode(self, rows: list[dict[str, Any]]) -> np.ndarray:
        """The ``rows x width`` float32 features of ``rows`` (dicts over :attr:`columns`)."""
        out = np.zeros((len(rows), self.width), dtype=np.float32)
        at = 0
        for entry in self.numeric:
            numbers = np.array([entry["median"] if is_missing(r[entry["column"]]) else float(r[entry["column"]])
                                for r in rows], dtype=np.float64)
            out[:, at] = (numbers - entry["mean"]) / entry["std"]
            at += 1
        for entry in self.indicators:
            missing = np.array([is_missing(r[entry["column"]]) for r in rows], dtype=np.float64)
            out[:, at] = (missing - entry["mean"]) / entry["std"]
            at += 1
        for entry in self.categorical:
            index = {value: i for i, value in enumerate(entry["categories"])}
            for i, row in enumerate(rows):
                j = index.get(category(row[entry["column"]]))
                if j is not None:  # unknown: no category
                    out[i, at + j] = 1.0
            at += len(entry["categories"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "hf_adapt.table_features", "format": FORMAT, "numeric": self.numeric,
                "indicators": self.indicators, "categorical": self.categorical, "unknown": UNKNOWN_RULE}

    def save(self, directory: str | Path) -> None:
        from hf_adapt.outputs import write_json

        write_json(Path(directory) / FILE, self.to_dict())

    @classmethod
    def load(cls, directory: str | Path) -> TableEncoder:
        """The encoder saved in ``directory``; a missing or malformed file is refused, naming it."""
        from hf_adapt.run_record import read_object

        path = Path(directory) / FILE
        if not path.is_file():
            raise ModelError(f"{path} is missing: this model reads table features and needs the encoding fitted "
                             "in training")
        raw = read_object(path)
        if raw.get("format") != FORMAT:
            raise ModelError(f"{path} is table-feature encoding format {raw.get('format')!r}; this hf-adapt reads "
                             f"format {FORMAT}")
        try:
            encoder = cls(list(raw["numeric"]), list(raw["indicators"]), list(raw["categorical"]))
            for entry in encoder.numeric:
                float(entry["median"]), float(entry["mean"]), float(entry["std"]), str(entry["column"])
            for entry in encoder.indicators:
                float(entry["mean"]), float(entry["std"]), str(entry["column"])
            for entry in encoder.categorical:
                str(entry["column"]), [str(c) for c in entry["categories"]]
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{path} is not a table-feature encoding: {type(err).__name__}: {err}") from err
        return encoder


def _moments(values: np.ndarray) -> dict[str, float]:
    """Mean and standard deviation as scikit-learn's StandardScaler takes them (a constant column: std 1)."""
    std = float(values.std())
    return {"mean": float(values.mean()), "std": std if std > 0 else 1.0}


def row_columns(data_info: dict[str, Any]) -> list[str]:
    """The columns a row given to a model carries, from ``hf_adapt.json``'s data block: a table's feature columns,
    plus a hybrid's table features (after its text column, for text data); none for other text and image models."""
    table = list(data_info.get("table_features") or [])
    if data_info.get("kind") == "table":
        text = list(data_info.get("feature_columns") or [])
    else:
        text = [data_info["input_column"]] if table and data_info.get("input_column") else []
    return list(dict.fromkeys(text + table))


def row_kinds(data_info: dict[str, Any]) -> dict[str, str]:
    """How training read each of :func:`row_columns` ("number", "text", "bool"), where recorded."""
    text = {data_info["input_column"]: "text"} if data_info.get("kind") == "text" and data_info.get("input_column") else {}
    return {**(data_info.get("column_kinds") or {}), **(data_info.get("table_column_kinds") or {}), **text}


def row_key(row: dict[str, Any], columns: list[str]) -> str:
    """A row as one string (its columns rendered ``column: value``): what keys a hybrid row's random draws
    (:mod:`hf_adapt.fairness`), the same in training and serving."""
    from hf_adapt.data import render_row

    return render_row(row, columns, None)


@dataclass
class TableInputs:
    """What a hybrid run reads of each row: the table columns (and how each is read) and the row's text."""

    columns: list[str]  # the table-feature columns
    kinds: dict[str, str]  # column -> "number", "text", "bool"
    text_column: str | None  # a free-text column; None: the row rendered with the text template
    feature_columns: list[str]  # the columns the rendered text shows
    template: str | None

    @classmethod
    def of(cls, table_features: str | list | None, data) -> TableInputs | None:
        """The hybrid inputs ``table_features`` asks of ``data`` (None: a text-only model)."""
        columns = resolve_columns(table_features, data)
        if not columns:
            return None
        kinds = column_kinds(data.splits["train"], columns)
        odd = sorted(c for c, k in kinds.items() if k == "other")
        if odd:
            raise DataError(_NEITHER.format(odd))
        return cls(columns, kinds, data.input_column if data.kind == "text" else None,
                   [] if data.kind == "text" else list(data.feature_columns), data.text_template)

    @property
    def row_columns(self) -> list[str]:
        """Every column a row must carry: the text's and the table features'."""
        text = [self.text_column] if self.text_column else self.feature_columns
        return list(dict.fromkeys(text + self.columns))

    def rows(self, dataset) -> list[dict[str, Any]]:
        """A ``datasets.Dataset``'s rows as the model reads them: dicts over :attr:`row_columns`."""
        return dataset.select_columns(self.row_columns).to_list()

    def data_info(self) -> dict[str, Any]:
        """What ``hf_adapt.json``'s data block records of them."""
        return {"table_features": self.columns, "table_column_kinds": self.kinds}
