"""A 2.5D run end to end: a manifest whose rows name CT series folders and multi-frame MR files, a tiny timm
model fine-tuned on slices i-1, i, i+1 as its three channels, then reloaded with ``load_adapted``, which reads
the same folders and files into the same pixels and predictions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

import hf_adapt
from hf_adapt.errors import ConfigError
from tests.conftest import train_finetune
from tests.test_dicom_volumes import write_series

pydicom = pytest.importorskip("pydicom")


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    import logging

    logging.getLogger("pydicom").setLevel(logging.ERROR)


def _volumes(tmp_path, count: int = 8) -> pd.DataFrame:
    """``count`` CT series folders (3 slices each) labelled ct and ``count`` multi-frame MR files labelled mr."""
    from pydicom.data import get_testdata_file

    rows = []
    for i in range(count):
        write_series(tmp_path / "scans" / f"ct{i}", count=3)
        rows.append({"path": f"scans/ct{i}", "label": "ct"})
        shutil.copy(get_testdata_file("emri_small.dcm"), tmp_path / "scans" / f"mr{i}.dcm")
        rows.append({"path": f"scans/mr{i}.dcm", "label": "mr"})
    frame = pd.DataFrame(rows)
    frame.to_csv(tmp_path / "manifest.csv", index=False)
    return frame


def _values(model, tmp_path, **overrides) -> dict:
    return dict(model_name_or_path=str(model), data=str(tmp_path / "manifest.csv"), label_column="label",
                reset_head=True, image_size=32, volume_context=1, validation_size=0.25, test_size=0.25,
                adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8}, bootstrap_resamples=0, card_examples=1,
                **overrides)


def test_a_2_5d_run_reloads_to_the_same_pixels_and_predictions(tiny_timm_convnet, tmp_path):
    from hf_adapt.config import config_from_dict
    from hf_adapt.inputs import check_inputs
    from hf_adapt.recipes.finetune import FinetuneConfig, main

    _volumes(tmp_path)
    result = main(config_from_dict(FinetuneConfig, {
        **_values(tiny_timm_convnet, tmp_path), "num_train_epochs": 1, "per_device_train_batch_size": 4,
        "report_to": "none", "torch_num_threads": 1, "license": "apache-2.0", "output_dir": str(tmp_path / "out")}))
    info = json.loads((result.output_dir / "hf_adapt.json").read_text())
    assert info["data"]["volume_slice"] == "middle" and info["data"]["volume_context"] == 1
    card = (result.output_dir / "README.md").read_text()
    assert "DICOM volumes as the middle slice and its neighbours on each side as the three channels (2.5D" in card
    paths, images = list(result.data.splits["test"]["path"]), result.data.inputs("test", "image")
    assert {image.mode for image in images} == {"RGB"} and {p.endswith(".dcm") for p in paths} == {True, False}
    for path, image in zip(paths, images):
        if not path.endswith(".dcm"):  # a series: slices 0, 1, 2 as channels, each brighter than the one before
            red, green, blue = np.asarray(image).reshape(-1, 3).astype(float).mean(axis=0)
            assert red < green < blue
    predictor = hf_adapt.load_adapted(str(result.output_dir))
    read = check_inputs(paths, predictor.data_info)  # what the reloaded model reads of the folders and files
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(read, images))
    model = result.model.eval()
    with torch.no_grad():
        trained = result.backbone.logits(model, result.backbone.preprocessor.collate(images, train=False))
    assert predictor.calibration is None
    assert torch.allclose(predictor.logits(paths), trained, atol=1e-5)


def test_a_2_5d_stack_is_refused_for_a_one_channel_backbone(tmp_path, tmp_path_factory):
    from tests.conftest import _timm_folder

    _volumes(tmp_path, count=4)
    grey = _timm_folder(tmp_path_factory, "mobilenetv2_035", {"in_chans": 1})
    with pytest.raises(ConfigError, match="volume_context: 1 stacks three slices .* this backbone reads one channel"):
        train_finetune(tmp_path / "out", **_values(grey, tmp_path))
    assert not (tmp_path / "out").exists()
