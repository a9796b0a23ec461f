"""What a trained model accepts: every input checked against what it was trained on, before any model work.

``check_inputs`` reads ``hf_adapt.json``'s ``data`` block (the kind, the feature columns and their
kinds, the text template, the pixel shape) and refuses what does not fit with a ``DataError`` naming
the input's index in the batch, the column, what was expected and what was got. ``Predictor`` (and so
``explain`` and a server) runs it on every input.
"""

from __future__ import annotations

import difflib
import math
import os
import string
from collections.abc import Mapping
from typing import Any

import numpy as np

from hf_adapt.errors import DataError, ModelError


def _got(value: Any) -> str:
    """A short description of a refused value, for messages."""
    if value is None:
        return "None"
    if isinstance(value, np.ndarray):
        return f"ndarray of shape {value.shape} ({value.dtype})"
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def _names(columns: list[str], limit: int = 12) -> str:
    if len(columns) <= limit:
        return repr(list(columns))
    return f"{repr(list(columns[:limit]))[:-1]}, ...] ({len(columns)} in all)"


def _cell(value: Any, kind: str | None, index: int, column: str) -> Any:
    """One value of a row, read as training read its column (``kind``: "number", "text", "bool", or None when
    the output predates recorded kinds): None for an empty cell (None, NaN, a blank string: training renders it
    'missing'); a number for a numeric string ("24" is what a CSV cell holds)."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip()):
        return None
    if kind == "number" and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None:
            raise DataError(f"input {index}: column {column!r} expects a number (None or '' for missing), got {_got(value)}")
        if math.isnan(number):  # "nan", as pandas reads such a CSV cell: missing
            return None
        value = number
    expected = {"number": (int, float), "text": (str,), "bool": (bool,)}.get(kind, (str, bool, int, float))
    if not isinstance(value, expected) or (kind == "number" and isinstance(value, bool)):
        what = {"number": "a number", "text": "text (a category)", "bool": "true or false"}.get(
            kind, "a single value (text, number or true/false)")
        raise DataError(f"input {index}: column {column!r} expects {what} (None or '' for missing), got {_got(value)}")
    if isinstance(value, float) and math.isinf(value):
        raise DataError(f"input {index}: column {column!r} is {value}; inputs must be finite numbers "
                        "(None or '' for missing), as in training")
    return value


def _row_values(item: Mapping, index: int, columns: list[str], kinds: dict[str, str]) -> dict[str, Any]:
    """The row's feature columns, each value checked; other keys (the label, ids, unused columns) are ignored:
    every feature column is required, so a misspelt one is caught as missing and named here."""
    missing = [c for c in columns if c not in item]
    if missing:
        extra = [str(k) for k in item if k not in columns]
        hints = [f"{close[0]!r} may be a misspelling of {c!r}" for c in missing
                 if (close := difflib.get_close_matches(c, extra, n=1))]
        raise DataError(f"input {index}: the row lacks column(s) {_names(missing)} (the model reads {_names(columns)}; "
                        f"the row has {_names(sorted(map(str, item)))})" + "".join(f"; {h}" for h in hints))
    return {c: _cell(item[c], kinds.get(c), index, c) for c in columns}


def _template_pieces(columns: list[str], template: str | None) -> list[str | None]:
    """The fixed text of a rendered row in order, None where a column's value goes (as ``render_row`` writes it)."""
    if template is None:
        return [piece for i, c in enumerate(columns) for piece in (f"{', ' if i else ''}{c}: ", None)]
    pieces: list[str | None] = []
    for literal, field, _, _ in string.Formatter().parse(template):
        pieces += [literal] if literal else []
        pieces += [None] if field is not None else []
    return pieces


def _is_rendered_row(text: str, columns: list[str], template: str | None) -> bool:
    """Whether ``text`` reads as a row rendered by the model's template: its fixed pieces, in order."""
    pieces, at = _template_pieces(columns, template), 0
    for i, piece in enumerate(pieces):
        if piece is None:
            continue
        if i == 0:
            if not text.startswith(piece):
                return False
            at = len(piece)
        elif i == len(pieces) - 1:
            return text.endswith(piece) and len(text) - len(piece) >= at
        else:
            found = text.find(piece, at)
            if found < 0:
                return False
            at = found + len(piece)
    return True


def _check_row(item: Any, index: int, data: dict[str, Any]) -> Any:
    columns = data["feature_columns"]
    if isinstance(item, str) and _is_rendered_row(item, columns, data.get("text_template")):
        return item
    if not isinstance(item, Mapping):
        raise DataError(f"input {index}: this model reads table rows (a dict over its columns {_names(columns)}, or "
                        f"a row's text as its template renders it); got {_got(item)}")
    return _row_values(item, index, columns, data.get("column_kinds") or {})


def _check_hybrid(item: Any, index: int, data: dict[str, Any]) -> dict[str, Any]:
    """A row of a hybrid table model: a dict over its text's columns (the text column, or the rendered ones) and its
    table-feature columns, each checked as training read it."""
    from hf_adapt.table_features import row_columns, row_kinds

    text_column = data.get("input_column") if data.get("kind") == "text" else None
    columns = row_columns(data)
    if not isinstance(item, Mapping):
        raise DataError(f"input {index}: this model reads rows with table features: a dict over its columns "
                        f"{_names(columns)} (a text alone lacks the numbers it reads); got {_got(item)}")
    row = _row_values(item, index, columns, row_kinds(data))
    if text_column:
        row[text_column] = _check_text(row[text_column], index, data)
    return row


def _check_text(item: Any, index: int, data: dict[str, Any]) -> str:
    if not isinstance(item, str):
        raise DataError(f"input {index}: this model reads text: expected a str, got {_got(item)}")
    if not item.strip():
        raise DataError(f"input {index}: the text is empty; this model reads non-empty text (training refused "
                        "empty texts too)")
    return item


def _pixels_image(array: np.ndarray, index: int, shape: list[int] | None):
    """A PIL image of an array of 8-bit pixel values: H x W (x C), or the pixel table's ``shape`` (or flat)."""
    from PIL import Image

    if array.dtype.kind not in "uif":
        raise DataError(f"input {index}: pixel values must be numbers, got an array of {array.dtype}")
    if array.size == 0:
        raise DataError(f"input {index}: the array is empty (shape {array.shape})")
    if shape:
        if array.ndim == 1 and array.size == math.prod(shape):
            array = array.reshape(shape)
        if list(array.shape) != list(shape):
            raise DataError(f"input {index}: expected an array of shape {list(shape)} (or {math.prod(shape)} values), "
                            f"got shape {array.shape}")
    else:
        array = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
            raise DataError(f"input {index}: an image array is H x W or H x W x C (C = 1, 3 or 4, channels last), "
                            f"got shape {array.shape}")
    if not np.isfinite(array).all():
        raise DataError(f"input {index}: pixel values must be finite numbers, got {array[~np.isfinite(array)][0]}")
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 255:
        raise DataError(f"input {index}: pixel values must lie in 0..255, got {low:g}..{high:g} (the model reads "
                        "8-bit pixels; pass a PIL image or the file for 16-bit images)")
    if not shape and array.dtype.kind == "f" and 0 < high <= 1:
        raise DataError(f"input {index}: pixel values all lie in 0..1, an image scaled to 0..1; the model reads "
                        "0..255 pixels (multiply by 255)")
    return Image.fromarray(array.astype(np.uint8))


def _check_image(item: Any, index: int, data: dict[str, Any]):
    from PIL import Image

    from hf_adapt.dicom import VolumeReading
    from hf_adapt.images import exists, open_image

    shape, volume = data.get("pixel_shape"), VolumeReading.from_info(data)
    if isinstance(item, Image.Image):
        if min(item.size) == 0:
            raise DataError(f"input {index}: the image is empty ({item.size[0]} x {item.size[1]} pixels)")
        return item
    if isinstance(item, (bytes, bytearray)):  # an uploaded file's contents
        return open_image({"bytes": bytes(item), "path": None}, f"input {index} (image bytes)", data.get("dicom_window"),
                          volume)
    if isinstance(item, (str, os.PathLike)):  # PNG/JPEG, DICOM or a DICOM series folder, read as in training
        if not exists(item):
            raise DataError(f"input {index}: no image file {os.fspath(item)!r}")
        return open_image(item, f"input {index} ({os.fspath(item)})", data.get("dicom_window"), volume)
    if isinstance(item, Mapping) and shape:
        columns = data["feature_columns"]
        row = _row_values(item, index, columns, dict.fromkeys(columns, "number"))
        blank = next((c for c in columns if row[c] is None), None)
        if blank is not None:
            raise DataError(f"input {index}: column {blank!r} is missing a value; pixels have no missing "
                            "(training refused empty pixel cells too)")
        item = np.asarray([row[c] for c in columns], dtype=np.float32)
    if isinstance(item, np.ndarray):
        return _pixels_image(item, index, shape)
    forms = ("an image file's path or bytes, a PIL image, or an array of 0..255 pixels "
             + (f"of shape {shape}, or a dict over its pixel columns" if shape else "(H x W or H x W x C)"))
    raise DataError(f"input {index}: this model reads images: {forms}; got {_got(item)}")


_CHECKS = {"table": _check_row, "text": _check_text, "image": _check_image}


def as_batch(inputs: Any) -> list[Any]:
    """A list is a batch, anything else one input; an empty batch is refused."""
    items = inputs if isinstance(inputs, list) else [inputs]
    if not items:
        raise DataError("no inputs: pass one input, or a non-empty list of them")
    return items


def check_inputs(inputs: Any, data_info: dict[str, Any], first_index: int = 0) -> list[Any]:
    """Check inputs against what a model was trained on; return them as its reader takes them.

    What ``predict``, ``predict_proba``, ``logits`` and ``explain`` (and a server) run on every input, before
    any model work.

    Args:
        inputs: one input, or a list of them.
        data_info: ``hf_adapt.json``'s ``data`` block: ``kind`` ("table", "text" or "image"),
            ``feature_columns``, ``column_kinds``, ``text_template``, ``pixel_shape``, ``dicom_window``,
            ``volume_slice``, ``volume_context``.
        first_index: the index of ``inputs[0]`` in the caller's batch, for messages.

    Returns:
        per input: a table row as a dict over the feature columns (each value as training read its column,
        None for an empty cell) or the row's rendered text; a text; a PIL image.

    Raises:
        DataError: naming the input's index, the column if any, what was expected and what was got.
    """
    items = as_batch(inputs)
    check = _check_hybrid if data_info.get("table_features") else _CHECKS.get(data_info.get("kind"))
    if check is None:
        raise ModelError(f"this output's data kind is {data_info.get('kind')!r}; hf-adapt predicts for table, "
                         "text and image models")
    return [check(item, first_index + i, data_info) for i, item in enumerate(items)]


