"""Two CPU processes under ``accelerate launch`` (gloo): same artifacts, written once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hf_adapt

pytestmark = pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores

REPO = Path(__file__).resolve().parents[2]


def _launch(recipe: str, args: list[str]) -> subprocess.CompletedProcess:
    """``recipes/<recipe>.py`` on two CPU processes under ``accelerate launch`` (gloo), one thread each."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        str(REPO / "recipes" / f"{recipe}.py"), *args,
    ]
    # teardown of gloo groups has hung before: a hard timeout keeps CI from stalling
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=540)


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_two_process_run_trains_and_writes_once(tiny_bert, credit_sample, tmp_path):
    out = tmp_path / "ddp"
    proc = _launch("finetune", [
        "--model_name_or_path", str(tiny_bert), "--base_model_id", "hf-adapt-tests/tiny-bert",
        "--data", str(credit_sample), "--output_dir", str(out), "--num_train_epochs", "2",
        "--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--max_length", "128",
        "--report_to", "none",
    ])
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "train_results.json").read_text())
    assert results["num_processes"] == 2
    # each step consumes 2 processes x 8 rows: half the steps one process would take
    train_rows = results["data"]["splits"]["train"]
    assert results["steps"] == 2 * math.ceil(train_rows / 16)
    assert (out / "adapter_model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"], "stray staging dirs from another rank"
    metrics = json.loads((out / "eval_results.json").read_text())
    predictor = hf_adapt.load_adapted(str(out))
    assert predictor.labels == ["bad", "good"]
    assert 0 <= metrics["accuracy"] <= 1


@pytest.mark.distributed
@pytest.mark.timeout(600)
@pytest.mark.parametrize("strategy", ["ewc", "adapter_per_experience"])
def test_two_process_continual_run(strategy, block_resnet, blocks_csv, tmp_path):
    """Experiences re-prepare the model (a grown head, a new adapter) under DDP; EWC's Fisher is summed
    over both processes' examples; the matrix is gathered without duplicates."""
    import yaml

    out = tmp_path / "continual"
    config = {
        "model_name_or_path": str(block_resnet), "family": "timm", "reset_head": True, "image_size": 32,
        "data": str(blocks_csv), "label_column": "label", "feature_columns": [f"p{i}" for i in range(100)],
        "text_template": None, "pixel_shape": [10, 10], "validation_size": 0.2, "test_size": 0.25,
        "experiences": [{"name": "ab", "classes": [0, 1]}, {"name": "cd", "classes": [2, 3]}],
        "strategy": strategy, "regime": "adapter", "adapter": {"peft_type": "LORA", "r": 4, "lora_alpha": 8},
        "num_train_epochs": 1, "per_device_train_batch_size": 8, "report_to": "none", "output_dir": str(out),
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    proc = _launch("continual", [
        "--config", str(tmp_path / "c.yaml"),
    ])
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "continual_results.json").read_text())
    assert json.loads((out / "train_results.json").read_text())["num_processes"] == 2
    assert [e["rows"]["test"] for e in results["experiences"]] == [60, 60]  # 2 classes x 120 rows x 25 %
    assert results["matrix"][-1][0] is not None and results["matrix"][-1][1] is not None
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    predictor = hf_adapt.load_adapted(str(out))
    assert predictor.labels == ["0", "1", "2", "3"]


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_two_process_feedback_round(tiny_chat_llama, tmp_path):
    """TRL trains across both ranks (gloo on CPU); the main process alone scores the round and writes it."""
    from tests.feedback.conftest import product_feedback, write_log

    log = write_log(tmp_path / "log.jsonl", product_feedback(range(10), conversational=True))
    out = tmp_path / "round"
    proc = _launch("feedback", [
        "--model_name_or_path", str(tiny_chat_llama), "--feedback", str(log),
        "--trainer", "kto", "--max_steps", "3", "--max_length", "64", "--learning_rate", "1e-3",
        "--adapter", "{peft_type: LORA, r: 4, lora_alpha: 8}", "--output_dir", str(out),
    ])
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "train_results.json").read_text())
    assert results["num_processes"] == 2 and results["steps"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl", "round"], "stray staging dirs from another rank"
    assert proc.stderr.count("hf_adapt.outputs: wrote") == 1
    assert 0 <= json.loads((out / "eval_results.json").read_text())["win_rate"] <= 1


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_two_process_cross_validation_with_balanced_sampler(tiny_bert, credit_sample, tmp_path):
    """Folds re-prepare fresh models under DDP (the accelerator's references are freed between them);
    held-out logits are gathered without duplicates; the balanced sampler's draws are shared and sharded."""
    out = tmp_path / "cv"
    proc = _launch("finetune", [
        "--model_name_or_path", str(tiny_bert), "--base_model_id", "hf-adapt-tests/tiny-bert",
        "--data", str(credit_sample), "--output_dir", str(out), "--num_train_epochs", "1",
        "--per_device_train_batch_size", "8", "--learning_rate", "5e-3", "--report_to", "none",
        "--cv_folds", "2", "--balanced_sampler", "true", "--positive_label", "bad",
        "--operating_point", "youden", "--bootstrap_resamples", "100", "--card_examples", "1",
    ])
    assert proc.returncode == 0, proc.stderr[-4000:]
    cv = json.loads((out / "cv_results.json").read_text())
    results = json.loads((out / "train_results.json").read_text())
    pooled = results["data"]["splits"]["train"] + results["data"]["splits"]["validation"]
    assert results["num_processes"] == 2 and len(cv["folds"]) == 2
    assert sum(f["held_rows"] for f in cv["folds"]) == pooled == len(cv["fold_of_row"])
    assert json.loads((out / "hf_adapt.json").read_text())["operating_point"]["positive_label"] == "bad"
    assert [p.name for p in tmp_path.iterdir()] == ["cv"], "stray staging dirs from another rank"


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_two_process_tune_runs_each_trial_on_both_processes(tiny_bert, credit_sample, tmp_path):
    """The main process draws each trial and shares it; both train it; one study, one retrain, one test."""
    pytest.importorskip("optuna", reason="the tune extra is not installed: pip install -e '.[tune]'")
    import yaml

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_bert), "base_model_id": "hf-adapt-tests/tiny-bert", "data": str(credit_sample),
        "num_train_epochs": 1, "per_device_train_batch_size": 8, "max_length": 64, "report_to": "none",
        "card_examples": 0, "bootstrap_resamples": 100,
        "search": {"learning_rate": {"distribution": "log_uniform", "low": 1e-3, "high": 1e-2}}}))
    proc = _launch("tune", ["--config", str(base), "--n_trials", "2", "--output_dir", str(tmp_path / "tune")])
    assert proc.returncode == 0, [line for line in proc.stderr.splitlines() if "error" in line.lower()][:5]
    results = json.loads((tmp_path / "tune" / "tune_results.json").read_text())
    assert results["trials"]["complete"] == 2
    assert json.loads((tmp_path / "tune" / "best" / "train_results.json").read_text())["num_processes"] == 2
