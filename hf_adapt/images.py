"""Image files for the labelled-data loader: open PNG/JPEG and DICOM alike, find and resolve a
manifest's path column, and check every image before training (``on_bad_image``).

Manifest paths are confined: each must resolve, symlinks followed (``os.path.realpath``), inside
the manifest's folder or the ``image_root`` the user names. A row that points elsewhere
(``../other/x.png``, ``/etc/passwd``, a symlink inside whose target is outside) is refused by
row before any file outside is opened, so no stray file is trained on, nor saved with the model
as a card example and published.

DICOM files are read by :mod:`hf_adapt.dicom` with one intensity window for every split; 16-bit
images are scaled to 8 bit, not clipped. A manifest path may name a folder holding one DICOM series
(:mod:`hf_adapt.dicom_series`); it and multi-frame files are volumes, read as the run's
:class:`~hf_adapt.dicom.VolumeReading` says (a slice, or a 2.5D stack of slices). Failures are
:class:`~hf_adapt.dicom.ImageReadError` (a ``DataError``) whose ``reason`` is one of ``BAD_IMAGE_REASONS``.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

from hf_adapt.dicom import DICOM_SUFFIXES, ImageReadError, VolumeReading, has_dicom_magic, is_dicom, read_dicom, to_8bit
from hf_adapt.dicom_series import is_series_folder, read_series
from hf_adapt.errors import DataError

logger = logging.getLogger("hf_adapt.data")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", *DICOM_SUFFIXES)
BAD_IMAGE_REASONS = ("missing file", "not an image", "no pixel data", "unsupported transfer syntax", "truncated",
                     "unreadable", "no such slice", "colour volume", "inconsistent series")
_PATH_COLUMNS = ("path", "image")  # auto-detected manifest columns (image_column unset)
_COLOUR_SPACES = ("CMYK", "YCbCr", "LAB", "HSV")  # converted to RGB when opened
MANIFEST_ROW = "__manifest_row__"  # a manifest row's index in its file, kept through splitting for messages
_PIL_REASONS = {"missing file": "file not found", "not an image": "not an image file", "truncated": "truncated file",
                "unreadable": "cannot decode it"}


def is_image_file(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    return path.suffix.lower() in IMAGE_SUFFIXES or (path.suffix == "" and is_dicom(path))


def _pil_reason(err: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(err, FileNotFoundError):
        return "missing file"
    if isinstance(err, UnidentifiedImageError):
        return "not an image"
    if "truncated" in str(err).lower():
        return "truncated"
    return "unreadable"


def _plain_mode(image):
    """CMYK (print JPEGs) and other colour spaces as RGB: what models, transforms and PNG files expect."""
    return image.convert("RGB") if image.mode in _COLOUR_SPACES else image


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether an image path names something to read: a file, or a folder (a DICOM series)."""
    return os.path.isfile(path) or os.path.isdir(path)


def open_image(value: Any, where: str, dicom_window: list[float] | tuple[float, float] | None = None,
               volume: VolumeReading | None = None):
    """A PIL image from a path, file bytes (``{"bytes", "path"}``) or an already decoded image.

    DICOM files (by suffix or the "DICM" marker) go through :func:`hf_adapt.dicom.read_dicom`
    with ``dicom_window`` ([center, width]; None: the file's own window), a folder through
    :func:`hf_adapt.dicom_series.read_series` (one series), both with ``volume`` (None: the middle
    slice); others through PIL. 16-bit images are scaled to 8 bit by their range, not clipped. The
    predictor opens a user's file with this and the run's ``LabelledData.dicom_window`` and
    ``volume``, so it sees the training pixels.

    Raises:
        ImageReadError: a ``DataError`` whose message starts with ``where`` (name the file in it)
            and whose ``reason`` is one of ``BAD_IMAGE_REASONS``.
    """
    from PIL import Image

    if isinstance(value, Image.Image):  # already decoded by datasets
        return _plain_mode(to_8bit(value))
    window = tuple(dicom_window) if dicom_window is not None else None
    data, path = (value.get("bytes"), value.get("path")) if isinstance(value, dict) else (None, value)
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    try:
        if data:
            if has_dicom_magic(data) or (path and Path(path).suffix.lower() in DICOM_SUFFIXES):
                buffer = io.BytesIO(data)
                return read_dicom(buffer, window, volume)
            source = io.BytesIO(data)
        elif not path:
            raise ImageReadError(where, "missing file", "no image: the path is empty")
        elif os.path.isdir(path):
            return read_series(path, window, volume)
        elif is_dicom(path):
            return read_dicom(path, window, volume)
        else:
            source = path
    except ImageReadError as err:
        raise ImageReadError(where, err.reason, err.detail) from err
    try:
        with Image.open(source) as image:
            image.load()
            return _plain_mode(to_8bit(image.copy()))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError ... for bad files
        reason = _pil_reason(err)
        raise ImageReadError(where, reason, f"unreadable image: {_PIL_REASONS[reason]} ({type(err).__name__}: {err})") from err


def image_values(dataset, column: str) -> list[Any]:
    """The image column's raw values: path strings, or ``{"bytes", "path"}`` for ``datasets`` Image columns."""
    from datasets import Image

    if type(dataset.features[column]).__name__ == "Image":
        dataset = dataset.cast_column(column, Image(decode=False))
    return dataset[column]


def name_of(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("path") or "image bytes"
    return str(value) if value else "empty path"


def check_images(splits: dict[str, Any], column: str, on_bad_image: str = "error",
                 dicom_window: list[float] | None = None, volume: VolumeReading | None = None) -> dict[str, dict[str, int]]:
    """Open every image once, before training, so a bad file fails now and is named.

    Missing files are listed together first (a wrong manifest folder breaks them all). With
    ``on_bad_image: skip`` bad rows leave their split instead, with one warning per split that
    counts each reason; the counts are returned (split -> reason -> rows). A split left empty fails.
    """
    skipped: dict[str, dict[str, int]] = {}
    for split, dataset in splits.items():
        values = image_values(dataset, column)
        manifest = MANIFEST_ROW in dataset.column_names
        rows = dataset[MANIFEST_ROW] if manifest else range(len(dataset))
        label = "manifest row" if manifest else "row"
        missing = [i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not exists(v))]
        if missing and on_bad_image == "error":
            shown = "; ".join(f"{label} {rows[i]}: {name_of(values[i])}" for i in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise ImageReadError(f"split {split!r}", "missing file",
                                 f"{len(missing)} of {len(values)} image files not found: {shown}{more}; "
                                 "relative paths start at the manifest file's folder")
        bad = dict.fromkeys(missing, "missing file")
        for i, value in enumerate(values):
            if i in bad:
                continue
            try:
                open_image(value, f"split {split!r} {label} {rows[i]} ({name_of(value)})", dicom_window, volume)
            except ImageReadError as err:
                if on_bad_image == "error":
                    raise
                bad[i] = err.reason
        if not bad:
            continue
        counts = {reason: list(bad.values()).count(reason) for reason in BAD_IMAGE_REASONS if reason in bad.values()}
        described = ", ".join(f"{n} {reason}" for reason, n in counts.items())
        if len(bad) == len(values):
            raise DataError(f"split {split!r}: all {len(values)} images are unreadable ({described}); "
                            "on_bad_image: skip would leave it empty")
        logger.warning("split %r: skipped %d unreadable image%s (%s)", split, len(bad), "s" * (len(bad) != 1), described)
        splits[split] = dataset.select([i for i in range(len(values)) if i not in bad])
        skipped[split] = counts
    return skipped


def allowed_roots(folder: Path | None, image_root: str | os.PathLike[str] | None) -> list[str]:
    """The folders (symlinks resolved) manifest paths may point into: the manifest's own, and ``image_root``."""
    return [os.path.realpath(root) for root in (folder, image_root) if root is not None]


def _real(path: str | os.PathLike[str]) -> str | None:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):  # a NUL byte, a symlink loop on some platforms
        return None


def _inside(real: str | None, roots: list[str]) -> bool:
    return real is not None and any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _looks_like_image_path(value: Any, folder: Path | None, roots: list[str]) -> bool:
    if not isinstance(value, str) or not value:
        return False
    path = Path(value)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    candidate = path if path.is_absolute() or folder is None else folder / path
    if not _inside(_real(candidate), roots):  # never opened to sniff DICOM; resolve_paths refuses it by row
        return "/" in value or os.sep in value
    return is_series_folder(candidate) or is_dicom(candidate)


def path_column(dataset, image_column: str | None, folder: Path | None,
                image_root: str | os.PathLike[str] | None = None) -> str | None:
    """The manifest column holding image file paths: ``image_column`` if it holds strings, else a
    ``path`` (or ``image``) string column whose first values name image or DICOM files, or folders
    holding a DICOM series. Only files inside ``folder`` or ``image_root`` are opened to look for
    the DICOM marker."""
    def is_string(column: str) -> bool:
        feature = dataset.features.get(column)
        return type(feature).__name__ == "Value" and feature.dtype in ("string", "large_string")

    if image_column:
        return image_column if is_string(image_column) else None
    roots = allowed_roots(folder, image_root)
    for column in _PATH_COLUMNS:
        if column in dataset.column_names and is_string(column):
            head = [v for v in dataset[column][:20] if v]
            if head and all(_looks_like_image_path(v, folder, roots) for v in head):
                return column
    return None


def count_repeated_images(splits: dict[str, Any], column: str) -> int:
    """How many manifest rows name an image file an earlier row already names, with one warning that counts
    them: repeated rows weigh an image twice, and carved splits can train and test on it. Missing files are
    left to :func:`check_images`."""
    seen: dict[str, tuple[str, int]] = {}
    repeats = []
    for split, dataset in splits.items():
        if column not in dataset.column_names:
            continue
        for row, value in zip(dataset[MANIFEST_ROW], dataset[column]):
            if value and exists(value):
                first = seen.setdefault(os.path.realpath(value), (split, row))
                if first != (split, row):
                    repeats.append((value, first, (split, row)))
    if repeats:
        path, (split, row), (again, again_row) = repeats[0]
        logger.warning("%d repeated manifest row(s) name an image file listed before (first: %s, split %r manifest "
                       "row %d and split %r manifest row %d); list each image once, or set group_column so that "
                       "copies stay in one split", len(repeats), path, split, row, again, again_row)
    return len(repeats)


def _outside_message(split: str, outside: list[tuple[int, str, str | None]], total: int, folder: Path | None,
                     image_root: str | os.PathLike[str] | None) -> str:
    """The refusal of manifest rows whose paths lead out of the allowed folders: which, where to, and how to allow."""
    where = " and ".join(([f"the manifest's folder {folder}"] if folder is not None else []) +
                         ([f"image_root {image_root}"] if image_root is not None else [])) or \
        "any allowed folder (the data has no local manifest folder)"
    rows = [(row, value, real or "a path that cannot be resolved") for row, value, real in outside]
    if len(rows) == 1:
        (row, value, real), = rows
        named = f"split {split!r} manifest row {row}: image path {value!r} resolves to {real}, outside {where}"
    else:
        shown = "; ".join(f"manifest row {row}: {value!r} resolves to {real}" for row, value, real in rows[:5])
        more = f" (and {len(rows) - 5} more)" if len(rows) > 5 else ""
        named = f"split {split!r}: {len(rows)} of {total} manifest image paths lie outside {where}: {shown}{more}"
    example = os.path.dirname(outside[0][2]) if outside[0][2] else "/path/to/images"
    return (f"{named}; manifest image paths must resolve inside the allowed folders once symlinks are followed, so "
            "that no file elsewhere is read, or saved and published with the model (nothing outside was opened); "
            f"to use these images, allow the folder holding them: image_root: {example}")


def resolve_paths(dataset, column: str, folder: Path | None, image_root: str | os.PathLike[str] | None = None,
                  split: str = "train"):
    """Manifest paths made absolute (relative ones start at the manifest's folder), plus each row's index.

    Raises:
        DataError: naming every row (the first five) whose path resolves, symlinks followed, outside
            ``folder`` and ``image_root``; those files are neither opened nor read.
    """
    roots = allowed_roots(folder, image_root)
    values = dataset[column]
    outside = []
    for row, value in enumerate(values):
        if value:  # an empty path is check_images' to report
            real = _real(value if folder is None or os.path.isabs(value) else folder / value)
            if not _inside(real, roots):
                outside.append((row, value, real))
    if outside:
        raise DataError(_outside_message(split, outside, len(values), folder, image_root))

    def resolve(batch, indices):
        paths = [v if not v or folder is None or os.path.isabs(v) else str(folder / v) for v in batch[column]]
        return {column: paths, MANIFEST_ROW: indices}

    return dataset.map(resolve, batched=True, with_indices=True)
