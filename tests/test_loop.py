"""The training loop's switches, on the tiny BERT: accumulation, early stopping, precision, trackers."""

from __future__ import annotations

import json
import math

import pytest

from hf_adapt.config import config_from_dict
from hf_adapt.recipes.finetune import FinetuneConfig, main


def _run(tiny_bert, credit_sample, tmp_path, **overrides):
    values = dict(model_name_or_path=str(tiny_bert), base_model_id=None, data=str(credit_sample),
                  output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, learning_rate=5e-3,
                  max_length=64, report_to="none", num_train_epochs=1, torch_num_threads=1)
    values.update(overrides)
    result = main(config_from_dict(FinetuneConfig, values))
    return result, json.loads((result.output_dir / "train_results.json").read_text())


def test_gradient_accumulation_counts_optimizer_steps(tiny_bert, credit_sample, tmp_path):
    result, info = _run(tiny_bert, credit_sample, tmp_path, gradient_accumulation_steps=3, num_train_epochs=2)
    batches = math.ceil(info["data"]["splits"]["train"] / 16)
    assert info["steps"] == 2 * math.ceil(batches / 3)


def test_early_stopping_and_best_epoch(tiny_bert, credit_sample, tmp_path):
    # learning rate 0: validation never improves after epoch 1, so patience 1 stops after epoch 2
    result, info = _run(tiny_bert, credit_sample, tmp_path, learning_rate=0.0, head_learning_rate=None, num_train_epochs=5,
                        early_stopping_patience=1, metric_for_best_model="log_loss")
    assert [row["epoch"] for row in info["history"]] == [1, 2]
    assert info["best_epoch"] == 1


def test_max_steps_overrides_epochs(tiny_bert, credit_sample, tmp_path):
    _, info = _run(tiny_bert, credit_sample, tmp_path, max_steps=3, num_train_epochs=10)
    assert info["steps"] == 3 and len(info["history"]) == 1


def test_bf16_autocast_trains_on_cpu(tiny_bert, credit_sample, tmp_path):
    result, info = _run(tiny_bert, credit_sample, tmp_path, mixed_precision="bf16", max_steps=2)
    assert info["steps"] == 2
    assert all(math.isfinite(v) for v in result.test_metrics.values() if v == v)


def test_tensorboard_tracker_logs_into_the_output(tiny_bert, credit_sample, tmp_path):
    pytest.importorskip("tensorboard")
    result, _ = _run(tiny_bert, credit_sample, tmp_path, report_to="tensorboard", max_steps=2, logging_steps=1)
    events = list(result.output_dir.rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file in the output dir"
