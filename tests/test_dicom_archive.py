"""Every DICOM file of pydicom's test set and of ``pydicom-data`` (compressed ones as hospital archives hand them out):
each reads, or is refused by name with ``ImageReadError``; nothing escapes as another exception. With the ``medical``
extra's decoders, JPEG, JPEG-LS and JPEG 2000 files read; without them they are refused naming the extra."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores

pydicom = pytest.importorskip("pydicom")

COUNT = Path(__file__).resolve().parents[1] / "benchmarks" / "dicom_counts.py"


def _count(*flags: str) -> dict:
    """Read every test file in a fresh interpreter (so decoders can be hidden from it)."""
    run = subprocess.run([sys.executable, str(COUNT), *flags], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_test_file_reads_or_is_refused_by_name():
    pytest.importorskip("pylibjpeg", reason="the medical extra is not installed: pip install -e '.[medical]'")
    found = _count()
    counts = found["counts"]
    assert found["escaped"] == [], found["escaped"]
    assert counts["read"] >= 50 and sum(counts.values()) >= 80, counts
    # the compressed syntaxes the medical extra decodes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pydicom.data import get_testdata_file

        from hf_adapt.dicom import read_dicom

        for name in ("JPEG2000.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG-LL.dcm", "SC_rgb_jpeg_dcmtk.dcm"):
            assert read_dicom(get_testdata_file(name)).size[0] > 0, name
    lossy = found["refused"].get("JPEG-lossy.dcm")  # decoders installed, and this file beats them
    assert lossy is None or ("installed decoders could not decode" in lossy and "hf-adapt[medical]" not in lossy)
    bad = found["refused"].get("badVR.dcm")
    assert bad and "malformed value" in bad  # a malformed value: named, not a bare ValueError
    if "no pixel data" in counts:
        assert counts["no pixel data"] == sum("no pixel data" in m for m in found["refused"].values())


def test_without_decoders_compressed_files_are_refused_naming_the_extra():
    found = _count("--without-decoders")
    assert found["escaped"] == [], found["escaped"]
    refused = [message for message in found["refused"].values() if "unsupported transfer syntax" in message]
    assert refused and all("hf-adapt[medical]" in message for message in refused)
    assert collections.Counter(found["counts"])["unsupported transfer syntax"] == len(refused)
