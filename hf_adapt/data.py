"""Labelled data: load with ``datasets``, validate, split, and turn rows into model inputs.

Every check here runs before a model is built, so bad input fails in seconds and names
the file, split, row or column at fault.
"""

from __future__ import annotations

import hashlib
import io
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hf_adapt.errors import DataError
from hf_adapt.sources import resolve_source

_TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation", "test": "test"}


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
    class_names: list[str] | None = None  # set by load_labelled, for messages


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


def _count_rows_at_least_one(path: Path, fmt: str) -> bool:
    """Whether a data file holds at least one row (datasets fails obscurely on header-only files)."""
    import pandas as pd

    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows > 0
    if fmt == "csv":
        sep = "\t" if ".tsv" in path.suffixes else ","
        try:
            return len(pd.read_csv(path, nrows=1, sep=sep)) > 0
        except pd.errors.EmptyDataError:
            return False
    with pd.io.common.get_handle(path, "r", compression="infer") as handle:
        head = handle.handle.read(4096).strip()
    return head not in ("", "[]")


def _load_files(files: dict[str, str], spec: DataSpec):
    from datasets import load_dataset

    resolved, formats = {}, set()
    for split, name in files.items():
        path = Path(resolve_source(name, field=f"data_files.{split}"))
        if not path.exists():
            raise DataError(f"data file for split {split!r} not found: {path}")
        fmt = _format_of(path)
        if fmt is None:
            raise DataError(f"data file {path}: unsupported format; use one of {sorted(_TABLE_FORMATS)}")
        try:
            has_rows = path.stat().st_size > 0 and _count_rows_at_least_one(path, fmt)
        except Exception as err:  # pandas/pyarrow/codec errors on corrupt files
            raise DataError(f"data file {path} cannot be read as {fmt}: {type(err).__name__}: {err}") from err
        if not has_rows:
            raise DataError(f"split {split!r} is empty: {path} holds no rows")
        resolved[_SPLIT_NAMES.get(split, split)] = str(path)
        formats.add(fmt)
    if len(formats) != 1:
        raise DataError(
            f"data files {sorted(resolved.values())} must share one format among {sorted(set(_TABLE_FORMATS))}"
        )
    kwargs = {"delimiter": "\t"} if any(p.endswith((".tsv", ".tsv.gz")) for p in resolved.values()) else {}
    kwargs.update(spec.load_kwargs)
    try:
        return load_dataset(formats.pop(), data_files=resolved, **kwargs)
    except Exception as err:  # datasets/pyarrow raise many kinds; say which file failed
        raise DataError(f"could not read {sorted(resolved.values())}: {err}") from err


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
        tables = {p.stem.split(".")[0]: str(p) for p in sorted(path.iterdir()) if _format_of(p)}
        named = {k: v for k, v in tables.items() if k in _SPLIT_NAMES}
        if named:
            return _load_files(named, spec)
        if any(p.is_dir() for p in path.iterdir()):
            return load_dataset("imagefolder", data_dir=str(path))
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
    """Named splits as given; missing test/validation carved from train (stratified, seeded)."""
    splits = {_SPLIT_NAMES.get(k, k): v for k, v in dataset_dict.items()}
    if "train" not in splits:
        raise DataError(f"no train split; found {sorted(splits)}")
    how = []
    if "test" not in splits:
        splits["train"], splits["test"] = _stratified_split(splits["train"], spec.test_size, spec.seed, "test")
        how.append(f"test: stratified {spec.test_size:.0%} of the data (seed {spec.seed})")
    if "validation" not in splits:
        share = spec.validation_size / (1 - spec.test_size) if len(how) else spec.validation_size
        splits["train"], splits["validation"] = _stratified_split(splits["train"], share, spec.seed, "validation")
        how.append(f"validation: stratified {spec.validation_size:.0%} of the data (seed {spec.seed})")
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
    features = spec.feature_columns or named or columns
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"feature columns {missing} not found; columns are {columns}")
    return "table", None, features


def template_columns(template: str | None) -> list[str]:
    """The columns a ``str.format`` template names, in order of first use."""
    if not template:
        return []
    import string

    names = [field for _, field, _, _ in string.Formatter().parse(template) if field]
    return list(dict.fromkeys(name.split(".")[0].split("[")[0] for name in names))


def _format_value(value: Any) -> str:
    if _is_missing(value):
        return "missing"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render_row(row: dict[str, Any], feature_columns: list[str], template: str | None) -> str:
    """A table row as text: the template with ``{column}`` fields, or ``column: value`` pairs."""
    values = {c: _format_value(row[c]) for c in feature_columns}
    if template is None:
        return ", ".join(f"{column}: {value}" for column, value in values.items())
    return template.format_map(values)


def _open_image(value: Any, where: str):
    from PIL import Image

    if isinstance(value, Image.Image):  # already decoded by datasets
        return value
    try:
        if isinstance(value, dict):  # datasets Image(decode=False): {"bytes", "path"}
            source = io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]
        else:
            source = value
        with Image.open(source) as image:
            image.load()
            return image.copy()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        raise DataError(f"{where}: unreadable image ({type(err).__name__}: {err})") from err


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
        return [_open_image(v, f"split row {i} column {data.input_column!r}") for i, v in enumerate(dataset[data.input_column])]
    if data.kind == "text":
        texts = dataset[data.input_column]
        for row, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"row {row}: text column {data.input_column!r} is empty or not text")
        return list(texts)
    return [render_row(row, data.feature_columns, data.text_template) for row in dataset]


def _check_images(splits: dict[str, Any], column: str) -> None:
    """Open every image once, before training, so a bad file fails now and is named."""
    from datasets import Image

    for split, dataset in splits.items():
        raw = dataset.cast_column(column, Image(decode=False))
        for row, value in enumerate(raw[column]):
            name = value.get("path") or f"row {row}"
            _open_image(value, f"split {split!r} row {row} ({name})")


def load_labelled(spec: DataSpec) -> LabelledData:
    """Load, validate and split the data a classification recipe trains on."""
    raw = load_raw(spec)
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise DataError(f"split {split!r} of {spec.source} is empty")
        if spec.label_column not in dataset.column_names:
            raise DataError(
                f"label column {spec.label_column!r} not found in split {split!r}; columns are {dataset.column_names}"
            )
    names = label_names(raw, spec.label_column)
    encoded = {split: _encode_labels(ds, spec.label_column, names) for split, ds in raw.items()}
    splits, how = make_splits(encoded, replace(spec, class_names=names))
    kind, column, features = _detect_kind(splits["train"], spec)
    for split, dataset in splits.items():  # every split must carry the columns the inputs need
        absent = [c for c in (features + ([column] if column else [])) if c not in dataset.column_names]
        if absent:
            raise DataError(f"split {split!r} lacks column(s) {absent}; columns are {dataset.column_names}")
    if kind == "image" and column is not None:
        _check_images(splits, column)
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
    }
    data = LabelledData(splits, names, kind, column, features, spec.text_template, origin)
    origin["label_counts"] = {split: data.label_counts(split) for split in splits}
    return data
