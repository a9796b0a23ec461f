"""Medical images: read DICOM files into 8-bit PIL images, and bring 16-bit images to 8 bit.

A multi-frame file is a volume: :class:`VolumeReading` (the config's ``volume_slice`` and
``volume_context``) says which of its slices becomes the 2D input, or which neighbours are stacked
into the input channels (2.5D). A folder holding one series is read by :mod:`hf_adapt.dicom_series`
with the same choice. ``pydicom`` is imported when a file is read, so ``import hf_adapt`` stays light.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from hf_adapt.errors import ConfigError, DataError

DICOM_SUFFIXES = (".dcm", ".dicom")
_MAGIC_OFFSET = 128


class ImageReadError(DataError):
    """An image file that cannot be used; ``reason`` is a short key for counting skipped rows.

    Reasons: "missing file", "not an image", "no pixel data", "unsupported transfer syntax",
    "truncated", "unreadable", and for volumes "no such slice", "colour volume" and "inconsistent
    series". ``detail`` is the plain-words explanation without the file name,
    so callers can prefix their own location (split, row, file).
    """

    def __init__(self, source: str, reason: str, detail: str):
        super().__init__(f"{source}: {detail}")
        self.source, self.reason, self.detail = source, reason, detail


VOLUME_FIELDS = ("volume_slice", "volume_context")  # the config fields, and hf_adapt.json's data keys


@dataclass(frozen=True)
class VolumeReading:
    """How a DICOM volume (a multi-frame file, or a folder holding one series) becomes one 2D input.

    ``slice``: "middle" (slice ``n // 2`` of ``n`` in slice order) or a 0-based index in slice order
    (negative counts from the end: -1 is the last). ``context``: how many neighbouring slices on each
    side are stacked with it into the input channels (2.5D), edge slices repeated; 0 is the one slice
    (grayscale), 1 gives slices i-1, i, i+1 as the three channels of an RGB backbone. Images carry one
    or three channels, so 0 and 1 are the choices. A one-frame file is a 2D image and is read as it is.
    The defaults read a multi-frame file as hf-adapt always did (its middle frame), so models saved
    before these fields existed read volumes the same way.
    """

    slice: int | str = "middle"
    context: int = 0

    def __post_init__(self) -> None:
        if self.slice != "middle" and (not isinstance(self.slice, int) or isinstance(self.slice, bool)):
            raise ConfigError(f"volume_slice must be 'middle' or a slice index (an integer; -1 is the last "
                              f"slice), got {self.slice!r}")
        if self.context not in (0, 1) or isinstance(self.context, bool):
            raise ConfigError(f"volume_context must be 0 (the one slice) or 1 (slices i-1, i, i+1 stacked into the "
                              f"three channels of an RGB backbone), got {self.context!r}; an image carries one or "
                              "three channels, so wider stacks have no channels to go to")

    @classmethod
    def from_info(cls, info: Mapping[str, Any] | Any) -> VolumeReading:
        """The reading a config (its ``volume_slice``/``volume_context`` fields) or an ``hf_adapt.json`` data
        block names; absent keys read as the defaults."""
        get = info.get if isinstance(info, Mapping) else (lambda key, default: getattr(info, key, default))
        return cls(get("volume_slice", "middle"), get("volume_context", 0))

    def info(self) -> dict[str, Any]:
        """The keys saved in ``hf_adapt.json``'s data block, which :meth:`from_info` reads back."""
        return dict(zip(VOLUME_FIELDS, (self.slice, self.context), strict=True))

    def describe(self) -> str:
        """The reading in words, for the model card."""
        which = "the middle slice" if self.slice == "middle" else f"slice {self.slice}"
        if self.context:
            return f"{which} and its neighbours on each side as the three channels (2.5D; edge slices repeated)"
        return which

    @property
    def channels(self) -> int:
        """How many slices a volume gives: the input channels they fill."""
        return 2 * self.context + 1

    def picks(self, count: int, name: str) -> list[int]:
        """The slice indices (in slice order) to read from a volume of ``count`` slices: the chosen one
        and its neighbours, clamped at the edges.

        Raises:
            ImageReadError: "no such slice", naming ``name``, when the chosen index lies outside the volume.
        """
        if count == 1:
            return [0]
        centre = count // 2 if self.slice == "middle" else self.slice + (count if self.slice < 0 else 0)
        if not 0 <= centre < count:
            raise ImageReadError(name, "no such slice", f"no slice {self.slice}: the volume has {count} slices "
                                                        f"(0..{count - 1}, or -{count}..-1 from the end); "
                                                        "volume_slice: middle takes each volume's middle slice")
        return [min(max(centre + step, 0), count - 1) for step in range(-self.context, self.context + 1)]


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


def read_dataset(source: str | os.PathLike[str] | BinaryIO, name: str, headers_only: bool = False):
    """The parsed pydicom dataset of a file (``headers_only``: without its pixel data, to sort a series).

    Raises:
        ImageReadError: naming ``name``: missing, truncated, unreadable, or not DICOM at all.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(source, stop_before_pixels=headers_only)
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
        dataset = pydicom.dcmread(source, force=True, stop_before_pixels=headers_only)
    except Exception:  # noqa: BLE001 - forced reads of non-DICOM bytes fail in arbitrary ways
        dataset = None
    if dataset is None or ("PixelData" not in dataset and not headers_only) or "Rows" not in dataset:
        raise ImageReadError(name, "not an image",
                             "not a DICOM file (no 'DICM' marker at byte 128 and no DICOM image inside)")
    return dataset


def frame_pixels(dataset, name: str, index: int | None = None):
    """The decoded array of frame ``index`` of a multi-frame image (None: a one-frame image's only frame)."""
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
    try:
        return pixel_array(dataset, index=index)
    except (NotImplementedError, RuntimeError) as err:  # no decoder for this syntax, or every plugin failed
        detail = str(err).strip().replace("\n", " ")
        if "exceptions were raised by all available plugins" in detail and _has_medical_decoders():
            # the extra's decoders are there and this file beats them: asking for the extra would not help
            raise ImageReadError(
                name, "unsupported transfer syntax",
                f"transfer syntax {syntax} ({syntax.name}): the installed decoders could not decode this file; "
                f"python-gdcm may [{detail}]",
            ) from err
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


def read_dicom(path: str | os.PathLike[str] | BinaryIO, window: tuple[float, float] | None = None,
               volume: VolumeReading | None = None):
    """A DICOM image as a PIL image: "L" (8-bit grayscale) or "RGB".

    Grayscale pixels go through the modality LUT (rescale slope/intercept, e.g. to Hounsfield
    units), then a VOI window mapped onto 0..255 (:func:`voi_window`, the DICOM standard's
    formula): ``window=(center, width)`` when given (the config's ``dicom_window``, LINEAR), else
    the file's own WindowCenter/WindowWidth (the first if there are several) with its
    VOILUTFunction, else its VOI LUT sequence, else the image's min-max range. MONOCHROME1 images (dense = dark)
    are inverted so that dense is bright, as in MONOCHROME2. Colour images (RGB, YBR_* which
    pydicom converts to RGB, PALETTE COLOR through its lookup table) come back as "RGB", scaled to
    8 bit by their bit depth. A multi-frame file is a volume of its frames in file order: ``volume``
    picks the slice (by default the middle frame), or a 2.5D stack of three (see :func:`slices_image`).

    Raises:
        ImageReadError: a ``DataError`` naming the file and what is wrong, in plain words: not a
            DICOM file, no pixel data, unsupported transfer syntax (no decoder installed),
            truncated file, no such slice, or otherwise unreadable. ``reason`` holds the short key.
    """
    name = str(path) if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "<DICOM bytes>")
    try:
        dataset = read_dataset(path, name)
        frames = int(dataset.get("NumberOfFrames") or 1)
        picks = (volume or VolumeReading()).picks(frames, name)
        return slices_image([(dataset, index if frames > 1 else None) for index in picks], name, window)
    except ImageReadError:
        raise
    except Exception as err:  # noqa: BLE001 - pydicom parses values lazily: a malformed one fails where it is read
        raise ImageReadError(name, "unreadable", f"unreadable DICOM file: a malformed value "
                                                 f"({type(err).__name__}: {err})") from err


def _decoded(dataset, name: str, index: int | None):
    """A frame's pixels; palette colour looked up into RGB."""
    pixels = frame_pixels(dataset, name, index)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, dataset)
    return pixels


def _is_colour(pixels) -> bool:
    return pixels.ndim == 3 and pixels.shape[-1] in (3, 4)


def _colour_to_8bit(pixels, dataset):
    import numpy as np

    palette = str(dataset.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR"
    bits = 8 if pixels.dtype == np.uint8 else 16 if palette else int(dataset.get("BitsStored") or 8)
    return _window_to_8bit(pixels[..., :3], 0, 2 ** bits - 1)


def slices_image(slices: list[tuple[Any, int | None]], name: str, window: tuple[float, float] | None):
    """One 2D image from slices of a volume, each ``(dataset, frame index or None)``, in stack order.

    One slice gives its image, as :func:`read_dicom` describes. Three (2.5D) give an "RGB" image whose
    channels are the slices, each through its own modality LUT and then all through one window, so
    intensities compare across channels: ``window`` when given, else the middle slice's own window
    (or VOI LUT), else the min-max range of the three together; MONOCHROME1 as the middle slice says.

    Raises:
        ImageReadError: "colour volume" when colour slices would be stacked, naming ``name``.
    """
    import numpy as np
    from PIL import Image

    decoded: dict[tuple[int, int | None], Any] = {}
    for dataset, index in slices:  # an edge slice repeated is decoded once
        if (id(dataset), index) not in decoded:
            try:
                decoded[(id(dataset), index)] = _decoded(dataset, name, index)
            except ImageReadError as err:  # a series' slice: say which file
                file = getattr(dataset, "filename", None)
                if not isinstance(file, str) or file == name:
                    raise
                raise ImageReadError(name, err.reason, f"file {Path(file).name}: {err.detail}") from err
    pixels = [decoded[(id(dataset), index)] for dataset, index in slices]
    middle = slices[len(slices) // 2][0]
    if len(pixels) == 1 and _is_colour(pixels[0]):
        return Image.fromarray(_colour_to_8bit(pixels[0], middle))
    if any(_is_colour(p) for p in pixels):
        raise ImageReadError(name, "colour volume", "a colour volume (RGB frames, e.g. ultrasound cine) has no "
                                                    "grayscale slices to stack into channels; volume_context: 0 "
                                                    "reads its chosen slice in colour")
    if any(p.ndim != 2 for p in pixels):
        raise ImageReadError(name, "unreadable", f"unexpected pixel array of shape {pixels[0].shape}")
    from pydicom.pixels import apply_modality_lut

    values = np.stack([apply_modality_lut(p, dataset).astype(np.float64) for p, (dataset, _) in zip(pixels, slices)])
    out = _grey_to_8bit(values, middle, window)
    return Image.fromarray(out[0] if len(out) == 1 else np.moveaxis(out, 0, -1))


def _grey_to_8bit(values, dataset, window: tuple[float, float] | None):
    """Modality values (one slice, or a stack) windowed onto 0..255 as ``read_dicom`` describes."""
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

        looked_up = apply_voi_lut(values, dataset).astype("float64")
        out = _window_to_8bit(looked_up, float(looked_up.min()), float(looked_up.max()))
    else:
        out = _window_to_8bit(values, float(values.min()), float(values.max()))
    if str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


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


def check_volume_channels(data, backbone) -> None:
    """Refuse, before training, a 2.5D stack (three slices in the input channels) for a backbone that reads one
    channel, which would blend its slices into one; ``data`` is a ``LabelledData``."""
    mode = getattr(backbone.preprocessor, "mode", "RGB")  # image preprocessors say "RGB" or "L"
    if data.kind == "image" and data.volume.channels == 3 and mode != "RGB":
        raise ConfigError("volume_context: 1 stacks three slices into the input channels, but this backbone reads "
                          "one channel; use a 3-channel backbone, or volume_context: 0")


def _has_medical_decoders() -> bool:
    """Whether the ``medical`` extra's decoders (pylibjpeg) are installed."""
    import importlib.util

    try:
        return importlib.util.find_spec("pylibjpeg") is not None
    except ValueError:  # hidden (sys.modules entry None)
        return False
