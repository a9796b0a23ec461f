"""Checks on loaded rows before anything trains: each names the split, row and column at fault."""

from __future__ import annotations

import logging
from typing import Any

from hf_adapt.data.files import SPLIT_NAMES, image_root_folder
from hf_adapt.data.rows import is_missing
from hf_adapt.data.spec import DataSpec
from hf_adapt.errors import ConfigError, DataError

logger = logging.getLogger("hf_adapt.data")


def delimiter_hint(columns: list[str]) -> str:
    """When a whole header landed in one column, the file is separated by another character: say which."""
    if len(columns) == 1:
        for sep, shown in ((";", ";"), ("\t", "\\t"), ("|", "|")):
            if sep in columns[0]:
                return (f". The header is one column holding {shown!r}: if the file is separated by {shown!r}, pass "
                        f"data_kwargs: {{delimiter: {shown!r}}}")
    return ""


def check_unseen_labels(encoded: dict[str, Any], names: list[str]) -> None:
    """A validation or test label that the train split never has: no model can learn it, and scores would hide it."""
    named = {SPLIT_NAMES.get(split, split): split for split in encoded}
    if "train" not in named:
        return
    seen = set(encoded[named["train"]]["label"])
    for split, dataset in encoded.items():
        if split == named["train"]:
            continue
        unseen = [(row, label) for row, label in enumerate(dataset["label"]) if label not in seen]
        if unseen:
            row, label = unseen[0]
            raise DataError(f"split {split!r} row {row}: label {names[label]!r} never appears in the train split "
                            f"({len(unseen)} such row(s) in {split!r}); a model cannot learn a class it never trains "
                            "on: add train rows of it, or drop these rows")


def check_texts(raw: dict[str, Any], column: str) -> None:
    """Every row of the text column holds text: an empty input would be trained on as a silent blank."""
    for split, dataset in raw.items():
        bad = [(row, v) for row, v in enumerate(dataset[column]) if not isinstance(v, str) or not v.strip()]
        if bad:
            row, value = bad[0]
            what = ("is empty" if isinstance(value, str) or is_missing(value)
                    else f"holds {type(value).__name__} {value!r}, not text")
            raise DataError(f"split {split!r} row {row}: text column {column!r} {what} ({len(bad)} such row(s)); "
                            "fill them in or drop them")


def check_numbers(raw: dict[str, Any], features: list[str], allow_missing: bool) -> None:
    """Numeric inputs are finite. ``inf`` means nothing to a model and fails here, naming the cell; an empty
    cell of a table is rendered as 'missing' (``format_value``), with one warning that counts them (pixels
    have no 'missing', so there it fails too)."""
    import numpy as np

    missing: dict[str, list[int]] = {}
    for split, dataset in raw.items():
        numeric = [c for c in features if str(getattr(dataset.features.get(c), "dtype", "")).startswith("float")]
        if not numeric:
            continue
        table = dataset.select_columns(numeric).to_pandas()
        for column in numeric:
            values = table[column].to_numpy(dtype=np.float64)
            bad = np.flatnonzero(np.isinf(values) if allow_missing else ~np.isfinite(values))
            if len(bad):
                raise DataError(f"split {split!r} row {bad[0]}: column {column!r} is {values[bad[0]]} "
                                f"({len(bad)} such row(s)); inputs must be finite numbers"
                                + (": leave the cell empty to mean missing" if allow_missing else ""))
            counts = missing.setdefault(column, [0, 0])
            counts[0] += int(np.isnan(values).sum())
            counts[1] += len(values)
    empty = {column: n for column, n in missing.items() if n[0]}
    if empty:
        logger.warning("empty numeric cells are rendered as 'missing' in the text the model reads: %s",
                       ", ".join(f"column {c!r} {n} of {total} rows" for c, (n, total) in empty.items()))


def check_groups(raw, column: str) -> None:
    for split, dataset in raw.items():
        if column not in dataset.column_names:
            raise DataError(f"group column {column!r} not found in split {split!r}; columns are {dataset.column_names}")
        for row, value in enumerate(dataset[column]):
            if is_missing(value) or (isinstance(value, str) and not value.strip()):
                raise DataError(f"split {split!r} row {row}: group column {column!r} is empty; every row needs a group id")


def check_dicom_window(window: list[float] | None) -> None:
    """A DICOM window is [center, width] with a positive width (None: the files' own)."""
    if window is not None and (len(window) != 2 or not float(window[1]) > 0):
        raise ConfigError(f"dicom_window must be [center, width] with width > 0, got {window}")



def check_spec(spec: DataSpec) -> None:
    if spec.on_bad_image not in ("error", "skip"):
        raise ConfigError(f"on_bad_image must be 'error' or 'skip', got {spec.on_bad_image!r}")
    check_dicom_window(spec.dicom_window)
    image_root_folder(spec)

