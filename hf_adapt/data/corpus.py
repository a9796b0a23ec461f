"""Unlabelled text for language modelling: documents from ``.txt`` files (one a line), tables or Hub datasets,
empty rows dropped with one warning, split by document. Read through the same loaders as labelled data."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_adapt.data.files import SPLIT_NAMES, data_version, load_raw, read_problem
from hf_adapt.data.spec import DataSpec
from hf_adapt.errors import DataError
from hf_adapt.sources import resolve_source

logger = logging.getLogger("hf_adapt.data")


@dataclass
class TextCorpus:
    """Documents per split (train/validation/test), in the column ``column``."""

    splits: dict[str, Any]
    column: str
    origin: dict[str, Any] = field(default_factory=dict)


def _is_text_file(path: Path) -> bool:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zip")]
    return bool(suffixes) and suffixes[-1] == ".txt"


def _text_files(spec: DataSpec) -> dict[str, Path] | None:
    """Split name -> ``.txt`` file when the data is plain text (one document a line); None otherwise."""
    if spec.data_files:
        paths = {split: Path(resolve_source(name, field=f"data_files.{split}"))
                 for split, name in spec.data_files.items()}
    else:
        path = Path(resolve_source(spec.source, field="data"))
        paths = {"train": path}
        if path.is_dir():
            paths = {p.name.split(".")[0]: p for p in sorted(path.iterdir())
                     if _is_text_file(p) and p.name.split(".")[0] in SPLIT_NAMES}
    texts = {split: path for split, path in paths.items() if _is_text_file(path)}
    if not texts:
        return None
    if len(texts) != len(paths):
        raise DataError(f"data files {sorted(str(p) for p in paths.values())} mix .txt and other formats; use one")
    for split, path in texts.items():
        if not path.is_file():
            raise DataError(f"data file for split {split!r} not found: {path}")
        if path.stat().st_size == 0:
            raise DataError(f"split {split!r} is empty: {path} holds no lines")
    return {SPLIT_NAMES.get(split, split): path for split, path in texts.items()}


def _load_documents(spec: DataSpec):
    texts = _text_files(spec)
    if texts is None:
        return load_raw(spec)
    from datasets import load_dataset

    try:
        return load_dataset("text", data_files={k: str(v) for k, v in texts.items()}, **spec.load_kwargs)
    except Exception as err:  # datasets raises many kinds; say which files failed
        problem = read_problem(list(texts.values()), "text", spec.load_kwargs.get("encoding", "utf-8"))
        raise DataError(problem or f"could not read text files {sorted(map(str, texts.values()))}: {err}") from err


def _keep_rows(texts: list[Any], column: str, split: str) -> list[int]:
    """Rows that hold text; refuses values that are not text at all (e.g. a numeric column)."""
    keep = []
    for row, value in enumerate(texts):
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        if not isinstance(value, str):
            raise DataError(f"split {split!r} row {row}: text column {column!r} holds {type(value).__name__} "
                            f"{value!r}, not text")
        if value.strip():
            keep.append(row)
    return keep


def _carve(dataset, share: float, seed: int, name: str):
    try:
        parts = dataset.train_test_split(test_size=share, seed=seed, shuffle=True)
    except ValueError as err:
        raise DataError(f"cannot carve a {share:.0%} {name} split out of {len(dataset)} documents: {err}") from err
    return parts["train"].flatten_indices(), parts["test"].flatten_indices()


def _at_most(dataset, limit: int | None, seed: int):
    """A seeded random ``limit`` documents of ``dataset`` (all of them when it has no more)."""
    if limit is None or len(dataset) <= limit:
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit)).flatten_indices()


def load_corpus(spec: DataSpec) -> TextCorpus:
    """Load documents, check the text column, drop empty rows (with one warning), split by document."""
    column = spec.text_column or "text"
    source = spec.data_files or spec.source
    raw = _load_documents(spec)
    splits, dropped = {}, {}
    for split, dataset in raw.items():
        if column not in dataset.column_names:
            raise DataError(f"text column {column!r} not found in split {split!r} of {source}; "
                            f"columns are {dataset.column_names}")
        texts = dataset[column]
        keep = _keep_rows(texts, column, split)
        if not keep:
            raise DataError(f"text column {column!r} is empty in split {split!r} of {source}: none of its "
                            f"{len(texts)} rows holds text")
        if len(keep) < len(texts):
            dropped[split] = len(texts) - len(keep)
            dataset = dataset.select(keep)
        splits[SPLIT_NAMES.get(split, split)] = dataset.select_columns([column])
    if dropped:
        logger.warning("dropped %d rows whose text column %r is empty or missing (%s)", sum(dropped.values()), column,
                       ", ".join(f"{split}: {n}" for split, n in dropped.items()))
    if "train" not in splits:
        raise DataError(f"no train split in {source}; found {sorted(splits)}")
    how, remaining = [], 1.0  # shares are of all documents: carve each out of what is left
    for name, size in (("test", spec.test_size), ("validation", spec.validation_size)):
        if name not in splits:
            splits["train"], splits[name] = _carve(splits["train"], size / remaining, spec.seed, name)
            remaining -= size
            how.append(f"{name}: random {size:.0%} of the documents (seed {spec.seed})")
    splits = {name: _at_most(splits[name], spec.max_samples.get(name), spec.seed)
              for name in ("train", "validation", "test")}
    origin = {
        "source": source,
        **data_version(spec),
        "text_column": column,
        "splits": {name: len(dataset) for name, dataset in splits.items()},
        "split_method": "; ".join(how) or "named splits used as given",
        "dropped_empty_rows": dropped,
    }
    return TextCorpus(splits, column, origin)
