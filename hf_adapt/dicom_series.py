"""A folder of single-slice DICOM files (one CT or MR series) read as one volume, then as one 2D input.

The slices are put in order along the slice normal (the cross product of the two
ImageOrientationPatient directions) by their ImagePositionPatient. Only when no slice carries a
position and orientation are they ordered by InstanceNumber instead, with a warning: acquisition
order then stands in for anatomy. A series whose geometry does not hold together is refused,
naming the folder, the offending file and the reason: files of two series (SeriesInstanceUID),
differing Rows/Columns, ImageOrientationPatient or PixelSpacing, a slice without a position among
slices with one, two slices at one position, or a gap between neighbours that differs from the
series' usual gap by more than ``GAP_TOLERANCE`` (a missing or extra slice). Then
:class:`~hf_adapt.dicom.VolumeReading` picks the slice or the 2.5D stack, and only those files'
pixels are decoded.

Every file directly inside the folder must be DICOM (hidden files and a DICOMDIR index are passed
over); subfolders are not read. A file that is a link to somewhere outside the folder is refused,
as manifest paths are (:mod:`hf_adapt.images`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_adapt.dicom import ImageReadError, VolumeReading, is_dicom, read_dataset, slices_image

logger = logging.getLogger("hf_adapt.data")

GAP_TOLERANCE = 0.1  # a gap between neighbouring slices may differ from the median gap by 10 % of it
SAME_POSITION_MM = 0.01  # slices closer than this along the normal stand at one position
ORIENTATION_TOLERANCE = 1e-4  # direction cosines that differ by more are another orientation
SPACING_TOLERANCE = 1e-3  # relative: pixel spacings that differ by more are another grid
_SKIPPED = ("DICOMDIR",)
_WARNED: set[str] = set()  # series already warned about being ordered by InstanceNumber


@dataclass
class _Slice:
    """What ordering and checking a series needs of one file's header."""

    path: Path
    series: str | None
    shape: tuple[int, int]
    orientation: tuple[float, ...] | None
    position: tuple[float, ...] | None
    spacing: tuple[float, ...] | None
    instance: int | None


def is_series_folder(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder that directly holds a DICOM file (a series, for a manifest row)."""
    try:
        return os.path.isdir(path) and any(_listed(Path(path)))
    except OSError:
        return False


def _listed(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.name.upper() not in _SKIPPED)


def read_series(folder: str | os.PathLike[str], window: tuple[float, float] | None = None,
                volume: VolumeReading | None = None):
    """The series in ``folder`` as one PIL image: the slice (or 2.5D stack) ``volume`` picks, windowed as
    :func:`hf_adapt.dicom.slices_image` describes.

    Raises:
        ImageReadError: naming the folder (and in its detail the file at fault): "not an image" (no DICOM
            files, or a file that is not DICOM), "inconsistent series" (the geometry checks above), "no such
            slice", or any reason reading the picked files gives.
    """
    folder = Path(folder)
    name = str(folder)
    try:
        slices = _ordered([_header(path, folder) for path in _files(folder)], name)
        picks = (volume or VolumeReading()).picks(len(slices), name)
        datasets = {index: _slice_dataset(slices[index].path, name) for index in set(picks)}
        return slices_image([(datasets[index], None) for index in picks], name, window)
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001 - pydicom parses values lazily: a malformed one fails where it is read
        raise ImageReadError(name, "unreadable", f"unreadable series: a malformed value "
                                                 f"({type(err).__name__}: {err})") from err


def _slice_dataset(path: Path, name: str):
    """A picked slice's whole dataset; errors name the series folder and the file."""
    try:
        dataset = read_dataset(path, str(path))
    except ImageReadError as err:
        raise ImageReadError(name, err.reason, f"file {path.name}: {err.detail}") from err
    return dataset


def _files(folder: Path) -> list[Path]:
    real = os.path.realpath(folder) + os.sep
    files = _listed(folder)
    if not files:
        inside = " (it has subfolders: name the folder of one series)" if any(p.is_dir() for p in folder.iterdir()) else ""
        raise ImageReadError(str(folder), "not an image", f"a folder holding no DICOM files{inside}")
    for path in files:
        target = os.path.realpath(path)
        if not target.startswith(real):
            raise ImageReadError(str(folder), "not an image", f"file {path.name} is a link to {target}, outside the "
                                                             "series folder; copy the slice in instead")
        if not is_dicom(path):
            raise ImageReadError(str(folder), "not an image", f"file {path.name} is not a DICOM file; a series "
                                                             "folder holds the slices of one series only")
    return files


def _numbers(value: Any) -> tuple[float, ...] | None:
    return tuple(float(v) for v in value) if value is not None and len(value) else None


def _header(path: Path, folder: Path) -> _Slice:
    try:
        header = read_dataset(path, str(path), headers_only=True)
        if "Rows" not in header or "Columns" not in header:
            raise ImageReadError(str(folder), "no pixel data", f"file {path.name} is not an image (no Rows/Columns)")
        if int(header.get("NumberOfFrames") or 1) > 1:
            raise _refuse(str(folder), f"file {path.name} holds {header.NumberOfFrames} frames; a series folder holds "
                                       "one slice per file (a multi-frame file is a volume by itself: name the file, "
                                       "not the folder)")
        instance = header.get("InstanceNumber")
        return _Slice(path, header.get("SeriesInstanceUID"), (int(header.Rows), int(header.Columns)),
                      _numbers(header.get("ImageOrientationPatient")), _numbers(header.get("ImagePositionPatient")),
                      _numbers(header.get("PixelSpacing")), int(instance) if instance not in (None, "") else None)
    except ImageReadError as err:
        detail = err.detail if err.source == str(folder) else f"file {path.name}: {err.detail}"
        raise ImageReadError(str(folder), err.reason, detail) from err
    except Exception as err:  # noqa: BLE001 - pydicom parses values lazily: a malformed one fails where it is read
        raise ImageReadError(str(folder), "unreadable", f"file {path.name}: a malformed value "
                                                       f"({type(err).__name__}: {err})") from err


def _refuse(name: str, detail: str) -> ImageReadError:
    return ImageReadError(name, "inconsistent series", f"inconsistent series: {detail}")


def _check_alike(slices: list[_Slice], name: str) -> None:
    """One series, one grid: the same SeriesInstanceUID, Rows/Columns, orientation and pixel spacing.

    The file named is one that differs from what most slices have, so a single odd file is the one blamed.
    """
    import numpy as np

    def close(tolerance: dict[str, float]):
        return lambda a, b: a is b or (a is not None and b is not None and len(a) == len(b)
                                       and bool(np.allclose(a, b, **tolerance)))

    checks = (("SeriesInstanceUID", lambda s: s.series, lambda a, b: a == b),
              ("Rows x Columns", lambda s: s.shape, lambda a, b: a == b),
              ("ImageOrientationPatient", lambda s: s.orientation, close({"rtol": 0, "atol": ORIENTATION_TOLERANCE})),
              ("PixelSpacing", lambda s: s.spacing, close({"rtol": SPACING_TOLERANCE, "atol": 0})))
    for field, value, same in checks:
        keys = [repr(np.round(value(s), 3).tolist()) if isinstance(value(s), tuple) else repr(value(s))
                for s in slices]
        usual = slices[keys.index(max(set(keys), key=keys.count))]
        odd = next((s for s in slices if not same(value(s), value(usual))), None)
        if odd is not None:
            raise _refuse(name, f"file {odd.path.name} has {field} {_shown(value(odd))}, {usual.path.name} "
                                f"{_shown(value(usual))}"
                                + ("; a series folder holds one series" if field == "SeriesInstanceUID" else
                                   "; the slices of one volume share one grid"))


def _shown(value: Any) -> str:
    if value is None:
        return "missing"
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return f"{value[0]} x {value[1]}"
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _ordered(slices: list[_Slice], name: str) -> list[_Slice]:
    """``slices`` in order along the slice normal, checked as the module describes; ``name`` names the series."""
    _check_alike(slices, name)
    if len(slices) == 1:
        return slices
    placed = [s for s in slices if s.position is not None and s.orientation is not None]
    if not placed:
        return _by_instance(slices, name)
    if len(placed) < len(slices):
        lacking = next(s for s in slices if s.position is None)
        raise _refuse(name, f"file {lacking.path.name} has no ImagePositionPatient, {placed[0].path.name} has one; "
                            "slices cannot be put in order when only some have a position")
    return _by_position(slices, name)


def _by_position(slices: list[_Slice], name: str) -> list[_Slice]:
    import numpy as np

    row, column = np.array(slices[0].orientation[:3]), np.array(slices[0].orientation[3:])
    normal = np.cross(row, column)
    where = {id(s): float(np.dot(normal, s.position)) for s in slices}
    ordered = sorted(slices, key=lambda s: where[id(s)])
    gaps = np.diff([where[id(s)] for s in ordered])
    for i, gap in enumerate(gaps):
        if gap < SAME_POSITION_MM:
            raise _refuse(name, f"files {ordered[i].path.name} and {ordered[i + 1].path.name} stand at one position "
                                f"along the slice normal (ImagePositionPatient {list(ordered[i].position)}); a "
                                "duplicate slice, or two acquisitions in one folder")
    usual = float(np.median(gaps))
    for i, gap in enumerate(gaps):
        if abs(gap - usual) > GAP_TOLERANCE * usual:
            raise _refuse(name, f"the gap between files {ordered[i].path.name} and {ordered[i + 1].path.name} is "
                                f"{gap:.3g} mm, where the series' slices are {usual:.3g} mm apart (tolerance "
                                f"{GAP_TOLERANCE:.0%}); a slice is missing or extra")
    return ordered


def _by_instance(slices: list[_Slice], name: str) -> list[_Slice]:
    lacking = next((s for s in slices if s.instance is None), None)
    if lacking is not None:
        raise _refuse(name, f"file {lacking.path.name} has neither ImagePositionPatient nor InstanceNumber; the "
                            "slices cannot be put in order")
    ordered = sorted(slices, key=lambda s: s.instance)
    for before, after in zip(ordered, ordered[1:]):
        if before.instance == after.instance:
            raise _refuse(name, f"files {before.path.name} and {after.path.name} share InstanceNumber "
                                f"{before.instance}, and no slice has a position to order them by")
    if name not in _WARNED:  # once per series, not each time it is read
        _WARNED.add(name)
        logger.warning("%s: no slice has ImagePositionPatient and ImageOrientationPatient; slices are ordered by "
                       "InstanceNumber, which is acquisition order, not necessarily anatomy", name)
    return ordered
