"""``hf_adapt.json`` as one type (issue 18): each recipe's kind, one writer and one reader, version-1 files still
read, and every loader refusing the kinds it cannot load by naming the one that can."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_adapt.errors import ModelError
from hf_adapt.run_record import FORMAT_VERSION, KINDS, RunRecord, read_record, write_record


def _v1(directory: Path, **info) -> Path:
    """A record as hf-adapt wrote it before kinds (format_version 1)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hf_adapt.json").write_text(json.dumps({"format_version": 1, **info}))
    return directory


def test_a_record_round_trips_with_its_header_first(tmp_path):
    record = RunRecord("classifier", "finetune", {"family": "timm", "regime": "adapter", "model": {"name_or_path": "m"}})
    write_record(tmp_path, record)
    raw = json.loads((tmp_path / "hf_adapt.json").read_text())
    assert list(raw)[:3] == ["format_version", "kind", "recipe"] and raw["format_version"] == FORMAT_VERSION == 2
    assert read_record(tmp_path) == record
    assert read_record(tmp_path).model == {"name_or_path": "m"}


@pytest.mark.parametrize("info, kind", [
    ({"recipe": "finetune"}, "classifier"),
    ({}, "classifier"),  # the earliest records named no recipe
    ({"recipe": "continual"}, "continual_classifier"),
    ({"recipe": "pretrain", "objective": "mlm"}, "language_model"),
    ({"recipe": "feedback", "objective": "clm", "trainer": "dpo"}, "policy"),
    ({"recipe": "feedback", "objective": "reward", "trainer": "reward"}, "reward_model"),
    ({"recipe": "transfer_study"}, "transfer_study"),
])
def test_version_1_records_get_their_kind_from_recipe_and_objective(tmp_path, info, kind):
    record = read_record(_v1(tmp_path / "out", **info))
    assert record.kind == kind and record.format_version == 1
    assert record.as_dict()["format_version"] == FORMAT_VERSION, "written again, a record is in today's format"


@pytest.mark.parametrize("content, error", [
    ({"format_version": 3, "kind": "classifier"}, r"format_version 3 is newer than this hf-adapt reads \(2\)"),
    ({"format_version": "one"}, r"format_version must be a whole number >= 1, got 'one'"),
    ({"format_version": 2, "kind": "embedding", "recipe": "finetune"}, r"unknown run record kind 'embedding'"),
    ({"format_version": 1, "recipe": "distill"}, r"unknown recipe 'distill'"),
])
def test_records_this_hf_adapt_cannot_read_are_refused_by_file(tmp_path, content, error):
    (tmp_path / "hf_adapt.json").write_text(json.dumps(content))
    with pytest.raises(ModelError, match=rf"{tmp_path}/hf_adapt\.json: {error}"):
        read_record(tmp_path)


def test_every_kind_names_a_loader_that_exists():
    import importlib

    for kind, (_, _, loader) in KINDS.items():
        module, _, name = loader.split(" ")[0].rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), kind


@pytest.mark.parametrize("info, loader, error", [
    ({"recipe": "finetune", "family": "timm", "regime": "full", "model": {}, "data": {}}, "hf_adapt.lm:read_pretrain_info",
     r"is a finetune output .*kind 'classifier'\): a classifier, not a language model; load it with hf_adapt\.load_adapted"),
    ({"recipe": "pretrain", "objective": "clm", "model": {}}, "hf_adapt.feedback.model:read_feedback_info",
     r"a clm language model, not a policy or reward model; load it with hf_adapt\.lm\.load_pretrained_lm"),
    ({"recipe": "feedback", "objective": "reward", "trainer": "reward", "model": {}}, "hf_adapt.artifacts:read_run_info",
     r"a reward model, not a classifier; load it with hf_adapt\.feedback\.load_reward_model"),
])
def test_each_reader_refuses_other_kinds_naming_the_loader_that_fits(tmp_path, info, loader, error):
    import importlib

    module, name = loader.split(":")
    with pytest.raises(ModelError, match=error):
        getattr(importlib.import_module(module), name)(_v1(tmp_path / "out", **info))
