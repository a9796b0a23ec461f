"""Read every DICOM file of pydicom's test set and of ``pydicom-data`` with :func:`hf_adapt.dicom.read_dicom`; print
one JSON line: how many read, how many were refused by name (``ImageReadError``, by reason), and which escaped as
another exception (there should be none).

    python benchmarks/dicom_counts.py                       # with whatever decoders are installed
    python benchmarks/dicom_counts.py --without-decoders    # as on a machine without the medical extra

Used by ``benchmarks/tasks.py --part dicom`` (the before/after table) and ``tests/test_dicom_archive.py``.
"""

import collections
import json
import logging
import os
import sys
import warnings


def main() -> None:
    if "--without-decoders" in sys.argv:  # hidden before pydicom looks for them
        for name in ("pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm"):
            sys.modules[name] = None
    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    from pydicom.data import get_testdata_files

    from hf_adapt.dicom import ImageReadError, read_dicom

    counts, refused, escaped = collections.Counter(), {}, []
    for path in sorted({f for f in get_testdata_files("*") if os.path.isfile(f)}):
        try:
            read_dicom(path)
            counts["read"] += 1
        except ImageReadError as err:
            counts[err.reason] += 1
            refused[os.path.basename(path)] = str(err)
        except Exception as err:  # noqa: BLE001 - what this counts
            escaped.append(f"{os.path.basename(path)}: {type(err).__name__}: {err}")
    print(json.dumps({"counts": counts, "refused": refused, "escaped": escaped}))


if __name__ == "__main__":
    main()
