"""A radiology-style run end to end: a DICOM manifest with patient ids, grouped splits, the medical
augmentation preset, a balanced sampler and an operating point, then prediction on a DICOM file."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import ModelCard

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.recipes.finetune import FinetuneConfig, main
from tests.test_medical_data import _manifest


@pytest.fixture(autouse=True)
def _quiet_pydicom():
    import logging

    logging.getLogger("pydicom").setLevel(logging.ERROR)


def _config(model, tmp_path, **overrides) -> FinetuneConfig:
    values = dict(
        model_name_or_path=str(model), data=str(tmp_path / "manifest.csv"), label_column="label",
        image_column="path", group_column="patient_id", reset_head=True, image_size=32, num_train_epochs=4,
        learning_rate=2e-2, per_device_train_batch_size=8, train_transform="medical", balanced_sampler=True,
        operating_point="sensitivity", operating_target=0.9, positive_label="mr", bootstrap_resamples=200,
        validation_size=0.25, test_size=0.25, report_to="none", torch_num_threads=1,
        adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8}, output_dir=str(tmp_path / "out"),
    )
    return config_from_dict(FinetuneConfig, {**values, **overrides})


def test_dicom_manifest_run_keeps_patients_apart_and_serves_its_threshold(tiny_timm_convnet, tmp_path):
    frame = _manifest(tmp_path, patients=24, per_patient=2)
    result = main(_config(tiny_timm_convnet, tmp_path, sensitive_columns=["site"]))
    splits = result.data.splits
    patients = {name: set(splits[name]["patient_id"]) for name in splits}
    assert not patients["train"] & patients["test"] and not patients["train"] & patients["validation"]
    assert not patients["validation"] & patients["test"]
    out = result.output_dir
    card = ModelCard.load(out / "README.md").text
    assert "Splits are grouped by `patient_id`" in card and "balanced sampler" in card
    assert "**site**" in card  # per-site test metrics from the manifest's site column
    intervals = json.loads((out / "eval_intervals.json").read_text())
    assert intervals["method"].startswith("percentile cluster bootstrap over test patient_id groups")
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert preprocessor["train_transform"]["hflip"] == 0.0  # the preset, saved resolved
    info = json.loads((out / "hf_adapt.json").read_text())
    assert info["operating_point"]["positive_label"] == "mr"
    predictor = hf_adapt.load_adapted(str(out))
    scan = tmp_path / frame.path[frame.label == "mr"].iloc[0]
    prediction = predictor.predict(str(scan))[0]
    threshold = info["operating_point"]["threshold"]
    assert prediction["label"] == ("mr" if prediction["probabilities"]["mr"] >= threshold else "ct")


def test_an_unmet_sensitivity_target_keeps_the_model_but_marks_and_blocks_it(tiny_timm_convnet, tmp_path):
    from hf_adapt.errors import HubError, OperatingPointError
    from hf_adapt.hub import check_release_gate

    frame = _manifest(tmp_path, patients=24, per_patient=2)
    # given splits whose validation "mr" rows show CT scans: every validation case scores the same, so
    # sensitivity 0.9 is met only by calling every case positive, however well the model learns
    patient = frame["patient_id"].str[1:].astype(int)
    splits = {"train": frame[patient < 16], "validation": frame[(patient >= 16) & (patient < 20)].copy(),
              "test": frame[patient >= 20]}
    splits["validation"].loc[splits["validation"]["label"] == "mr", "path"] = frame.loc[0, "path"]
    for name, rows in splits.items():
        rows.to_csv(tmp_path / f"{name}.csv", index=False)
    cfg = _config(tiny_timm_convnet, tmp_path, num_train_epochs=1,
                  data_files={name: str(tmp_path / f"{name}.csv") for name in splits})
    with pytest.raises(OperatingPointError, match="target sensitivity 0.9 is met on validation only by calling"):
        main(cfg)
    out = tmp_path / "out"
    info = json.loads((out / "hf_adapt.json").read_text())
    assert info["operating_point"] is None and "target sensitivity 0.9" in info["operating_point_error"]
    assert "No operating point could be chosen" in (out / "README.md").read_text()
    with pytest.raises(HubError, match="has no operating point"):
        check_release_gate(out)
    assert hf_adapt.load_adapted(str(out)).operating_point is None
