"""Reading data: table files, image folders (DICOM too), ``data_files`` and Hub datasets into a ``DatasetDict``,
and what pins the exact data for the card. A file that fails to load is read again only to say why, by line."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

from hf_adapt.data.spec import DataSpec
from hf_adapt.dicom import DICOM_SUFFIXES
from hf_adapt.errors import ConfigError, DataError
from hf_adapt.images import is_image_file
from hf_adapt.sources import resolve_source

TABLE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# the split names data files and folders may use -> the split they are
SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation", "test": "test"}


def format_of(path: Path) -> str | None:
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".xz", ".zip")]
    return TABLE_FORMATS.get(suffixes[-1]) if suffixes else None


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
        fmt = format_of(path)
        if fmt is None:
            raise DataError(f"data file {path}: unsupported format; use one of {sorted(TABLE_FORMATS)}")
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
            f"data files {sorted(resolved.values())} must share one format among {sorted(set(TABLE_FORMATS))}"
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
        tables = {p.stem.split(".")[0]: str(p) for p in sorted(path.iterdir()) if format_of(p)}
        return {k: v for k, v in tables.items() if k in SPLIT_NAMES} or None
    return None


def manifest_folders(spec: DataSpec) -> dict[str, Path]:
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
    if source.startswith(("/", "./", "../", "~")) or path.suffix in TABLE_FORMATS:
        raise DataError(f"data not found: {source}")
    try:
        return load_dataset(source, spec.subset, revision=spec.revision, **spec.load_kwargs)
    except Exception as err:
        raise DataError(f"could not load dataset {source!r} from the Hub: {err}") from err



def image_root_folder(spec: DataSpec) -> str | None:
    """``image_root`` as an absolute folder (``pkg://`` and ``~`` expanded), or None when unset."""
    if spec.image_root is None:
        return None
    root = Path(resolve_source(spec.image_root, field="image_root")).expanduser()
    if not root.is_dir():
        raise ConfigError(f"image_root {root} is not a folder; it names the folder manifest image paths may point "
                          "into besides the manifest's own")
    return str(root.resolve())


STREAM_NEEDS = ("streaming: true reads the train split while it trains and cannot carve validation and test from it; "
                "give all three, e.g. data_files: {train: train.csv, validation: validation.csv, test: test.csv}, or "
                "a folder with train/, validation/ and test/ class subfolders")


def stream_sources(spec: DataSpec) -> tuple[dict[str, str] | Path, DataSpec]:
    """Where a streamed run's train split is (its table file, or its image class folder) and the spec of its
    validation and test splits, which load whole (:func:`load_raw`); refuses what cannot stream."""
    files = _table_files(spec)
    if files is not None:
        named = {SPLIT_NAMES.get(split, split): name for split, name in files.items()}
        if set(named) != {"train", "validation", "test"}:
            raise ConfigError(f"{STREAM_NEEDS}; found split(s) {sorted(named)}")
        path = Path(resolve_source(named["train"], field="data_files.train"))
        if not path.is_file():
            raise DataError(f"data file for split 'train' not found: {path}")
        if format_of(path) is None:
            raise DataError(f"data file {path}: unsupported format; use one of {sorted(TABLE_FORMATS)}")
        held = {split: name for split, name in files.items() if SPLIT_NAMES.get(split, split) != "train"}
        return {"train": str(path)}, replace(spec, data_files=held)
    path = Path(resolve_source(spec.source, field="data")) if spec.source else None
    if path is None or not path.is_dir():
        raise ConfigError(f"streaming: true reads local files and folders; {spec.source!r} is neither (a Hub "
                          "dataset streams from the Hub, which this version does not do)")
    folders = _split_folders(path)
    if set(folders) != {"train", "validation", "test"}:
        raise ConfigError(f"{STREAM_NEEDS}; {path} has {sorted(folders) or 'no split folders'}")
    return folders["train"], replace(spec, source=str(path), data_files=None)


def stream_formats(train: dict[str, str], spec: DataSpec) -> tuple[str, dict]:
    """The ``datasets`` builder and keyword arguments that read a train table file as :func:`load_raw` reads it."""
    path = train["train"]
    kwargs = {"delimiter": "\t"} if path.endswith((".tsv", ".tsv.gz")) else {}
    return format_of(Path(path)), {**kwargs, **spec.load_kwargs}


def image_listing(folder: Path) -> list[tuple[str, str]]:
    """(file path, class name) of every image file in ``folder``'s class subfolders, DICOM included, in name order:
    what a streamed image split reads, one file at a time."""
    return [(str(f.resolve()), class_dir.name) for class_dir in _subfolders(folder)
            for f in sorted(class_dir.rglob("*")) if f.is_file() and is_image_file(f)]


def held_out_folders(root: Path, spec: DataSpec):
    """The validation and test class folders under ``root`` as a ``DatasetDict``, each loaded whole."""
    from datasets import DatasetDict

    folders = _split_folders(root)
    return DatasetDict({split: load_raw(replace(spec, source=str(folders[split]), data_files=None))["train"]
                        for split in ("validation", "test")})


def _split_folders(root: Path) -> dict[str, Path]:
    """``root``'s split subfolders (train/, validation/ or val/, test/ ...) by canonical split name."""
    return {SPLIT_NAMES[p.name]: p for p in _subfolders(root) if p.name in SPLIT_NAMES}
