"""Medical images: DICOM reading, manifests, patient-grouped splits, bad-image policy, medical preset.

DICOM files are pydicom's bundled test files (no download), copied under new names.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402

from hf_adapt.data import DataSpec, group_folds, load_labelled  # noqa: E402
from hf_adapt.dicom import is_dicom, read_dicom, to_8bit  # noqa: E402
from hf_adapt.errors import ConfigError, DataError  # noqa: E402
from hf_adapt.images import open_image  # noqa: E402


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns on some of its odd test files
        yield


def _pixels(path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array.astype(np.float64)


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """pydicom's own LINEAR windowing (DICOM PS3.3 C.11.2.1.2) of ``values``, rescaled to 0..255."""
    from pydicom.dataset import Dataset
    from pydicom.pixels import apply_windowing

    ds = Dataset()
    ds.PhotometricInterpretation, ds.BitsStored, ds.PixelRepresentation = "MONOCHROME2", 16, 1
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = center, width, "LINEAR"
    low, high = -(2 ** 15), 2 ** 15 - 1  # apply_windowing's output range for these header values
    out = apply_windowing(values.astype(np.float64), ds)
    return np.rint((out - low) / (high - low) * 255).astype(np.uint8)


def _copy_with(tmp_path, name: str, out: str, **changes):
    dataset = pydicom.dcmread(get_testdata_file(name))
    for key, value in changes.items():
        setattr(dataset, key, value)
    path = tmp_path / out
    dataset.save_as(path)
    return path


def _mpeg2_copy(tmp_path):
    """CT_small relabelled as MPEG-2 video: pydicom has no decoder for it (nor would any plugin)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import MPEG2MPML

    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    dataset.PixelData = encapsulate([dataset.PixelData])
    dataset["PixelData"].VR = "OB"
    path = tmp_path / "mpeg2.dcm"
    dataset.save_as(path)
    return path


# ----------------------------------------------------------------------------- read_dicom


def test_ct_is_rescaled_then_windowed():
    path = get_testdata_file("CT_small.dcm")
    hounsfield = _pixels(path) * 1 - 1024  # RescaleSlope 1, RescaleIntercept -1024
    image = read_dicom(path, window=(40, 400))  # soft-tissue window, in Hounsfield units
    assert image.mode == "L" and image.size == (128, 128)
    assert np.array_equal(np.asarray(image), _window(hounsfield, 40, 400))
    # no window in the file: its full range
    full = np.asarray(read_dicom(path))
    assert full.min() == 0 and full.max() == 255
    assert not np.array_equal(full, np.asarray(image))  # the explicit window changed the pixels


@pytest.mark.parametrize("center, width", [(40, 400), (40, 10), (40, 2)])
def test_windowing_follows_the_dicom_standard_even_for_narrow_windows(center, width):
    path = get_testdata_file("CT_small.dcm")
    hounsfield = _pixels(path) - 1024
    ours = np.asarray(read_dicom(path, window=(center, width))).astype(int)
    assert np.abs(ours - _window(hounsfield, center, width).astype(int)).max() <= 1  # float rounding at .5


def test_file_window_is_used_and_explicit_window_wins():
    path = get_testdata_file("MR_small.dcm")  # WindowCenter 600, WindowWidth 1600
    assert np.array_equal(np.asarray(read_dicom(path)), _window(_pixels(path), 600, 1600))
    narrow = np.asarray(read_dicom(path, window=(1000, 200)))
    assert np.array_equal(narrow, _window(_pixels(path), 1000, 200))


def test_multi_valued_window_takes_the_first(tmp_path):
    path = _copy_with(tmp_path, "MR_small.dcm", "two_windows.dcm", WindowCenter=[300, 900], WindowWidth=[400, 100])
    assert np.array_equal(np.asarray(read_dicom(path)), _window(_pixels(path), 300, 400))


def test_monochrome1_is_inverted(tmp_path):
    normal = np.asarray(read_dicom(get_testdata_file("CT_small.dcm")))
    path = _copy_with(tmp_path, "CT_small.dcm", "mono1.dcm", PhotometricInterpretation="MONOCHROME1")
    assert np.array_equal(np.asarray(read_dicom(path)), 255 - normal)


def test_compressed_files_that_decode_here_match_the_uncompressed_one():
    plain = np.asarray(read_dicom(get_testdata_file("MR_small.dcm")))
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):
        try:
            image = read_dicom(get_testdata_file(name))
        except DataError as err:
            assert err.reason == "unsupported transfer syntax"  # no decoder here for this one
            continue
        assert np.array_equal(np.asarray(image), plain), name


def test_colour_files_are_rgb():
    small = read_dicom(get_testdata_file("SC_rgb_small_odd.dcm"))
    assert small.mode == "RGB" and small.size == (3, 3)
    expected = pydicom.dcmread(get_testdata_file("SC_rgb_small_odd.dcm")).pixel_array
    assert np.array_equal(np.asarray(small), expected)
    assert read_dicom(get_testdata_file("examples_rgb_color.dcm")).mode == "RGB"
    ybr = read_dicom(get_testdata_file("SC_ybr_full_422_uncompressed.dcm"))  # YBR converted to RGB
    assert ybr.mode == "RGB" and ybr.size == (100, 100)


def test_multi_frame_gives_the_middle_frame():
    path = get_testdata_file("SC_rgb_rle_2frame.dcm")
    frames = pydicom.dcmread(path).pixel_array
    assert np.array_equal(np.asarray(read_dicom(path)), frames[1])
    assert not np.array_equal(frames[0], frames[1])


@pytest.mark.parametrize(("make", "reason", "words"), [
    (lambda tmp: get_testdata_file("rtplan.dcm"), "no pixel data", r"rtplan\.dcm: no pixel data.*RT Plan"),
    (lambda tmp: get_testdata_file("MR_truncated.dcm"), "truncated", r"MR_truncated\.dcm: truncated file"),
    (_mpeg2_copy, "unsupported transfer syntax",
     r"mpeg2\.dcm: unsupported transfer syntax 1\.2\.840\.10008\.1\.2\.4\.100 \(MPEG2 Main Profile / Main Level\).*pylibjpeg"),
    (lambda tmp: _write(tmp / "notes.dcm", b"hello, not a scan"), "not an image", r"notes\.dcm: not a DICOM file"),
    (lambda tmp: tmp / "absent.dcm", "missing file", r"absent\.dcm: file not found"),
])
def test_bad_dicom_files_say_why(tmp_path, make, reason, words):
    with pytest.raises(DataError, match=words) as caught:
        read_dicom(make(tmp_path))
    assert caught.value.reason == reason


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_is_dicom_by_suffix_or_magic(tmp_path):
    bare = tmp_path / "IM0001"
    shutil.copy(get_testdata_file("CT_small.dcm"), bare)
    png = tmp_path / "a.png"
    to_8bit(_gradient_16bit()).save(png)
    assert is_dicom(bare) and is_dicom(tmp_path / "whatever.DCM") and not is_dicom(png)
    assert open_image(str(bare), "x").mode == "L" and open_image(str(png), "x").mode == "L"


def _gradient_16bit():
    from PIL import Image

    return Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 8 + 1000)  # 1000..33760


def test_16_bit_images_are_scaled_not_clipped():
    image = _gradient_16bit()
    assert image.mode.startswith("I;16")
    assert np.asarray(image.convert("L")).min() == 255  # what PIL alone would give: all white
    scaled = np.asarray(to_8bit(image))
    assert scaled.min() == 0 and scaled.max() == 255 and len(np.unique(scaled)) == 256


# ----------------------------------------------------------------------------- manifests


_SOURCES = {"ct": "CT_small.dcm", "mr": "MR_small.dcm"}


def _manifest(tmp_path, patients: int = 20, per_patient: int = 2, name: str = "manifest.csv") -> pd.DataFrame:
    """A manifest of DICOM copies: patient p's scans are all CT (even p) or all MR (odd p)."""
    folder = tmp_path / "scans"
    folder.mkdir(exist_ok=True)
    rows = []
    for patient in range(patients):
        label = "ct" if patient % 2 == 0 else "mr"
        for scan in range(per_patient):
            file = folder / f"p{patient:02d}_{scan}.dcm"
            shutil.copy(get_testdata_file(_SOURCES[label]), file)
            rows.append({"path": f"scans/{file.name}", "label": label, "patient_id": f"P{patient:02d}",
                         "site": "A" if patient < patients // 2 else "B"})
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / name, index=False)
    return frame


def _patients(data, split: str) -> set[str]:
    return set(data.splits[split]["patient_id"])


def test_manifest_of_dicom_files_splits_by_patient(tmp_path):
    _manifest(tmp_path)
    spec = DataSpec(source=str(tmp_path / "manifest.csv"), group_column="patient_id", test_size=0.25,
                    validation_size=0.2)
    data = load_labelled(spec)
    assert data.kind == "image" and data.input_column == "path" and data.labels == ["ct", "mr"]
    assert sum(data.origin["splits"].values()) == 40
    train, validation, test = (_patients(data, s) for s in ("train", "validation", "test"))
    assert not (train & validation or train & test or validation & test)  # no patient in two splits
    for split in ("train", "validation", "test"):
        assert set(data.label_counts(split).values()) != {0}
        assert all(v > 0 for v in data.label_counts(split).values()), split  # both classes in every split
    assert data.origin["grouped_by"] == "patient_id"
    assert "grouped by patient_id: no patient in two splits" in data.origin["split_method"]
    images = data.inputs("train", "image")
    assert len(images) == len(data.splits["train"]) and images[0].mode == "L"
    assert {im.size for im in images} == {(128, 128), (64, 64)}
    # same seed, same split; the group split does not depend on row order within the file
    assert _patients(load_labelled(spec), "test") == test


def test_dicom_window_reaches_training_and_prediction_pixels(tmp_path):
    _manifest(tmp_path, patients=8)
    spec = DataSpec(source=str(tmp_path / "manifest.csv"), dicom_window=[40, 400])
    data = load_labelled(spec)
    assert data.dicom_window == [40, 400] and data.origin["dicom_window"] == [40, 400]
    plain = load_labelled(DataSpec(source=str(tmp_path / "manifest.csv")))
    assert plain.origin["dicom_window"] is None and plain.dicom_window is None
    path = data.splits["test"]["path"][0]
    assert path.startswith(str(tmp_path))  # relative manifest paths resolved against its folder
    windowed = data.inputs("test", "image")[0]
    assert np.array_equal(np.asarray(windowed), np.asarray(open_image(path, "x", data.dicom_window)))
    assert not np.array_equal(np.asarray(windowed), np.asarray(plain.inputs("test", "image")[0]))


def test_missing_manifest_files_are_listed_or_skipped(tmp_path, caplog):
    frame = _manifest(tmp_path)
    for row in (3, 17, 30):
        (tmp_path / frame.loc[row, "path"]).unlink()
    spec = DataSpec(source=str(tmp_path / "manifest.csv"), group_column="patient_id")
    with pytest.raises(DataError, match=r"of \d+ image files not found: manifest row (3|17|30): .*p\d\d_\d\.dcm"):
        load_labelled(spec)
    with caplog.at_level(logging.WARNING, logger="hf_adapt.data"):
        data = load_labelled(DataSpec(**{**spec.__dict__, "on_bad_image": "skip"}))
    assert sum(data.origin["splits"].values()) == 37
    skipped = data.origin["skipped_images"]
    assert sum(n["missing file"] for n in skipped.values()) == 3
    assert any("skipped" in r.message and "missing file" in r.message for r in caplog.records)


def test_bad_dicom_rows_fail_by_name_or_are_counted(tmp_path, caplog):
    frame = _manifest(tmp_path, patients=10)
    shutil.copy(get_testdata_file("rtplan.dcm"), tmp_path / frame.loc[0, "path"])
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / frame.loc[1, "path"])
    shutil.copy(get_testdata_file("MR_truncated.dcm"), tmp_path / frame.loc[2, "path"])
    frame.loc[:5].to_csv(tmp_path / "test.csv", index=False)  # 3 bad rows, 3 good ones
    frame.loc[6:].to_csv(tmp_path / "train.csv", index=False)
    files = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}
    with pytest.raises(DataError, match=r"split 'test' manifest row 0 \(.*p00_0\.dcm\): no pixel data"):
        load_labelled(DataSpec(source="", data_files=files))
    with caplog.at_level(logging.WARNING, logger="hf_adapt.data"):
        data = load_labelled(DataSpec(source="", data_files=files, on_bad_image="skip"))
    assert data.origin["skipped_images"] == {"test": {"no pixel data": 1, "truncated": 2}} or \
        data.origin["skipped_images"] == {"test": {"truncated": 2, "no pixel data": 1}}
    assert "split 'test': skipped 3 unreadable images (1 no pixel data, 2 truncated)" in caplog.text
    sizes = data.origin["splits"]
    assert sizes["test"] == 3 and sizes["train"] + sizes["validation"] == 14  # nothing dropped elsewhere


def test_a_split_left_empty_by_skipping_fails(tmp_path):
    frame = _manifest(tmp_path, patients=4, per_patient=1)
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.assign(path="scans/nowhere.dcm").to_csv(tmp_path / "test.csv", index=False)
    files = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}
    with pytest.raises(DataError, match=r"split 'test': all 4 images are unreadable \(4 missing file\)"):
        load_labelled(DataSpec(source="", data_files=files, on_bad_image="skip", validation_size=0.5))


def test_patient_in_two_given_splits_is_refused(tmp_path):
    frame = _manifest(tmp_path, patients=10)
    frame[frame.patient_id <= "P05"].to_csv(tmp_path / "train.csv", index=False)
    frame[frame.patient_id >= "P05"].to_csv(tmp_path / "test.csv", index=False)  # P05 in both
    files = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}
    with pytest.raises(DataError, match=r"group column 'patient_id': 'P05' appears in splits \['train', 'test'\]; "
                                        r"1 patient_id value\(s\) are in more than one split"):
        load_labelled(DataSpec(source="", data_files=files, group_column="patient_id"))
    load_labelled(DataSpec(source="", data_files=files))  # without a group column: used as given


def test_group_column_must_exist_and_be_filled(tmp_path):
    frame = _manifest(tmp_path, patients=6)
    with pytest.raises(DataError, match=r"group column 'subject' not found in split 'train'"):
        load_labelled(DataSpec(source=str(tmp_path / "manifest.csv"), group_column="subject"))
    frame.loc[4, "patient_id"] = None
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"split 'train' row 4: group column 'patient_id' is empty"):
        load_labelled(DataSpec(source=str(tmp_path / "manifest.csv"), group_column="patient_id"))


def test_folder_of_dicom_class_subfolders(tmp_path):
    for label, name in _SOURCES.items():
        (tmp_path / label).mkdir()
        for i in range(8):
            shutil.copy(get_testdata_file(name), tmp_path / label / f"{i}.dcm")
    shutil.copy(get_testdata_file("MR_small.dcm"), tmp_path / "mr" / "IM0009")  # DICOM without a suffix
    data = load_labelled(DataSpec(source=str(tmp_path), test_size=0.25, validation_size=0.25))
    assert data.kind == "image" and data.labels == ["ct", "mr"]
    assert sum(data.origin["splits"].values()) == 17
    images = data.inputs("test", "image")
    assert all(im.mode == "L" for im in images)


# ----------------------------------------------------------------------------- folds


def test_group_folds_keep_groups_whole_and_classes_balanced():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), 3)
    labels = np.repeat(rng.permutation([0] * 20 + [1] * 10), 3)  # one label per patient, 2:1
    folds = group_folds(labels, groups, k=5, seed=0)
    assert len(folds) == 5
    assert sorted(np.concatenate([held for _, held in folds]).tolist()) == list(range(90))
    for train, held in folds:
        assert not set(groups[train]) & set(groups[held])
        assert np.mean(labels[held]) == pytest.approx(1 / 3, abs=0.15)
    again = group_folds(labels, groups, k=5, seed=0)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    plain = group_folds(labels, None, k=5, seed=0)
    assert all(np.mean(labels[held]) == pytest.approx(1 / 3, abs=0.05) for _, held in plain)


def test_group_folds_refuse_too_few_rows_or_groups():
    labels = np.array([0] * 10 + [1] * 3)
    with pytest.raises(DataError, match=r"5-fold cross-validation needs at least 5 rows of every class; class 'b' has 3"):
        group_folds(labels, None, k=5, seed=0, names=["a", "b"])
    groups = np.array([f"g{i}" for i in range(10)] + ["h", "h", "i"])
    with pytest.raises(DataError, match=r"class 1 is in 2"):
        group_folds(labels, groups, k=3, seed=0)


# ----------------------------------------------------------------------------- preset


def test_medical_preset_builds_and_round_trips(tmp_path):
    pytest.importorskip("timm")
    from hf_adapt.backbones.timm import TRANSFORM_PRESETS, ImagePreprocessor

    data_config = {"input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5),
                   "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "center"}
    pre = ImagePreprocessor(dict(data_config), "medical")
    described = repr(pre.train_transform)
    assert "Flip" not in described and "RandomErasing" not in described and "scale=(0.85, 1.0)" in described
    pre.save(str(tmp_path))
    settings = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert settings["train_transform_preset"] == "medical"
    assert settings["train_transform"]["hflip"] == 0.0 == settings["train_transform"]["vflip"]
    again = ImagePreprocessor(settings["data_config"], settings["train_transform"])
    assert repr(again.train_transform) == described
    batch = again.collate([_gradient_16bit(), open_image(get_testdata_file("CT_small.dcm"), "x")], train=True)
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    assert batch["pixel_values"][0].std() > 0.1  # the 16-bit image kept its contrast
    assert TRANSFORM_PRESETS["medical"]["re_prob"] == 0.0
    with pytest.raises(ConfigError, match=r"train_transform preset 'xray' is unknown; presets are \['medical'\]"):
        ImagePreprocessor(dict(data_config), "xray")


def test_group_ids_are_never_model_inputs_and_an_ungrouped_patient_column_is_warned(tmp_path, caplog):
    rows = [{"patient_id": f"P{i // 2}", "age": 30 + i, "label": "a" if i % 4 < 2 else "b"} for i in range(40)]
    pd.DataFrame(rows).to_csv(tmp_path / "t.csv", index=False)
    spec = DataSpec(source=str(tmp_path / "t.csv"), group_column="patient_id", text_template=None)
    assert load_labelled(spec).feature_columns == ["age"]
    with pytest.raises(DataError, match="group column 'patient_id' is also a model input"):
        load_labelled(DataSpec(source=str(tmp_path / "t.csv"), group_column="patient_id",
                               feature_columns=["age", "patient_id"]))
    with caplog.at_level("WARNING", logger="hf_adapt.data"):
        load_labelled(DataSpec(source=str(tmp_path / "t.csv"), text_template=None))
    assert "has a 'patient_id' column but no group_column" in caplog.text
