"""DICOM volumes: multi-frame files and series folders read as a chosen slice, the middle slice or a 2.5D stack,
and series with inconsistent geometry refused by name.

Multi-frame files are pydicom's own test files. Series are real DICOM written by pydicom: slices of its test CT
(CT_small.dcm) with their own positions and pixel offsets, so every slice is told apart by its pixels.
"""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.pixels import apply_modality_lut  # noqa: E402

from hf_adapt.dicom import ImageReadError, VolumeReading, read_dicom, voi_window  # noqa: E402
from hf_adapt.dicom_series import read_series  # noqa: E402
from hf_adapt.errors import ConfigError  # noqa: E402
from hf_adapt.images import open_image  # noqa: E402

WINDOW = (1000, 4000)  # wide enough that the slices' pixel offsets stay apart
SPACING = 2.5  # mm between the written slices
OFFSET = 200  # each slice's pixels are the CT's plus OFFSET times its place along the normal


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns on some of its odd test files
        yield


def write_series(folder, count: int = 5, change=None, *, positions=None):
    """``count`` slices of CT_small in ``folder``, slice k at z = k * SPACING with pixels + k * OFFSET.

    File names and InstanceNumbers run against the anatomy (IM{count-1-k}.dcm, instance count - k), so only
    ImagePositionPatient gives the right order. ``change(k, dataset)`` alters slice k before it is written.
    Returns the file names in anatomical order.
    """
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    folder.mkdir(parents=True, exist_ok=True)
    x, y, _ = (float(v) for v in source.ImagePositionPatient)
    names = []
    for k in range(count):
        dataset = copy.deepcopy(source)
        z = k * SPACING if positions is None else positions[k]
        dataset.ImagePositionPatient = [x, y, z]
        dataset.SliceLocation = z
        dataset.InstanceNumber = count - k
        dataset.SOPInstanceUID = pydicom.uid.generate_uid()
        dataset.PixelData = (source.pixel_array + k * OFFSET).astype(source.pixel_array.dtype).tobytes()
        if change is not None:
            change(k, dataset)
        name = f"IM{count - 1 - k}.dcm"
        dataset.save_as(folder / name)
        names.append(name)
    return names


def _slice(folder, name) -> np.ndarray:
    return np.asarray(read_dicom(folder / name, WINDOW))


# ----------------------------------------------------------------------------- VolumeReading


def test_picks_clamp_neighbours_at_the_edges_and_refuse_a_slice_outside():
    assert VolumeReading().picks(10, "v") == [5] and VolumeReading().picks(9, "v") == [4]
    assert VolumeReading(slice=0, context=1).picks(10, "v") == [0, 0, 1]
    assert VolumeReading(slice=-1, context=1).picks(10, "v") == [8, 9, 9]
    assert VolumeReading(slice=3, context=1).picks(1, "v") == [0]  # a 2D image is read as it is
    with pytest.raises(ImageReadError, match=r"^scan\.dcm: no slice 10: the volume has 10 slices") as caught:
        VolumeReading(slice=10).picks(10, "scan.dcm")
    assert caught.value.reason == "no such slice"
    with pytest.raises(ImageReadError, match="no slice -11"):
        VolumeReading(slice=-11).picks(10, "v")
    assert VolumeReading.from_info({}) == VolumeReading()  # a model saved before these keys: the middle slice
    assert VolumeReading.from_info(VolumeReading(-2, 1).info()) == VolumeReading(-2, 1)
    with pytest.raises(ConfigError, match="volume_context must be 0 .* or 1 .*wider stacks have no channels"):
        VolumeReading(context=2)


# ----------------------------------------------------------------------------- multi-frame files


def _frames(name: str, window=WINDOW) -> np.ndarray:
    """Each frame of a pydicom test file through its modality LUT and ``window``, as 8-bit."""
    dataset = pydicom.dcmread(get_testdata_file(name))
    return voi_window(apply_modality_lut(dataset.pixel_array, dataset), *window)


def test_multi_frame_mr_gives_the_middle_a_chosen_slice_or_a_stack():
    path = get_testdata_file("emri_small.dcm")  # 10 frames of 64 x 64 MR
    frames = _frames("emri_small.dcm", (500, 1000))
    assert len({frame.tobytes() for frame in frames}) == 10  # every frame differs from the others
    middle = read_dicom(path, (500, 1000))
    assert middle.mode == "L" and np.array_equal(np.asarray(middle), frames[5])
    assert np.array_equal(np.asarray(read_dicom(path, (500, 1000), VolumeReading(slice=2))), frames[2])
    stack = read_dicom(path, (500, 1000), VolumeReading(slice=-1, context=1))
    assert stack.mode == "RGB" and stack.size == (64, 64)
    assert np.array_equal(np.asarray(stack), np.stack([frames[8], frames[9], frames[9]], axis=-1))
    with pytest.raises(ImageReadError, match=r"emri_small\.dcm: no slice 12: the volume has 10 slices"):
        read_dicom(path, volume=VolumeReading(slice=12))


def test_a_stack_shares_one_window_so_intensities_compare_across_channels():
    path = get_testdata_file("emri_small.dcm")  # no window in the file: the three slices' joint range
    stack = np.asarray(read_dicom(path, volume=VolumeReading(slice=4, context=1))).astype(int)
    raw = pydicom.dcmread(path).pixel_array[3:6].astype(float)
    low, high = raw.min(), raw.max()
    assert stack.min() == 0 and stack.max() == 255
    expected = np.rint((raw - low) / (high - low) * 255).astype(int)
    assert np.array_equal(stack, np.moveaxis(expected, 0, -1))


def test_compressed_multi_frame_reads_like_the_uncompressed_one():
    pytest.importorskip("pylibjpeg", reason="the medical extra is not installed")
    plain = read_dicom(get_testdata_file("emri_small.dcm"), volume=VolumeReading(slice=7, context=1))
    packed = read_dicom(get_testdata_file("emri_small_jpeg_ls_lossless.dcm"), volume=VolumeReading(slice=7, context=1))
    assert np.array_equal(np.asarray(plain), np.asarray(packed))


def test_colour_frames_are_read_in_colour_and_not_stacked():
    path = get_testdata_file("SC_rgb_2frame.dcm")
    frames = pydicom.dcmread(path).pixel_array
    assert np.array_equal(np.asarray(read_dicom(path, volume=VolumeReading(slice=0))), frames[0])
    with pytest.raises(ImageReadError, match=r"SC_rgb_2frame\.dcm: a colour volume .* volume_context: 0") as caught:
        read_dicom(path, volume=VolumeReading(context=1))
    assert caught.value.reason == "colour volume"


# ----------------------------------------------------------------------------- series folders


def test_a_series_is_ordered_by_position_not_by_name_or_instance_number(tmp_path):
    names = write_series(tmp_path / "series")
    folder = tmp_path / "series"
    slices = [_slice(folder, name) for name in names]
    assert np.array_equal(np.asarray(read_series(folder, WINDOW)), slices[2])  # the middle slice
    assert np.array_equal(np.asarray(read_series(folder, WINDOW, VolumeReading(slice=0))), slices[0])
    stack = read_series(folder, WINDOW, VolumeReading(slice=1, context=1))
    assert stack.mode == "RGB" and stack.size == (128, 128)
    assert np.array_equal(np.asarray(stack), np.stack(slices[:3], axis=-1))
    edge = np.asarray(read_series(folder, WINDOW, VolumeReading(slice=-1, context=1)))
    assert np.array_equal(edge, np.stack([slices[3], slices[4], slices[4]], axis=-1))
    # open_image, which training and prediction use, reads a folder the same way
    assert np.array_equal(np.asarray(open_image(str(folder), "row 0", list(WINDOW), VolumeReading(1, 1))),
                          np.asarray(stack))


def test_slices_are_ordered_along_the_normal_of_an_oblique_or_sagittal_series(tmp_path):
    def sagittal(k, dataset):  # rows along y, columns along -z: the normal is -x, so x falling is forward
        dataset.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        dataset.ImagePositionPatient = [-k * SPACING, 0, 0]

    names = write_series(tmp_path / "sag", change=sagittal)
    assert np.array_equal(np.asarray(read_series(tmp_path / "sag", WINDOW, VolumeReading(slice=0))),
                          _slice(tmp_path / "sag", names[0]))


def test_without_positions_slices_are_ordered_by_instance_number_with_a_warning(tmp_path, caplog):
    def unplaced(k, dataset):
        del dataset.ImagePositionPatient

    names = write_series(tmp_path / "s", change=unplaced)
    with caplog.at_level(logging.WARNING, logger="hf_adapt.data"):
        first = read_series(tmp_path / "s", WINDOW, VolumeReading(slice=0))
    assert np.array_equal(np.asarray(first), _slice(tmp_path / "s", names[-1]))  # InstanceNumber 1
    assert any("ordered by InstanceNumber" in r.message for r in caplog.records)


def _orientation(k, dataset):
    if k == 3:
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 0.866025, -0.5]


def _spacing(k, dataset):
    if k == 3:
        dataset.PixelSpacing = [0.7, 0.7]


def _shape(k, dataset):
    if k == 3:
        dataset.Rows, dataset.Columns = 64, 64
        dataset.PixelData = dataset.pixel_array[:64, :64].tobytes()


def _series_uid(k, dataset):
    if k == 3:
        dataset.SeriesInstanceUID = "1.2.3.4"


def _one_unplaced(k, dataset):
    if k == 3:
        del dataset.ImagePositionPatient


@pytest.mark.parametrize(("change", "positions", "words"), [
    (_orientation, None, r"file IM1\.dcm has ImageOrientationPatient \[1\.0, 0\.0, 0\.0, 0\.0, 0\.866025, -0\.5\], "
                         r"IM0\.dcm \[1\.0, 0\.0, 0\.0, 0\.0, 1\.0, 0\.0\]"),
    (_spacing, None, r"file IM1\.dcm has PixelSpacing \[0\.7, 0\.7\], IM0\.dcm \[0\.661468, 0\.661468\]"),
    (_shape, None, r"file IM1\.dcm has Rows x Columns 64 x 64, IM0\.dcm 128 x 128"),
    (_series_uid, None, r"file IM1\.dcm has SeriesInstanceUID 1\.2\.3\.4, IM0\.dcm 1\.3\.6.*holds one series"),
    (_one_unplaced, None, r"file IM1\.dcm has no ImagePositionPatient, IM0\.dcm has one"),
    (None, [0, 2.5, 5, 10, 12.5], r"the gap between files IM2\.dcm and IM1\.dcm is 5 mm, where the series' slices "
                                  r"are 2\.5 mm apart \(tolerance 10%\); a slice is missing or extra"),
    (None, [0, 2.5, 5, 5, 7.5], r"files IM[12]\.dcm and IM[12]\.dcm stand at one position along the slice "
                                 r"normal \(ImagePositionPatient \[-158\.135803, -179\.035797, 5\.0\]\)"),
])
def test_inconsistent_geometry_is_refused_naming_the_folder_the_file_and_the_reason(tmp_path, change, positions,
                                                                                   words):
    write_series(tmp_path / "series", change=change, positions=positions)
    folder = tmp_path / "series"
    with pytest.raises(ImageReadError, match=rf"^{folder}: inconsistent series: {words}") as caught:
        read_series(folder)
    assert caught.value.reason == "inconsistent series"


def test_uneven_gaps_within_the_tolerance_are_accepted(tmp_path):
    write_series(tmp_path / "s", positions=[0, 2.5, 5.1, 7.5, 10])  # 4 % off: rounding in the scanner's positions
    assert read_series(tmp_path / "s").size == (128, 128)


def test_folders_that_are_not_one_series_are_refused_by_name(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with pytest.raises(ImageReadError, match=rf"^{empty}: a folder holding no DICOM files \(it has subfolders"):
        read_series(empty)
    write_series(tmp_path / "notes")
    (tmp_path / "notes" / "notes.txt").write_text("not a slice")
    with pytest.raises(ImageReadError, match=r"notes: file notes\.txt is not a DICOM file") as caught:
        read_series(tmp_path / "notes")
    assert caught.value.reason == "not an image"
    write_series(tmp_path / "multi")
    (tmp_path / "multi" / "IM0.dcm").write_bytes(open(get_testdata_file("emri_small.dcm"), "rb").read())
    with pytest.raises(ImageReadError, match=r"multi: inconsistent series: file IM0\.dcm holds 10 frames; a series "
                                             r"folder holds one slice per file"):
        read_series(tmp_path / "multi", volume=VolumeReading(slice=0))  # found though IM0 is not the slice picked
    outside = tmp_path / "elsewhere.dcm"
    write_series(tmp_path / "linked", count=3)
    (tmp_path / "linked" / "IM0.dcm").rename(outside)
    (tmp_path / "linked" / "IM0.dcm").symlink_to(outside)
    with pytest.raises(ImageReadError, match=r"linked: file IM0\.dcm is a link to .*elsewhere\.dcm, outside"):
        read_series(tmp_path / "linked")


def test_a_damaged_picked_slice_names_the_folder_and_the_file(tmp_path):
    names = write_series(tmp_path / "s")
    path = tmp_path / "s" / names[2]
    path.write_bytes(path.read_bytes()[:-5000])  # the middle slice's pixel data cut short
    with pytest.raises(ImageReadError, match=rf"^{tmp_path / 's'}: file {names[2]}: truncated") as caught:
        read_series(tmp_path / "s")
    assert caught.value.reason == "truncated"
    assert read_series(tmp_path / "s", volume=VolumeReading(slice=0)).size == (128, 128)  # only picked ones decode


# ----------------------------------------------------------------------------- the data path and the config


def _tilted(k, dataset):
    if k == 1:
        dataset.ImageOrientationPatient = [1, 0, 0, 0, 0.866025, -0.5]


def _series_manifest(tmp_path, count: int = 10, broken: int | None = None) -> None:
    """A manifest whose rows name series folders (no image_column: the path column is found by itself)."""
    import pandas as pd

    rows = []
    for i in range(count):
        write_series(tmp_path / "series" / f"s{i}", count=3, change=_tilted if i == broken else None)
        rows.append({"path": f"series/s{i}", "label": "a" if i % 2 else "b"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)


def test_a_manifest_of_series_folders_trains_on_2_5d_stacks(tmp_path):
    from hf_adapt.data import DataSpec, load_labelled

    _series_manifest(tmp_path)
    spec = DataSpec(source=str(tmp_path / "manifest.csv"), volume=VolumeReading(context=1), dicom_window=list(WINDOW),
                    test_size=0.2, validation_size=0.2)
    data = load_labelled(spec)
    assert data.input_column == "path" and data.volume == VolumeReading(context=1)
    images = data.inputs("train", "image")
    folder = data.splits["train"]["path"][0]
    slices = [np.asarray(read_dicom(f"{folder}/IM{k}.dcm", WINDOW)) for k in (2, 1, 0)]  # IM2 is slice 0
    assert np.array_equal(np.asarray(images[0]), np.stack(slices, axis=-1))


def test_an_inconsistent_series_in_a_manifest_is_named_by_row_folder_and_file_or_counted(tmp_path, caplog):
    from hf_adapt.data import DataSpec, load_labelled
    from hf_adapt.errors import DataError

    _series_manifest(tmp_path, broken=3)
    spec = DataSpec(source=str(tmp_path / "manifest.csv"), test_size=0.2, validation_size=0.2)
    with pytest.raises(DataError, match=r"manifest row 3 \(.*series/s3\): inconsistent series: file IM1\.dcm has "
                                        r"ImageOrientationPatient"):
        load_labelled(spec)
    with caplog.at_level(logging.WARNING, logger="hf_adapt.data"):
        data = load_labelled(DataSpec(**{**spec.__dict__, "on_bad_image": "skip"}))
    assert sum(data.origin["splits"].values()) == 9
    assert sum(n.get("inconsistent series", 0) for n in data.origin["skipped_images"].values()) == 1


def test_explain_prediction_and_uploads_read_volumes_as_the_model_was_trained(tmp_path):
    from hf_adapt.explain import read_input
    from hf_adapt.inputs import check_inputs

    write_series(tmp_path / "s")
    info = {"kind": "image", "dicom_window": list(WINDOW), "volume_slice": 0, "volume_context": 1}
    expected = np.asarray(read_series(tmp_path / "s", WINDOW, VolumeReading(0, 1)))
    image, named = read_input(str(tmp_path / "s"), info)
    assert np.array_equal(np.asarray(image), expected) and named == {"path": str(tmp_path / "s")}
    assert np.array_equal(np.asarray(check_inputs(str(tmp_path / "s"), info)[0]), expected)
    assert check_inputs(str(tmp_path / "s"), {"kind": "image"})[0].mode == "L"  # a model saved before: middle slice
    mr = get_testdata_file("emri_small.dcm")  # an uploaded multi-frame file's bytes, as the server hands them on
    uploaded = check_inputs(open(mr, "rb").read(), info)[0]
    assert np.array_equal(np.asarray(uploaded), np.asarray(read_dicom(mr, WINDOW, VolumeReading(0, 1))))


@pytest.mark.parametrize(("values", "words"), [
    ({"volume_slice": "first"}, "volume_slice must be 'middle' or a slice index"),
    ({"volume_slice": True}, "volume_slice must be 'middle' or a slice index"),
    ({"volume_context": 2}, "volume_context must be 0 .* or 1 .*wider stacks have no channels"),
])
def test_bad_volume_settings_fail_when_the_config_is_read(values, words):
    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match=words):
        config_from_dict(FinetuneConfig, values)
    assert config_from_dict(FinetuneConfig, {"volume_slice": -1}).volume_slice == -1
