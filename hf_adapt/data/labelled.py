"""``load_labelled``: the data a classification recipe trains on, loaded, checked and split (``LabelledData``),
and how its rows become model inputs."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from hf_adapt.data.checks import check_groups, check_numbers, check_spec, check_texts, delimiter_hint
from hf_adapt.data.files import SPLIT_NAMES, data_version, image_root_folder, load_raw, manifest_folders
from hf_adapt.data.rows import detect_kind, render_row
from hf_adapt.data.spec import DataSpec
from hf_adapt.data.splits import make_splits
from hf_adapt.dicom import VolumeReading
from hf_adapt.errors import DataError
from hf_adapt.images import (
    MANIFEST_ROW,
    check_images,
    count_repeated_images,
    image_values,
    name_of,
    open_image,
    path_column,
    resolve_paths,
)
from hf_adapt.tasks import get_task

logger = logging.getLogger("hf_adapt.data")

GROUP_HINTS = ("patient_id", "patient", "subject_id", "customer_id")  # warned about when group_column is unset


@dataclass
class LabelledData:
    """Validated splits with integer labels, and how their rows become inputs."""

    splits: dict[str, Any]  # "train"/"validation"/"test" -> datasets.Dataset (column "label": class id, or a number)
    labels: list[str]
    kind: str  # "table", "text" or "image"
    input_column: str | None
    feature_columns: list[str]
    text_template: str | None
    origin: dict[str, Any]  # source facts for the card: files, split sizes, how splits were made
    dicom_window: list[float] | None = None  # the window every DICOM image is read with (train, test, predict)
    volume: VolumeReading = field(default_factory=VolumeReading)  # the slice(s) every DICOM volume gives
    task: str = "classification"  # hf_adapt.tasks: regression labels are the target's numbers, ``labels`` its name

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def label_counts(self, split: str) -> dict[str, int]:
        """Rows of each label in ``split`` (multi-label: rows carrying it)."""
        counts = {name: 0 for name in self.labels}
        for label in self.splits[split]["label"]:
            for label_id in ([i for i, flag in enumerate(label) if flag] if isinstance(label, list) else [label]):
                counts[self.labels[label_id]] += 1
        return counts

    def inputs(self, split: str, input_kind: str) -> list[Any]:
        """Raw model inputs of ``split``: texts (rows rendered) or PIL images."""
        return rows_to_inputs(self.splits[split], input_kind, self)


def load_labelled(spec: DataSpec, raw=None) -> LabelledData:
    """Load, validate and split the data a classification recipe trains on; ``raw``: its splits already read
    (a ``DatasetDict``; a stream's first rows as train, see :mod:`hf_adapt.data.stream`)."""
    check_spec(spec)
    raw = load_raw(spec) if raw is None else raw
    for split, dataset in raw.items():
        if len(dataset) == 0:
            raise DataError(f"split {split!r} of {spec.source} is empty")
        if not spec.label_columns and spec.label_column not in dataset.column_names:
            raise DataError(
                f"label column {spec.label_column!r} not found in split {split!r}; columns are {dataset.column_names}"
                + delimiter_hint(dataset.column_names)
            )
    if spec.group_column:
        check_groups(raw, spec.group_column)
    else:
        ids = [c for c in next(iter(raw.values())).column_names if c.lower() in GROUP_HINTS]
        if ids:
            logger.warning("the data has a %r column but no group_column: splits are made by row, so one %s's rows "
                           "can be in train and in test; set group_column: %s to keep each in one split",
                           ids[0], ids[0], ids[0])
    task = get_task(spec.task)
    encoded, names = task.read_labels(raw, spec)
    folders, image_root = manifest_folders(spec), image_root_folder(spec)
    first = next(iter(encoded))
    paths = path_column(encoded[first], spec.image_column, folders.get(SPLIT_NAMES.get(first, first)), image_root)
    repeated = 0
    if paths is not None:  # a manifest: image paths, relative to each split file's folder and confined to it
        spec = replace(spec, image_column=paths)
        encoded = {split: resolve_paths(ds, paths, folders.get(SPLIT_NAMES.get(split, split)), image_root, split)
                   if paths in ds.column_names else ds for split, ds in encoded.items()}
        repeated = count_repeated_images(encoded, paths)
    splits, how = make_splits(encoded, replace(spec, class_names=names))
    kind, column, features = detect_kind(splits["train"].remove_columns(
        [c for c in (MANIFEST_ROW,) if c in splits["train"].column_names]), spec)
    for split, dataset in splits.items():  # every split must carry the columns the inputs need
        absent = [c for c in (features + ([column] if column else [])) if c not in dataset.column_names]
        if absent:
            raise DataError(f"split {split!r} lacks column(s) {absent}; columns are {dataset.column_names}")
    if kind == "text":  # checked on the rows as the files hold them, so messages name a file's row
        check_texts(encoded, column)
    elif column is None:  # a table rendered as text, or pixel columns
        check_numbers(encoded, features, allow_missing=kind == "table")
    skipped = (check_images(splits, column, spec.on_bad_image, spec.dicom_window, spec.volume)
               if kind == "image" and column is not None else {})
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
    data = LabelledData(splits, names, kind, column, features, spec.text_template, origin, dicom_window=window,
                        volume=spec.volume, task=spec.task)
    origin.update(task.label_facts(data))
    return data


def _check_input_kind(data: LabelledData, input_kind: str) -> None:
    if data.kind == "image" and input_kind != "image":
        raise DataError(f"the data holds images but the backbone takes {input_kind} inputs")
    if data.kind != "image" and input_kind == "image":
        raise DataError("the backbone takes images; set pixel_shape for pixel tables or point data at images")


def _pixels(values, shape):
    import numpy as np
    from PIL import Image

    return Image.fromarray(np.clip(np.asarray(values, dtype=np.float32), 0, 255).astype(np.uint8).reshape(shape))


def _text(text: Any, where: str, column: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: text column {column!r} is empty or not text")
    return text


def rows_to_inputs(dataset, input_kind: str, data: LabelledData) -> list[Any]:
    _check_input_kind(data, input_kind)
    if data.kind == "image" and data.input_column is None:  # pixel table
        import numpy as np

        shape = tuple(data.origin["pixel_shape"])
        table = dataset.select_columns(data.feature_columns).to_pandas().to_numpy(dtype=np.float32)
        return [_pixels(r, shape) for r in table]
    if data.kind == "image":
        return [open_image(v, f"row {i} column {data.input_column!r} ({name_of(v)})", data.dicom_window, data.volume)
                for i, v in enumerate(image_values(dataset, data.input_column))]
    if data.kind == "text":
        return [_text(text, f"row {row}", data.input_column) for row, text in enumerate(dataset[data.input_column])]
    return [render_row(row, data.feature_columns, data.text_template) for row in dataset]


def row_input(row: dict[str, Any], input_kind: str, data: LabelledData, where: str) -> Any:
    """One row's model input, as :func:`rows_to_inputs` makes a split's (a streamed row: ``where`` names it)."""
    _check_input_kind(data, input_kind)
    if data.kind == "image" and data.input_column is None:
        return _pixels([row[c] for c in data.feature_columns], tuple(data.origin["pixel_shape"]))
    if data.kind == "image":
        value = row[data.input_column]
        return open_image(value, f"{where} column {data.input_column!r} ({name_of(value)})", data.dicom_window,
                          data.volume)
    if data.kind == "text":
        return _text(row[data.input_column], where, data.input_column)
    return render_row(row, data.feature_columns, data.text_template)
