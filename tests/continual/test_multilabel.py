"""Continual learning with task: multi_label, where new labels arrive as a new experience: real German Credit rows
(the 200-row sample) and a tiny BERT. Each row may carry three labels read off its own columns (bad credit, a loan
over 24 months, rented housing). The first experience annotates ``bad``, the second ``long`` and ``rented`` on
other rows; a row's labels outside its experience are not annotated, so they are neither trained on nor scored.

What is checked: the matrix and thresholds, that what ``load_adapted`` serves scores exactly what the run reported
(label routing included), each strategy on the annotated targets, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import hf_adapt
from hf_adapt.config import config_from_dict
from hf_adapt.continual.base import ContinualRun, Experience, MultiLabelContinualTask
from hf_adapt.errors import ConfigError
from hf_adapt.multilabel import multilabel_metrics
from hf_adapt.recipes.continual import ContinualConfig, main

TEMPLATE = ("{duration_in_month} months, purpose {purpose}, {credit_amount} DM, history {credit_history}, "
            "housing {housing}, checking {status_of_existing_checking_account}")
LABELS = ["bad", "long", "rented"]
STREAM = [{"name": "risk", "classes": ["bad"], "where": {"stream": ["first"]}},
          {"name": "terms", "classes": ["long", "rented"], "where": {"stream": ["second"]}}]


@pytest.fixture(scope="module")
def findings(credit_sample, tmp_path_factory):
    """The sample with a ``findings`` list column, split into train/validation/test files, each row assigned to
    the first or the second experience; returns the folder."""
    frame = pd.read_csv(credit_sample).sample(frac=1.0, random_state=0).reset_index(drop=True)
    flags = {"bad": frame["creditability"] == "bad", "long": frame["duration_in_month"] > 24,
             "rented": frame["housing"] == "rent"}
    frame["findings"] = ["|".join(name for name in LABELS if flags[name][i]) for i in range(len(frame))]
    frame["stream"] = np.where(np.arange(len(frame)) % 2 == 0, "first", "second")
    folder = tmp_path_factory.mktemp("ml-continual")
    cuts = {"train": frame.iloc[:120], "validation": frame.iloc[120:160], "test": frame.iloc[160:]}
    for split, rows in cuts.items():
        rows.to_csv(folder / f"{split}.csv", index=False)
    return folder


def _config(tiny_bert, folder, out, **values) -> ContinualConfig:
    defaults = dict(
        model_name_or_path=str(tiny_bert), data="csv", task="multi_label", label_column="findings",
        data_files={split: str(folder / f"{split}.csv") for split in ("train", "validation", "test")},
        text_template=TEMPLATE, experiences=STREAM, num_train_epochs=3, learning_rate=1e-2,
        per_device_train_batch_size=16, max_length=64, report_to="none", torch_num_threads=1, output_dir=str(out),
        base_model_id=None,
    )
    return config_from_dict(ContinualConfig, {**defaults, **values})


@pytest.fixture(scope="module")
def naive_run(tiny_bert, findings, tmp_path_factory):
    return main(_config(tiny_bert, findings, tmp_path_factory.mktemp("naive") / "out"))


def _annotated_test_targets(folder, experience: str) -> tuple[list[dict], np.ndarray]:
    """An experience's test rows, and their targets as the run scores them: 1/0 on its labels, -1 elsewhere."""
    entry = next(e for e in STREAM if e["name"] == experience)
    rows = pd.read_csv(folder / "test.csv", keep_default_na=False)
    rows = rows[rows["stream"].isin(entry["where"]["stream"])]
    targets = np.array([[(1 if name in str(f).split("|") else 0) if name in entry["classes"] else -1
                         for name in LABELS] for f in rows["findings"]])
    return rows.to_dict("records"), targets


def test_new_labels_arrive_as_a_new_experience(naive_run):
    results = naive_run.results
    assert results["labels"] == LABELS and results["metric"] == "map"
    assert results["rows"] == ["before", "risk", "terms"]
    # class-incremental: the second experience's labels are unknown to the head before it is learnt
    assert [[v is None for v in row] for row in results["matrix"]] == [[False, True], [False, True], [False, False]]
    assert all(0 <= v <= 1 for row in results["matrix"] for v in row if v is not None)
    task = results["task"]
    assert task["name"] == "multi_label" and len(task["thresholds"]) == 3
    assert set(results["matrices"]) >= {"map", "auroc", "macro_f1", "micro_f1", "hamming_loss"}
    experiences = {e["name"]: e["classes"] for e in results["experiences"]}
    assert experiences == {"risk": ["bad"], "terms": ["long", "rented"]}


def test_the_saved_model_serves_what_the_run_scored(naive_run, findings):
    out = naive_run.output_dir
    record = json.loads((out / "hf_adapt.json").read_text())
    assert record["task"]["name"] == "multi_label"
    predictor = hf_adapt.load_adapted(str(out))
    assert predictor.thresholds == dict(zip(LABELS, record["task"]["thresholds"]))
    names = [e["name"] for e in naive_run.results["experiences"]]
    for j, name in enumerate(names):
        rows, targets = _annotated_test_targets(findings, name)
        logits = predictor.logits(rows).numpy()
        served = multilabel_metrics(logits, targets, np.array(record["task"]["thresholds"]))
        reported = {m: naive_run.results["matrices"][m][-1][j] for m in ("map", "micro_f1", "macro_f1")}
        assert {m: served[m] for m in reported} == pytest.approx(reported, abs=1e-5), name
    card = (out / "README.md").read_text()
    assert "multi-label classifier (3 labels" in card
    assert "| after \\ on | risk | terms |" in card
    assert "Each experience annotates its own labels only" in card
    assert "| label | test rows with it | AUROC | average precision | threshold |" in card and "| rented |" in card
    rows, targets = _annotated_test_targets(findings, "terms")  # rented: only the second experience annotates it
    per_label = {r["label"]: r for r in naive_run.results["per_label"]}
    assert per_label["rented"]["support"] == int((targets[:, 2] == 1).sum())
    assert per_label["rented"]["threshold"] == pytest.approx(record["task"]["thresholds"][2])
    assert "- multi-label" in card  # the Hub tag


@pytest.mark.parametrize("strategy,options,scenario", [
    ("lwf", {"alpha": 1.0, "temperature": 2.0}, "class"),
    ("replay", {"buffer_size": 20}, "class"),
    ("ewc", {"fisher_samples": 16}, "class"),
    ("adapter_per_experience", None, "class"),
    ("adapter_per_experience", None, "task"),
])
def test_each_strategy_learns_the_stream(strategy, options, scenario, tiny_bert, findings, tmp_path):
    out = tmp_path / "out"
    run = main(_config(tiny_bert, findings, out, strategy=strategy, strategy_options=options, scenario=scenario,
                       num_train_epochs=2))
    matrix = run.results["matrix"]
    assert matrix[-1][0] is not None and matrix[-1][1] is not None
    assert all(np.isfinite(v) for v in matrix[-1])
    predictor = hf_adapt.load_adapted(str(out))
    rows, targets = _annotated_test_targets(findings, "risk")
    task = {"task": "risk"} if scenario == "task" else {}
    served = multilabel_metrics(predictor.logits(rows, **task).numpy(), targets)
    assert served["map"] == pytest.approx(matrix[-1][0], abs=1e-5)  # routing reloads as it ran
    if strategy == "adapter_per_experience":
        record = json.loads((out / "hf_adapt.json").read_text())
        assert record["continual"]["routing"] == ("task_id" if scenario == "task" else "label")
        # nothing forgotten: the first experience's label is answered by its own, frozen adapter
        assert matrix[-1][0] == pytest.approx(matrix[1][0], abs=1e-6)
    if strategy == "replay":
        kept = run.strategy.buffer  # after the last experience: rows of both, balanced by their rarest label
        assert len(kept) == 20 and {name for name, _ in kept} == {"risk", "terms"}


def test_rows_teach_only_the_labels_their_experience_annotates():
    first = Experience("a", 0, [0], {"train": [[0], []]}, {}, None, {})
    second = Experience("b", 1, [1, 2], {"train": [[2], [1, 2]]}, {}, None, {})
    assert first.targets("train", 0, 3) == [1.0, -1.0, -1.0]
    assert second.targets("train", 1, 3) == [-1.0, 1.0, 1.0]
    assert second.balance_keys() == [2, 1]  # the rarest label of each row: 1 is on one row, 2 on two

    logits = torch.tensor([[3.0, -50.0, 9.0], [0.5, 7.0, -2.0]])
    targets = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, 0.0]])
    loss = MultiLabelContinualTask.loss_of(logits, targets)
    known = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([3.0, 7.0, -2.0]), torch.tensor([1.0, 1.0, 0.0]))
    assert loss.item() == pytest.approx(known.item())  # the -1 targets (whatever their logits) add nothing


def test_thresholds_are_chosen_for_the_labels_validation_rows_annotate():
    run = ContinualRun("class", [], LABELS, None, None, 0, multi_label=True)
    logits = np.array([[2.0, 0.1, -3.0], [-1.0, 0.2, 1.0], [0.5, -0.4, 2.0]])
    targets = np.array([[1, -1, -1], [0, -1, -1], [1, -1, -1]])
    assert run.choose_thresholds(logits, targets) == [0]
    assert run.thresholds[1:] == [0.5, 0.5] and 0 < run.thresholds[0] < 1
    assert run.chosen == {0}


def test_multi_label_refusals(tiny_bert, findings, tmp_path):
    with pytest.raises(ConfigError, match="continual_metric: accuracy is not a multi-label metric"):
        _config(tiny_bert, findings, tmp_path, continual_metric="accuracy")
    with pytest.raises(ConfigError, match="routing: confidence compares one softmax"):
        main(_config(tiny_bert, findings, tmp_path / "a", strategy="adapter_per_experience",
                     strategy_options={"routing": "confidence"}))
    with pytest.raises(ConfigError, match="domain-incremental run every adapter annotates every label"):
        main(_config(tiny_bert, findings, tmp_path / "b", strategy="adapter_per_experience", scenario="domain",
                     experiences=[{"name": "x", "where": {"stream": ["first"]}},
                                  {"name": "y", "where": {"stream": ["second"]}}]))
    with pytest.raises(ConfigError, match="routing: label answers each label of a multi-label model"):
        main(config_from_dict(ContinualConfig, {
            "experiences": [{"name": "a"}], "strategy": "adapter_per_experience",
            "strategy_options": {"routing": "label"}, "data": str(findings / "train.csv"),
            "model_name_or_path": str(tiny_bert), "output_dir": str(tmp_path / "c")}))


def test_a_served_multi_label_version_learns_a_new_label(tiny_bert, findings, tmp_path):
    """A finetune output that knows bad and long (its ``old`` column) is updated with ``rented``, annotated on the
    second stream's rows: the label map grows, the old labels keep their thresholds, and the card compares old
    and new on the parent's own test rows."""
    from tests.conftest import train_finetune

    for split in ("train", "validation", "test"):
        frame = pd.read_csv(findings / f"{split}.csv", keep_default_na=False)
        frame["old"] = ["|".join(x for x in str(f).split("|") if x in ("bad", "long")) for f in frame["findings"]]
        frame.to_csv(tmp_path / f"{split}.csv", index=False)
    files = {split: str(tmp_path / f"{split}.csv") for split in ("train", "validation", "test")}
    parent = train_finetune(tmp_path / "parent", model_name_or_path=str(tiny_bert), data="csv", data_files=files,
                            task="multi_label", label_column="old", metric_for_best_model="map",
                            text_template=TEMPLATE, num_train_epochs=2, learning_rate=1e-2, card_examples=0,
                            bootstrap_resamples=0)
    before = json.loads((parent / "hf_adapt.json").read_text())["task"]["thresholds"]
    update = main(_config(tiny_bert, tmp_path, tmp_path / "update", init_from=str(parent), strategy="lwf",
                          experiences=[{"name": "rent", "classes": ["rented"], "where": {"stream": ["second"]}}]))
    results = update.results
    assert results["labels"] == LABELS and results["rows"] == ["before", "rent"]
    assert [e["classes"] for e in results["experiences"]] == [["bad", "long"], ["rented"]]
    assert results["matrix"][0][0] is not None and results["matrix"][0][1] is None  # the parent knew no rented
    thresholds = results["task"]["thresholds"]
    assert thresholds[:2] == pytest.approx(before)  # rent annotates rented alone: the old labels keep theirs
    card = (update.output_dir / "README.md").read_text()
    assert "Old versus new on the parent's own test data" in card and "| map |" in card
    predictor = hf_adapt.load_adapted(str(update.output_dir))
    assert list(predictor.thresholds) == LABELS
    with pytest.raises(ConfigError, match="set task: multi_label"):
        main(_config(tiny_bert, tmp_path, tmp_path / "wrong", init_from=str(parent), task="classification",
                     continual_metric=None, label_column="creditability",
                     experiences=[{"name": "x", "where": {"stream": ["second"]}}]))
