"""Which kind the data is (table, text, image), and table rows rendered as text."""

from __future__ import annotations

import math
from typing import Any

from hf_adapt.data.spec import DataSpec
from hf_adapt.errors import DataError


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def detect_kind(dataset, spec: DataSpec) -> tuple[str, str | None, list[str]]:
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
    if is_missing(value):
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
