"""Labelled data: load with ``datasets``, validate, split, and turn rows into model inputs.

Every check here runs before a model is built, so bad input fails in seconds and names
the file, split, row or column at fault.

Images come from ``datasets`` Image columns, class-subfolder folders (PNG/JPEG through
``imagefolder``; folders holding DICOM files are listed here, as ``imagefolder`` ignores them),
or manifests: a table whose image column holds file paths relative to the manifest's folder;
every such path must resolve inside that folder or ``image_root`` (see :mod:`hf_adapt.images`).
Image files are opened and checked by :mod:`hf_adapt.images` (DICOM through :mod:`hf_adapt.dicom`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hf_adapt.dicom import DICOM_SUFFIXES
from hf_adapt.errors import ConfigError, DataError
from hf_adapt.images import (
    MANIFEST_ROW,
    check_images,
    count_repeated_images,
    image_values,
    is_image_file,
    name_of,
    open_image,
    path_column,
    resolve_paths,
)
from hf_adapt.sources import resolve_source

logger = logging.getLogger("hf_adapt.data")

_TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# the split names data files and folders may use -> the split they are
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation", "test": "test"}
_GROUP_HINTS = ("patient_id", "patient", "subject_id", "customer_id")  # warned about when group_column is unset


@dataclass
class DataSpec:
    """What to load and how to read it; the recipe config's data fields."""

    source: str
    label_column: str = "label"
    data_files: dict[str, str] | None = None
    subset: str | None = None
    revision: str | None = None
    text_column: str | None = None
    image_column: str | None = None
    feature_columns: list[str] | None = None
    text_template: str | None = None
    pixel_shape: list[int] | None = None
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    validation_size: float = 0.15
    test_size: float = 0.3
    seed: int = 42
    max_samples: dict[str, int] = field(default_factory=dict)
    train_fraction: float | None = None  # label budget: this share of each class's training rows
    train_samples_per_class: int | None = None  # label budget: this many training rows per class
    group_column: str | None = None  # e.g. patient_id: no group in two splits
    dicom_window: list[float] | None = None  # DICOM [center, width] after rescale; None: the file's window
    on_bad_image: str = "error"  # "error": stop at the first unreadable image; "skip": drop it, counted
    image_root: str | None = None  # a folder manifest image paths may point into, besides the manifest's own
    class_names: list[str] | None = None  # set by load_labelled, for messages

    @classmethod
    def from_config(cls, cfg: Any) -> DataSpec:
        """The spec of a classification config's data fields (``data``, ``label_column``, ``max_train_samples``
        ...): finetune's, and each continual experience's once its own fields are filled in."""
        limits = {}
        if cfg.max_train_samples:
            limits["train"] = cfg.max_train_samples
        if cfg.max_eval_samples:
            limits.update(validation=cfg.max_eval_samples, test=cfg.max_eval_samples)
        return cls(
            source=cfg.data, label_column=cfg.label_column, data_files=cfg.data_files, subset=cfg.data_subset,
            revision=cfg.data_revision, text_column=cfg.text_column, image_column=cfg.image_column,
            feature_columns=cfg.feature_columns, text_template=cfg.text_template, pixel_shape=cfg.pixel_shape,
            validation_size=cfg.validation_size, test_size=cfg.test_size, seed=cfg.seed, max_samples=limits,
            load_kwargs=cfg.data_kwargs or {}, train_fraction=cfg.train_fraction,
            train_samples_per_class=cfg.train_samples_per_class, group_column=cfg.group_column,
            dicom_window=cfg.dicom_window, on_bad_image=cfg.on_bad_image, image_root=cfg.image_root,
        )


@dataclass
class LabelledData:
    """Validated splits with integer labels, and how their rows become inputs."""

    splits: dict[str, Any]  # "train"/"validation"/"test" -> datasets.Dataset (column "label" is int)
    labels: list[str]
    kind: str  # "table", "text" or "image"
    input_column: str | None
    feature_columns: list[str]
    text_template: str | None
    origin: dict[str, Any]  # source facts for the card: files, split sizes, how splits were made
    dicom_window: list[float] | None = None  # the window every DICOM image is read with (train, test, predict)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def label_counts(self, split: str) -> dict[str, int]:
        counts = {name: 0 for name in self.labels}
        for label_id in self.splits[split]["label"]:
            counts[self.labels[label_id]] += 1
        return counts

    def inputs(self, split: str, input_kind: str) -> list[Any]:
        """Raw model inputs of ``split``: texts (rows rendered) or PIL images."""
        return rows_to_inputs(self.splits[split], input_kind, self)


# ----------------------------------------------------------------------------- loading


def _format_of(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zip")]
    return _TABLE_FORMATS.get(suffixes[-1]) if suffixes else None


def _count_rows_at_least_one(path: Path, fmt: str, encoding: str) -> bool:
    """Whether a data file holds at least one row (datasets fails obscurely on header-only files)."""
    import pandas as pd

    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows > 0
    if fmt == "csv":
        sep = "\t" if ".tsv" in path.suffixes else ","
        try:
            return len(pd.read_csv(path, nrows=1, sep=sep, encoding=encoding)) > 0
        except pd.errors.EmptyDataError:
            return False
    with pd.io.common.get_handle(path, "r", compression="infer", encoding=encoding) as handle:
        head = handle.handle.read(4096).strip()
    return head not in ("", "[]")


def _json_problem(path: Path, lines: list[str]) -> str | None:
    """Where a JSON (lines) file stops being JSON: the first bad line of JSON lines, else the document's error."""
    import json

    first = next((line for line in lines if line.strip()), "")
    try:
        json.loads(first)
    except ValueError:  # not JSON lines: one document (an array), which json can place
        try:
            json.loads("\n".join(lines))
        except ValueError as err:
            return f"data file {path} line {getattr(err, 'lineno', '?')}: not valid JSON ({getattr(err, 'msg', err)})"
        return None
    for number, line in enumerate(lines, 1):
        try:
            if line.strip():
                json.loads(line)
        except ValueError as err:
            return f"data file {path} line {number}: not a JSON object ({getattr(err, 'msg', err)})"
    return None


def read_problem(paths: list[Path], fmt: str, encoding: str = "utf-8") -> str | None:
    """Why text data files failed to load, in words: the first line that is not ``encoding`` text, or
    not JSON. Runs only once a load has failed, so good files are never read twice."""
    import pandas as pd

    if fmt not in ("csv", "json", "text"):
        return None
    for path in paths:
        with pd.io.common.get_handle(path, "rb", compression="infer", is_text=False) as handle:
            raw = handle.handle.read()
        lines = []
        for number, line in enumerate(raw.split(b"\n"), 1):
            try:
                lines.append(line.decode(encoding))
            except UnicodeDecodeError as err:
                return (f"data file {path} line {number} is not {encoding} text (byte {line[err.start]:#04x}); "
                        "save it as UTF-8, or name its encoding with data_kwargs: {encoding: latin-1} (or cp1252, ...)")
        problem = _json_problem(path, lines) if fmt == "json" else None
        if problem:
            return problem
    return None


def _load_files(files: dict[str, str], spec: DataSpec):
    from datasets import load_dataset

    resolved, formats = {}, set()
    encoding = spec.load_kwargs.get("encoding", "utf-8")
    for split, name in files.items():
        path = Path(resolve_source(name, field=f"data_files.{split}"))
        if not path.exists():
            raise DataError(f"data file for split {split!r} not found: {path}")
        fmt = _format_of(path)
        if fmt is None:
            raise DataError(f"data file {path}: unsupported format; use one of {sorted(_TABLE_FORMATS)}")
        try:
            has_rows = path.stat().st_size > 0 and _count_rows_at_least_one(path, fmt, encoding)
        except Exception as err:  # pandas/pyarrow/codec errors on corrupt files
            problem = read_problem([path], fmt, encoding)
            raise DataError(problem or f"data file {path} cannot be read as {fmt}: {type(err).__name__}: {err}") from err
        if not has_rows:
            raise DataError(f"split {split!r} is empty: {path} holds no rows")
        resolved[SPLIT_NAMES.get(split, split)] = str(path)
        formats.add(fmt)
    if len(formats) != 1:
        raise DataError(
            f"data files {sorted(resolved.values())} must share one format among {sorted(set(_TABLE_FORMATS))}"
        )
    kwargs = {"delimiter": "\t"} if any(p.endswith((".tsv", ".tsv.gz")) for p in resolved.values()) else {}
    kwargs.update(spec.load_kwargs)
    fmt = formats.pop()
    try:
        return load_dataset(fmt, data_files=resolved, **kwargs)
    except Exception as err:  # datasets/pyarrow raise many kinds; say which file failed
        problem = read_problem([Path(p) for p in resolved.values()], fmt, encoding)
        raise DataError(problem or f"could not read {sorted(resolved.values())}: {_root_cause(err)}") from err


def _root_cause(err: BaseException) -> str:
    """The innermost cause of a chained error ("An error occurred while generating the dataset" says nothing)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return f"{type(err).__name__}: {err}"


def data_version(spec: DataSpec) -> dict[str, str | None]:
    """What pins the exact data for the card: a sha256 over local files (paths and bytes), or a Hub dataset's commit."""
    sources = list(spec.data_files.values()) if spec.data_files else [spec.source]
    paths = [Path(resolve_source(s, field="data")) for s in sources]
    if all(p.exists() for p in paths):
        digest = hashlib.sha256()
        for root in paths:
            for file in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
                digest.update(f"{file.relative_to(root) if root.is_dir() else file.name}\0".encode())
                with open(file, "rb") as handle:
                    for chunk in iter(lambda: handle.read(1 << 20), b""):  # noqa: B023 - consumed in the loop
                        digest.update(chunk)
        return {"revision": spec.revision, "sha256": digest.hexdigest()}
    try:  # a Hub dataset: the commit the revision resolved to (network errors leave it unknown)
        from huggingface_hub import HfApi

        return {"revision": HfApi().dataset_info(spec.source, revision=spec.revision).sha, "sha256": None}
    except Exception:  # noqa: BLE001 - offline or no such repo: the revision stays as given
        return {"revision": spec.revision, "sha256": None}


def _table_files(spec: DataSpec) -> dict[str, str] | None:
    """The local table files ``spec`` names, by split as given; None for folders of images and Hub ids."""
    if spec.data_files:
        return dict(spec.data_files)
    path = Path(resolve_source(spec.source, field="data"))
    if path.is_file():
        return {"train": str(path)}
    if path.is_dir():
        tables = {p.stem.split(".")[0]: str(p) for p in sorted(path.iterdir()) if _format_of(p)}
        return {k: v for k, v in tables.items() if k in SPLIT_NAMES} or None
    return None


def _manifest_folders(spec: DataSpec) -> dict[str, Path]:
    """Each split's table folder: relative image paths in a manifest start there, and all must stay inside it.

    A folder of class subfolders (DICOM files, listed as paths) bounds its own paths the same way.
    """
    files = _table_files(spec)
    if files is None:
        folder = Path(resolve_source(spec.source, field="data")) if spec.source else None
        return dict.fromkeys(set(SPLIT_NAMES.values()), folder.resolve()) if folder and folder.is_dir() else {}
    return {SPLIT_NAMES.get(split, split): Path(resolve_source(name, field=f"data_files.{split}")).resolve().parent
            for split, name in files.items()}


def _dicom_folder(root: Path):
    """Class subfolders holding DICOM files as a ``DatasetDict`` of (image path, label), or None.

    ``imagefolder`` skips ``.dcm`` files, so such folders are listed here: labels are the
    subfolder names (as for PNG folders), and top-level train/validation/test folders are splits.
    Returns None when no DICOM file is found, so ordinary image folders keep using ``imagefolder``.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    layout = _class_folders(root)
    listed: dict[str, list[tuple[str, str]]] = {}
    for split, class_dirs in layout.items():
        rows = []
        for class_dir in class_dirs:
            rows += [(str(f.resolve()), class_dir.name) for f in sorted(class_dir.rglob("*"))
                     if f.is_file() and is_image_file(f)]
        listed[split] = rows
    # suffix-less files were kept above only if they carry the DICOM marker
    if not any(Path(path).suffix.lower() in (*DICOM_SUFFIXES, "") for rows in listed.values() for path, _ in rows):
        return None
    names = sorted({label for rows in listed.values() for _, label in rows})
    features = Features({"image": Value("string"), "label": ClassLabel(names=names)})
    splits = {}
    for split, rows in listed.items():
        if not rows:
            raise DataError(f"split {split!r} is empty: {root} holds no image files in class subfolders")
        splits[split] = Dataset.from_dict({"image": [r[0] for r in rows], "label": [names.index(r[1]) for r in rows]},
                                          features=features)
    return DatasetDict(splits)


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """Split -> class subfolders of an image folder; top-level train/validation/test folders are splits.

    Refuses a class folder without image files: ``imagefolder`` would drop the class unnoticed.
    """
    folders = _subfolders(root)
    splits = {SPLIT_NAMES[p.name]: p for p in folders} if all(p.name in SPLIT_NAMES for p in folders) else {}
    layout = {split: _subfolders(folder) for split, folder in (splits or {"train": root}).items()}
    empty = [d for dirs in layout.values() for d in dirs
             if not any(f.is_file() and is_image_file(f) for f in d.rglob("*"))]
    if empty:
        raise DataError(f"class folder {empty[0]} holds no image files ({len(empty)} such folder(s)); the class would "
                        "be dropped unnoticed: add its images, or remove the folder")
    return layout


def load_raw(spec: DataSpec):
    """A ``datasets.DatasetDict`` from a file, a folder, ``data_files`` or a Hub id."""
    from datasets import load_dataset

    if spec.data_files:
        return _load_files(spec.data_files, spec)
    source = resolve_source(spec.source, field="data")
    path = Path(source)
    if path.is_file():
        return _load_files({"train": source}, spec)
    if path.is_dir():
        named = _table_files(spec)
        if named:
            return _load_files(named, spec)
        if any(p.is_dir() for p in path.iterdir()):
            dicom = _dicom_folder(path)
            if dicom is not None:
                return dicom
            try:
                return load_dataset("imagefolder", data_dir=str(path))
            except Exception as err:  # datasets raises its own kinds (EmptyDatasetError, ...)
                raise DataError(f"image folder {path} could not be read: {_root_cause(err)}") from err
        raise DataError(f"data folder {path} holds neither split files (train.csv, ...) nor class subfolders")
    if source.startswith(("/", "./", "../", "~")) or path.suffix in _TABLE_FORMATS:
        raise DataError(f"data not found: {source}")
    try:
        return load_dataset(source, spec.subset, revision=spec.revision, **spec.load_kwargs)
    except Exception as err:
        raise DataError(f"could not load dataset {source!r} from the Hub: {err}") from err


# ----------------------------------------------------------------------------- labels


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def label_names(dataset_dict, column: str) -> list[str]:
    """Sorted label names over all splits; refuses missing, mixed-type or continuous labels."""
    first = next(iter(dataset_dict.values()))
    feature = first.features.get(column)
    if feature is not None and type(feature).__name__ == "ClassLabel":
        for split, dataset in dataset_dict.items():
            ids = dataset[column]
            bad = [i for i, v in enumerate(ids) if not 0 <= v < len(feature.names)]
            if bad:
                raise DataError(f"split {split!r} row {bad[0]}: label {ids[bad[0]]} is not one of the "
                                f"{len(feature.names)} classes ({len(bad)} such rows; -1 marks unlabelled rows)")
        return list(feature.names)
    seen: dict[Any, tuple[str, int]] = {}
    for split, dataset in dataset_dict.items():
        for row, value in enumerate(dataset[column]):
            if _is_missing(value):
                raise DataError(f"split {split!r} row {row}: label column {column!r} is empty")
            seen.setdefault(value, (split, row))
    kinds = {("number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__) for v in seen}
    strings = [v for v in seen if isinstance(v, str)]
    if len(kinds) == 1 and strings and 0 < sum(map(_looks_numeric, strings)) < len(strings):
        kinds = {"number", "str"}
    if len(kinds) > 1:
        examples = {}
        for value, where in seen.items():
            kind = "number" if isinstance(value, (int, float)) or (isinstance(value, str) and _looks_numeric(value)) else type(value).__name__
            examples.setdefault(kind, (value, where))
        described = ", ".join(f"{k} {v!r} (split {w[0]!r} row {w[1]})" for k, (v, w) in examples.items())
        raise DataError(f"label column {column!r} mixes types: {described}")
    values = list(seen)
    if any(isinstance(v, float) for v in values):
        if not all(float(v).is_integer() for v in values):
            raise DataError(f"label column {column!r} holds continuous values; classification needs classes")
        values = sorted({int(v) for v in values})
    if len(values) < 2:
        raise DataError(f"label column {column!r} has a single class {values}; need at least 2")
    return [str(v) for v in sorted(values)]


def _encode_labels(dataset, column: str, names: list[str]):
    index = {name: i for i, name in enumerate(names)}

    def encode(batch):
        out = []
        for value in batch[column]:
            key = str(int(value)) if isinstance(value, float) else str(value)
            out.append(index[key])
        return {"label": out}

    if type(dataset.features.get(column)).__name__ == "ClassLabel":
        return dataset.rename_column(column, "label") if column != "label" else dataset
    encoded = dataset.map(encode, batched=True, remove_columns=[column] if column != "label" else None)
    return encoded.cast_column("label", _int_feature())


def _int_feature():
    from datasets import Value

    return Value("int64")


# ----------------------------------------------------------------------------- splits


def _group_ids(values) -> list[str]:
    return [format_value(v) for v in values]


def _group_noun(column: str) -> str:
    """'patient_id' -> 'patient': how messages name one group."""
    for suffix in ("_id", "_ids", "id"):
        if column.lower().endswith(suffix) and len(column) > len(suffix):
            return column[: -len(suffix)].rstrip("_ ")
    return f"{column} group"


def _grouped_split(dataset, fraction: float, seed: int, name: str, column: str):
    """One fold of a seeded, shuffled ``StratifiedGroupKFold`` held out (share ~ 1/round(1/fraction)).

    Falls back to ``GroupShuffleSplit`` (groups kept whole, labels not stratified) only when
    stratification is impossible: a class with a single row, or fewer groups than folds.
    """
    import warnings

    import numpy as np
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    labels = np.asarray(dataset["label"])
    groups = np.asarray(_group_ids(dataset[column]))
    indices = np.arange(len(labels))
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError(f"cannot carve a {name} split grouped by {column!r}: all {len(labels)} rows belong to "
                        f"one {_group_noun(column)} ({groups[0]!r})")
    n_splits = max(2, round(1 / fraction))
    counts = np.bincount(labels)
    if counts[counts > 0].min() >= 2 and n_groups >= n_splits:
        with warnings.catch_warnings():  # "least populated class has only n members": still the best split
            warnings.simplefilter("ignore", UserWarning)
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            keep, held = next(folds.split(indices, labels, groups))
        how = f"1 of {n_splits} label-stratified group folds"
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        keep, held = next(splitter.split(indices, labels, groups))
        how = f"{fraction:.0%} of the {column} groups (not stratified: too few rows or groups per class)"
    if len(keep) == 0 or len(held) == 0:
        raise DataError(f"cannot carve a {name} split grouped by {column!r} out of {n_groups} groups")
    return dataset.select(sorted(keep)), dataset.select(sorted(held)), how


def _check_disjoint_groups(splits: dict[str, Any], column: str) -> None:
    """Named splits must not share a group: a patient in train and test leaks into the score."""
    where: dict[str, list[str]] = {}
    for split, dataset in splits.items():
        for gid in dict.fromkeys(_group_ids(dataset[column])):
            where.setdefault(gid, []).append(split)
    shared = {gid: names for gid, names in where.items() if len(names) > 1}
    if shared:
        gid, names = next(iter(shared.items()))
        raise DataError(
            f"group column {column!r}: {gid!r} appears in splits {names}; {len(shared)} "
            f"{column} value(s) are in more than one split, so the splits are not independent. "
            f"Give every {_group_noun(column)} one split, or give only a train split and let the splits be carved"
        )


def group_folds(labels, groups, k: int, seed: int, names: list[str] | None = None):
    """``k`` seeded, shuffled cross-validation folds as ``[(train_idx, held_idx), ...]`` numpy arrays.

    ``StratifiedKFold`` over ``labels`` when ``groups`` is None; ``StratifiedGroupKFold`` otherwise,
    so no group (patient) is in a fold's train and held-out rows at once. ``names`` maps integer
    labels to class names for messages.

    Raises:
        DataError: ``k`` < 2, or a class with fewer rows (or groups) than ``k``.
    """
    import warnings

    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    if k < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {k}")
    def label_name(value) -> str:
        value = value.item() if hasattr(value, "item") else value
        return repr(names[value]) if names else repr(value)

    indices = np.arange(len(labels))
    if groups is None:
        values, counts = np.unique(labels, return_counts=True)
        for value, count in zip(values, counts):
            if count < k:
                raise DataError(f"{k}-fold cross-validation needs at least {k} rows of every class; class "
                                f"{label_name(value)} has {count}. Lower cv_folds or add rows")
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(indices, labels)
        return [(train, held) for train, held in splits]
    groups = np.asarray(_group_ids(groups))
    if len(groups) != len(labels):
        raise DataError(f"group_folds: {len(groups)} group ids for {len(labels)} labels")
    if len(np.unique(groups)) < k:
        raise DataError(f"{k}-fold cross-validation needs at least {k} groups; the data has "
                        f"{len(np.unique(groups))}. Lower cv_folds")
    for value in np.unique(labels):
        count = len(np.unique(groups[labels == value]))
        if count < k:
            raise DataError(f"{k}-fold grouped cross-validation needs every class in at least {k} groups; class "
                            f"{label_name(value)} is in {count}. Lower cv_folds or add groups")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(indices, labels, groups)
        return [(train, held) for train, held in splits]


def _stratified_split(dataset, fraction: float, seed: int, name: str):
    import numpy as np
    from sklearn.model_selection import train_test_split

    labels = np.asarray(dataset["label"])
    indices = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    try:
        keep, held = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as err:
        raise DataError(f"cannot carve a {fraction:.0%} {name} split out of {len(labels)} rows: {err}") from err
    return dataset.select(sorted(keep)), dataset.select(sorted(held))


def label_budget(labels, fraction: float | None, per_class: int | None, seed: int,
                 names: list[str] | None = None):
    """Row indices of a stratified, seeded label budget: ``per_class`` rows of every class, or
    ``fraction`` of each class's rows (at least one).

    Each class's rows are drawn in one seeded order and the budget takes its head, so smaller
    budgets are subsets of larger ones: a study's label-budget curve compares nested sets.
    """
    import numpy as np

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[rng.permutation(len(rows))]
        if per_class is not None:
            if per_class > len(rows):
                name = names[label] if names else label
                raise DataError(f"train_samples_per_class {per_class} is larger than the {len(rows)} training "
                                f"rows of class {name!r}; lower it, or use train_fraction")
            take = per_class
        else:
            take = max(1, round(fraction * len(rows)))
        chosen.append(rows[:take])
    return np.sort(np.concatenate(chosen))


def make_splits(dataset_dict, spec: DataSpec) -> tuple[dict[str, Any], str]:
    """Named splits as given; missing test/validation carved from train (stratified, seeded).

    With ``spec.group_column`` carved splits keep each group (patient) whole
    (``StratifiedGroupKFold``, one fold held out) and given splits must not share a group.
    Label budgets and ``max_samples`` then pick rows, not groups, inside the train split: they
    cannot mix groups across splits.
    """
    splits = {SPLIT_NAMES.get(k, k): v for k, v in dataset_dict.items()}
    if "train" not in splits:
        raise DataError(f"no train split; found {sorted(splits)}. Name the splits train, validation (or valid, val, "
                        "dev) and test")
    how = []
    column = spec.group_column
    total = len(splits["train"])
    if column and len(splits) > 1:
        _check_disjoint_groups(splits, column)

    def carve(fraction: float, name: str, share: float) -> None:
        if column:
            splits["train"], splits[name], method = _grouped_split(splits["train"], fraction, spec.seed, name, column)
            how.append(f"{name}: {method}, {len(splits[name]) / total:.0%} of the rows (seed {spec.seed})")
        else:
            splits["train"], splits[name] = _stratified_split(splits["train"], fraction, spec.seed, name)
            how.append(f"{name}: stratified {share:.0%} of the data (seed {spec.seed})")

    if "test" not in splits:
        carve(spec.test_size, "test", spec.test_size)
    if "validation" not in splits:
        share = spec.validation_size / (1 - spec.test_size) if len(how) else spec.validation_size
        carve(share, "validation", spec.validation_size)
    if column:
        how.append(f"grouped by {column}: no {_group_noun(column)} in two splits")
    splits = {k: splits[k] for k in ("train", "validation", "test")}
    limit = spec.max_samples.get("train")  # first: the pool a label budget draws from, so budgets stay stratified
    if limit is not None and len(splits["train"]) > limit:
        splits["train"] = splits["train"].shuffle(seed=spec.seed).select(range(limit))
    if spec.train_fraction is not None or spec.train_samples_per_class is not None:
        rows = label_budget(splits["train"]["label"], spec.train_fraction, spec.train_samples_per_class, spec.seed,
                            spec.class_names)
        splits["train"] = splits["train"].select(rows)
        budget = (f"{spec.train_samples_per_class} per class" if spec.train_samples_per_class is not None
                  else f"{spec.train_fraction:.0%} of each class")
        how.append(f"train: label budget of {budget} (stratified, seed {spec.seed})")
    for name, dataset in splits.items():
        limit = spec.max_samples.get(name)
        if limit is not None and len(dataset) > limit:
            splits[name] = dataset.shuffle(seed=spec.seed).select(range(limit))
        if len(splits[name]) == 0:
            raise DataError(f"split {name!r} is empty")
    return splits, "; ".join(how) or "named splits used as given"


# ----------------------------------------------------------------------------- inputs


def _detect_kind(dataset, spec: DataSpec) -> tuple[str, str | None, list[str]]:
    columns = [c for c in dataset.column_names if c != "label"]
    image_types = {"Image"}
    if spec.pixel_shape:
        features = spec.feature_columns or columns
        expected = math.prod(spec.pixel_shape)
        if len(features) != expected:
            raise DataError(f"pixel_shape {spec.pixel_shape} needs {expected} pixel columns, found {len(features)}")
        return "image", None, features
    if spec.image_column or any(type(dataset.features[c]).__name__ in image_types for c in columns):
        column = spec.image_column or next(c for c in columns if type(dataset.features[c]).__name__ in image_types)
        if column not in columns:
            raise DataError(f"image column {column!r} not found; columns are {columns}")
        return "image", column, []
    if spec.text_column:
        if spec.text_column not in columns:
            raise DataError(f"text column {spec.text_column!r} not found; columns are {columns}")
        return "text", spec.text_column, []
    named = template_columns(spec.text_template)
    if named and not spec.feature_columns and any(c not in columns for c in named):
        raise DataError(
            f"text_template names columns {[c for c in named if c not in columns]} that the data lacks "
            f"(columns: {columns}); pass --text_template null to render every column as 'column: value', "
            "or a template over your columns"
        )
    features = spec.feature_columns or named or [c for c in columns if c != spec.group_column]
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"feature columns {missing} not found; columns are {columns}")
    if spec.group_column in features:
        raise DataError(f"group column {spec.group_column!r} is also a model input; an id that groups the splits "
                        "must not be a feature (the model would learn who, not what): drop it from "
                        "feature_columns / text_template")
    return "table", None, features


def template_columns(template: str | None) -> list[str]:
    """The columns a ``str.format`` template names, in order of first use."""
    if not template:
        return []
    import string

    names = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    return list(dict.fromkeys(name.split(".")[0].split("[")[0] for name in names))


def format_value(value: Any) -> str:
    if _is_missing(value):
        return "missing"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render_row(row: dict[str, Any], feature_columns: list[str], template: str | None) -> str:
    """A table row as text: the template with ``{column}`` fields, or ``column: value`` pairs."""
    values = {c: format_value(row[c]) for c in feature_columns}
    if template is None:
        return ", ".join(f"{column}: {value}" for column, value in values.items())
    return template.format_map(values)


def rows_to_inputs(dataset, input_kind: str, data: LabelledData) -> list[Any]:
    if data.kind == "image" and input_kind != "image":
        raise DataError(f"the data holds images but the backbone takes {input_kind} inputs")
    if data.kind != "image" and input_kind == "image":
        raise DataError("the backbone takes images; set pixel_shape for pixel tables or point data at images")
    if data.kind == "image" and data.input_column is None:  # pixel table
        import numpy as np
        from PIL import Image

        shape = tuple(data.origin["pixel_shape"])
        table = dataset.select_columns(data.feature_columns).to_pandas().to_numpy(dtype=np.float32)
        return [Image.fromarray(np.clip(r, 0, 255).astype(np.uint8).reshape(shape)) for r in table]
    if data.kind == "image":
        return [open_image(v, f"row {i} column {data.input_column!r} ({name_of(v)})", data.dicom_window)
                for i, v in enumerate(image_values(dataset, data.input_column))]
    if data.kind == "text":
        texts = dataset[data.input_column]
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"row {row}: text column {data.input_column!r} is empty or not text")
        return list(texts)
    return [render_row(row, data.feature_columns, data.text_template) for row in dataset]


def _delimiter_hint(columns: list[str]) -> str:
    """When a whole header landed in one column, the file is separated by another character: say which."""
    if len(columns) == 1:
        for sep, shown in ((";", ";"), ("\t", "\\t"), ("|", "|")):
            if sep in columns[0]:
                return (f". The header is one column holding {shown!r}: if the file is separated by {shown!r}, pass "
                        f"data_kwargs: {{delimiter: {shown!r}}}")
    return ""


def _check_unseen_labels(encoded: dict[str, Any], names: list[str]) -> None:
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


def _check_texts(raw: dict[str, Any], column: str) -> None:
    """Every row of the text column holds text: an empty input would be trained on as a silent blank."""
    for split, dataset in raw.items():
        bad = [(row, v) for row, v in enumerate(dataset[column]) if not isinstance(v, str) or not v.strip()]
        if bad:
            row, value = bad[0]
            what = ("is empty" if isinstance(value, str) or _is_missing(value)
                    else f"holds {type(value).__name__} {value!r}, not text")
            raise DataError(f"split {split!r} row {row}: text column {column!r} {what} ({len(bad)} such row(s)); "
                            "fill them in or drop them")


def _check_numbers(raw: dict[str, Any], features: list[str], allow_missing: bool) -> None:
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


def _check_groups(raw, column: str) -> None:
    for split, dataset in raw.items():
        if column not in dataset.column_names:
            raise DataError(f"group column {column!r} not found in split {split!r}; columns are {dataset.column_names}")
        for row, value in enumerate(dataset[column]):
            if _is_missing(value) or (isinstance(value, str) and not value.strip()):
                raise DataError(f"split {split!r} row {row}: group column {column!r} is empty; every row needs a group id")


def check_dicom_window(window: list[float] | None) -> None:
    """A DICOM window is [center, width] with a positive width (None: the files' own)."""
    if window is not None and (len(window) != 2 or not float(window[1]) > 0):
        raise ConfigError(f"dicom_window must be [center, width] with width > 0, got {window}")


def _image_root(spec: DataSpec) -> str | None:
    """``image_root`` as an absolute folder (``pkg://`` and ``~`` expanded), or None when unset."""
    if spec.image_root is None:
        return None
    root = Path(resolve_source(spec.image_root, field="image_root")).expanduser()
    if not root.is_dir():
        raise ConfigError(f"image_root {root} is not a folder; it names the folder manifest image paths may point "
                          "into besides the manifest's own")
    return str(root.resolve())


def _check_spec(spec: DataSpec) -> None:
    if spec.on_bad_image not in ("error", "skip"):
        raise ConfigError(f"on_bad_image must be 'error' or 'skip', got {spec.on_bad_image!r}")
    check_dicom_window(spec.dicom_window)
    _image_root(spec)


def load_labelled(spec: DataSpec) -> LabelledData:
    """Load, validate and split the data a classification recipe trains on."""
    _check_spec(spec)
    raw = load_raw(spec)
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise DataError(f"split {split!r} of {spec.source} is empty")
        if spec.label_column not in dataset.column_names:
            raise DataError(
                f"label column {spec.label_column!r} not found in split {split!r}; columns are {dataset.column_names}"
                + _delimiter_hint(dataset.column_names)
            )
    if spec.group_column:
        _check_groups(raw, spec.group_column)
    else:
        ids = [c for c in next(iter(raw.values())).column_names if c.lower() in _GROUP_HINTS]
        if ids:
            logger.warning("the data has a %r column but no group_column: splits are made by row, so one %s's rows "
                           "can be in train and in test; set group_column: %s to keep each in one split",
                           ids[0], ids[0], ids[0])
    names = label_names(raw, spec.label_column)
    encoded = {split: _encode_labels(ds, spec.label_column, names) for split, ds in raw.items()}
    _check_unseen_labels(encoded, names)
    folders, image_root = _manifest_folders(spec), _image_root(spec)
    first = next(iter(encoded))
    paths = path_column(encoded[first], spec.image_column, folders.get(SPLIT_NAMES.get(first, first)), image_root)
    repeated = 0
    if paths is not None:  # a manifest: image paths, relative to each split file's folder and confined to it
        spec = replace(spec, image_column=paths)
        encoded = {split: resolve_paths(ds, paths, folders.get(SPLIT_NAMES.get(split, split)), image_root, split)
                   if paths in ds.column_names else ds for split, ds in encoded.items()}
        repeated = count_repeated_images(encoded, paths)
    splits, how = make_splits(encoded, replace(spec, class_names=names))
    kind, column, features = _detect_kind(splits["train"].remove_columns(
        [c for c in (MANIFEST_ROW,) if c in splits["train"].column_names]), spec)
    for split, dataset in splits.items():  # every split must carry the columns the inputs need
        absent = [c for c in (features + ([column] if column else [])) if c not in dataset.column_names]
        if absent:
            raise DataError(f"split {split!r} lacks column(s) {absent}; columns are {dataset.column_names}")
    if kind == "text":  # checked on the rows as the files hold them, so messages name a file's row
        _check_texts(encoded, column)
    elif column is None:  # a table rendered as text, or pixel columns
        _check_numbers(encoded, features, allow_missing=kind == "table")
    skipped = check_images(splits, column, spec.on_bad_image, spec.dicom_window) if kind == "image" and column is not None else {}
    splits = {k: v.remove_columns([MANIFEST_ROW]) if MANIFEST_ROW in v.column_names else v for k, v in splits.items()}
    if spec.text_template is not None and kind == "table":
        try:
            render_row(splits["train"][0], features, spec.text_template)
        except (KeyError, IndexError, ValueError) as err:
            raise DataError(f"text_template {spec.text_template!r} does not fit columns {features}: {err}") from err
    origin = {
        "source": spec.data_files or spec.source,
        **data_version(spec),
        "splits": {k: len(v) for k, v in splits.items()},
        "split_method": how,
        "pixel_shape": spec.pixel_shape,
        "grouped_by": spec.group_column,
        "dicom_window": list(spec.dicom_window) if spec.dicom_window is not None else None,
        "skipped_images": skipped,
        "repeated_images": repeated,
    }
    window = origin["dicom_window"]
    data = LabelledData(splits, names, kind, column, features, spec.text_template, origin, dicom_window=window)
    origin["label_counts"] = {split: data.label_counts(split) for split in splits}
    return data
