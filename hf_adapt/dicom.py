"""Medical images: read DICOM files into 8-bit PIL images, and bring 16-bit images to 8 bit.

``pydicom`` is imported when a file is read, so ``import hf_adapt`` stays light.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, BinaryIO

from hf_adapt.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
_MAGIC_OFFSET = 128


class ImageReadError(DataError):
    """An image file that cannot be used; ``reason`` is a short key for counting skipped rows.

    Reasons: "missing file", "not an image", "no pixel data", "unsupported transfer syntax",
    "truncated", "unreadable". ``detail`` is the plain-words explanation without the file name,
    so callers can prefix their own location (split, row, file).
    """

    def __init__(self, source: str, reason: str, detail: str):
        super().__init__(f"{source}: {detail}")
        self.source, self.reason, self.detail = source, reason, detail


def is_dicom(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a DICOM file: a ``.dcm``/``.dicom`` suffix, or "DICM" at byte 128."""
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            handle.seek(_MAGIC_OFFSET)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def has_dicom_magic(data: bytes) -> bool:
    """Whether in-memory file bytes carry the DICOM "DICM" marker at byte 128."""
    return data[_MAGIC_OFFSET:_MAGIC_OFFSET + 4] == b"DICM"


def _dataset(source: str | os.PathLike[str] | BinaryIO, name: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(source)
    except InvalidDicomError:
        pass  # no preamble: a bare dataset is still DICOM if it holds an image, else not DICOM at all
    except FileNotFoundError as err:
        raise ImageReadError(name, "missing file", "file not found") from err
    except (EOFError, OSError) as err:
        raise ImageReadError(name, "truncated", f"truncated DICOM file, it ends early ({err})") from err
    except Exception as err:  # noqa: BLE001 - pydicom raises many kinds on corrupt headers
        raise ImageReadError(name, "unreadable", f"unreadable DICOM file ({type(err).__name__}: {err})") from err
    if hasattr(source, "seek"):
        source.seek(0)
    try:
        dataset = pydicom.dcmread(source, force=True)
    except Exception:  # noqa: BLE001 - forced reads of non-DICOM bytes fail in arbitrary ways
        dataset = None
    if dataset is None or "PixelData" not in dataset or "Rows" not in dataset:
        raise ImageReadError(name, "not an image",
                             "not a DICOM file (no 'DICM' marker at byte 128 and no DICOM image inside)")
    return dataset


def _pixels(dataset, name: str):
    """The decoded array of one frame (the middle one of a multi-frame image)."""
    from pydicom.pixels import pixel_array
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        kind = getattr(dataset.get("SOPClassUID"), "name", None) or "no SOP class"
        raise ImageReadError(name, "no pixel data", f"no pixel data: the file is not an image ({kind})")
    meta = dataset.file_meta
    if "TransferSyntaxUID" not in meta:  # bare datasets: say how the header was read
        implicit = getattr(dataset, "original_encoding", (True, True))[0]
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    syntax = UID(meta.TransferSyntaxUID)
    frames = int(dataset.get("NumberOfFrames") or 1)
    index = frames // 2 if frames > 1 else None
    try:
        return pixel_array(dataset, index=index)
    except (NotImplementedError, RuntimeError) as err:  # no decoder for this syntax, or every plugin failed
        detail = str(err).strip().replace("\n", " ")
        raise ImageReadError(
            name, "unsupported transfer syntax",
            f"unsupported transfer syntax {syntax} ({syntax.name}): no installed decoder reads it; "
            f"pip install 'hf-adapt[medical]' adds the pylibjpeg decoders (JPEG, JPEG-LS, JPEG 2000), and "
            f"python-gdcm reads most others [{detail}]",
        ) from err
    except ValueError as err:
        if "less than expected" in str(err) or "truncated" in str(err).lower():
            raise ImageReadError(name, "truncated",
                                 f"truncated file: its pixel data is shorter than its header says ({err})") from err
        raise ImageReadError(name, "unreadable", f"unreadable pixel data (ValueError: {err})") from err
    except Exception as err:  # noqa: BLE001 - decoders raise many kinds on corrupt data
        raise ImageReadError(name, "unreadable", f"unreadable pixel data ({type(err).__name__}: {err})") from err


def _first(value: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, (int, float, str)):  # multi-valued: the first window is the primary one
        value = value[0] if len(value) else None
    return None if value is None else float(value)


def _window_to_8bit(values, low: float, high: float):
    import numpy as np

    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float64) - low) / (high - low)
    return np.rint(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def voi_window(values, center: float, width: float, function: str = "LINEAR"):
    """A VOI window onto 0..255 as DICOM PS3.3 C.11.2.1.2 defines it, for the LINEAR (default),
    LINEAR_EXACT and SIGMOID VOI LUT functions.

    LINEAR: ``((x - (c - 0.5)) / (w - 1) + 0.5)``, 0 at or below ``c - 0.5 - (w - 1) / 2`` and 1
    above ``c - 0.5 + (w - 1) / 2`` (width 1 is a step at ``c - 0.5``).
    """
    import numpy as np

    x = values.astype(np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    elif function == "LINEAR_EXACT":
        y = np.clip((x - center) / width + 0.5, 0.0, 1.0)
    elif width <= 1:
        y = (x > center - 0.5).astype(np.float64)
    else:
        y = np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    return np.rint(y * 255).astype(np.uint8)


def read_dicom(path: str | os.PathLike[str] | BinaryIO, window: tuple[float, float] | None = None):
    """A DICOM image as a PIL image: "L" (8-bit grayscale) or "RGB".

    Grayscale pixels go through the modality LUT (rescale slope/intercept, e.g. to Hounsfield
    units), then a VOI window mapped onto 0..255 (:func:`voi_window`, the DICOM standard's
    formula): ``window=(center, width)`` when given (the config's ``dicom_window``, LINEAR), else
    the file's own WindowCenter/WindowWidth (the first if there are several) with its
    VOILUTFunction, else its VOI LUT sequence, else the image's min-max range. MONOCHROME1 images (dense = dark)
    are inverted so that dense is bright, as in MONOCHROME2. Colour images (RGB, YBR_* which
    pydicom converts to RGB, PALETTE COLOR through its lookup table) come back as "RGB", scaled to
    8 bit by their bit depth. A multi-frame file gives its middle frame.

    Raises:
        ImageReadError: a ``DataError`` naming the file and what is wrong, in plain words: not a
            DICOM file, no pixel data, unsupported transfer syntax (no decoder installed),
            truncated file, or otherwise unreadable. ``reason`` holds the short key.
    """
    name = str(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<DICOM bytes>")
    try:
        return _image(_dataset(path, name), name, window)
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001 - pydicom parses values lazily: a malformed one fails where it is read
        raise ImageReadError(name, "unreadable", f"unreadable DICOM file: a malformed value "
                                                 f"({type(err).__name__}: {err})") from err


def _image(dataset, name: str, window: tuple[float, float] | None):
    """``read_dicom``'s work on a parsed dataset."""
    import numpy as np
    from PIL import Image

    pixels = _pixels(dataset, name)
    interpretation = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if interpretation == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, dataset)
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        bits = int(dataset.get("BitsStored") or 8) if interpretation != "PALETTE COLOR" else 16
        if pixels.dtype == np.uint8:
            bits = 8
        rgb = _window_to_8bit(pixels[..., :3], 0, 2 ** bits - 1)
        return Image.fromarray(rgb)
    if pixels.ndim != 2:
        raise ImageReadError(name, "unreadable", f"unexpected pixel array of shape {pixels.shape}")
    from pydicom.pixels import apply_modality_lut

    values = apply_modality_lut(pixels, dataset).astype(np.float64)
    function = "LINEAR"
    if window is not None:
        center, width = float(window[0]), float(window[1])
    else:  # the file's own window, with its VOI LUT function
        center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
        function = str(dataset.get("VOILUTFunction") or "LINEAR")
    if center is not None and width is not None and width > 0:
        out = voi_window(values, center, width, function)
    elif "VOILUTSequence" in dataset:  # a lookup-table window instead of center/width
        from pydicom.pixels import apply_voi_lut

        looked_up = apply_voi_lut(values, dataset).astype(np.float64)
        out = _window_to_8bit(looked_up, float(looked_up.min()), float(looked_up.max()))
    else:
        out = _window_to_8bit(values, float(values.min()), float(values.max()))
    if interpretation == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out)


def read_dicom_bytes(data: bytes, name: str, window: tuple[float, float] | None = None):
    """``read_dicom`` on in-memory file bytes (e.g. a ``datasets`` Image column's bytes)."""
    buffer = io.BytesIO(data)
    buffer.name = name
    return read_dicom(buffer, window)


_HIGH_DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_8bit(image):
    """A 16-bit or 32-bit grayscale PIL image scaled onto 8 bit ("L") by its min-max range.

    PIL's own ``convert("L")`` clips such images at 255, which turns most radiographs white.
    Other modes are returned unchanged.
    """
    if image.mode not in _HIGH_DEPTH_MODES:
        return image
    import numpy as np
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(_window_to_8bit(values, float(values.min()), float(values.max())))
