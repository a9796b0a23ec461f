"""FSDP2 on two CPU processes (gloo): what a sharded model saves is what one process would save.

``accelerate launch --use_fsdp`` runs unsharded on a machine without a GPU (Accelerate applies FSDP to GPU
ranks only), so the test shards with ``torch.distributed.fsdp.fully_shard`` itself, as Accelerate's
``fsdp_version: 2`` does on GPUs, and checks the part hf-adapt owns: gathering the shards and writing the
artifacts (see :func:`hf_adapt.artifacts.gathered_state`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores

HERE = Path(__file__).resolve().parent


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_a_sharded_model_saves_what_restores_its_logits(tiny_bert, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "fsdp_save.py"), str(tiny_bert), str(tmp_path / "out")]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)  # teardown has hung
    assert proc.returncode == 0, proc.stderr[-4000:]
    found = dict(line.split()[1:] for line in proc.stdout.splitlines() if line.startswith("FSDP-SAVE "))
    assert sorted(found) == ["adapter", "full", "language_model", "linear_probe"], proc.stdout
    assert all(float(diff) < 1e-5 for diff in found.values()), found
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").is_file()


def _torchrun(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / script), *map(str, args)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)  # teardown has hung


@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_a_sharded_run_stopped_at_a_checkpoint_resumes_to_the_same_weights_and_optimizer(tiny_bert, tmp_path):
    """FSDP2 on two processes: stopped right after its step-4 checkpoint (mid-epoch 2) and resumed in a fresh
    launch, a run ends bitwise where an uninterrupted one does: the weights and AdamW moments as the last epoch
    ends, the best epoch's weights it restores, and the per-epoch history (train loss, validation metrics)."""
    from safetensors.torch import load_file

    whole = _torchrun("fsdp_resume.py", tiny_bert, tmp_path / "whole", "whole")
    assert "FSDP-RESUME done whole" in whole.stdout, whole.stderr[-4000:]
    out = tmp_path / "run"
    stopped = _torchrun("fsdp_resume.py", tiny_bert, out, "stop")
    assert "FSDP-RESUME stopped 4" in stopped.stdout and not (out / "final.safetensors").exists(), stopped.stderr[-4000:]
    checkpoint = tmp_path / "run.checkpoints" / "train" / "step-4"
    # each process wrote its own shard of the weights and optimizer state
    assert sorted(p.name for p in (checkpoint / "sharded").iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert json.loads((checkpoint / "loop_state.json").read_text())["sharded_tensors"], "best epoch's weights"

    refused = _torchrun("fsdp_resume.py", tiny_bert, out, "resume", "1e-2")  # another learning rate
    assert refused.returncode != 0 and "differs in ['learning_rate']" in refused.stderr, refused.stderr[-4000:]

    resumed = _torchrun("fsdp_resume.py", tiny_bert, out, "resume")
    assert "FSDP-RESUME done resume" in resumed.stdout, resumed.stderr[-4000:]
    assert f"FSDP-RESUME from {checkpoint}" in resumed.stdout, resumed.stdout
    for name in ("last.safetensors", "final.safetensors"):
        ours, theirs = load_file(out / name), load_file(tmp_path / "whole" / name)
        assert ours.keys() == theirs.keys() and any(".lora_A." in k for k in ours), name
        assert any(ours[k].abs().sum() > 0 for k in ours if ".lora_B." in k), f"{name}: the adapter never trained"
        differing = [k for k in ours if not torch.equal(ours[k], theirs[k])]
        assert not differing, f"{name}: {len(differing)} of {len(ours)} tensors differ, e.g. {differing[:3]}"
    history = [json.loads((d / "history.json").read_text()) for d in (out, tmp_path / "whole")]
    assert history[0] == history[1] and history[0]["steps"] == 6 and history[0]["best_epoch"] == 1
    last, best = load_file(out / "last.safetensors"), load_file(out / "final.safetensors")
    assert any(not torch.equal(best[k], last[f"weight.{k}"]) for k in best), "the best epoch is the last one"


@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_a_feedback_round_on_a_sharded_policy_writes_what_an_unsharded_round_writes(tiny_chat_llama, tmp_path):
    """TRL trains the FSDP2-sharded policy on both processes; the round is scored and written from its gathered
    weights: the same files as a two-process DDP round, an adapter within float tolerance of it, the same scores;
    a second sharded round continues it (its parent adapter loaded onto the sharded base). Without the gather
    the main process scores the sharded model alone and the round never ends."""
    from safetensors.torch import load_file

    from tests.feedback.conftest import product_feedback, write_log
    from tests.recipes.test_distributed import _launch

    log = write_log(tmp_path / "log.jsonl", product_feedback(range(10), conversational=True))
    args = ["--model_name_or_path", str(tiny_chat_llama), "--feedback", str(log), "--trainer", "kto",
            "--max_steps", "3", "--max_length", "64", "--learning_rate", "1e-3",
            "--adapter", "{peft_type: LORA, r: 4, lora_alpha: 8}"]
    sharded = _torchrun("feedback_fsdp.py", "feedback", "train", *args, "--output_dir", tmp_path / "sharded")
    assert sharded.returncode == 0 and "FEEDBACK-FSDP sharded" in sharded.stdout, sharded.stderr[-4000:]
    plain = _launch("feedback", [*args, "--output_dir", str(tmp_path / "plain")])
    assert plain.returncode == 0, plain.stderr[-4000:]
    files = [sorted(p.name for p in (tmp_path / d).iterdir()) for d in ("sharded", "plain")]
    assert files[0] == files[1] and "adapter_model.safetensors" in files[0]
    ours, theirs = (load_file(tmp_path / d / "adapter_model.safetensors") for d in ("sharded", "plain"))
    assert ours.keys() == theirs.keys()
    assert max(float((ours[k] - theirs[k]).abs().max()) for k in ours) < 1e-5
    assert any(float(ours[k].abs().sum()) > 0 for k in ours if "lora_B" in k), "the adapter never trained"
    scores = [json.loads((tmp_path / d / "eval_results.json").read_text()) for d in ("sharded", "plain")]
    assert scores[0].keys() == scores[1].keys() and scores[0]["win_rate"] == pytest.approx(scores[1]["win_rate"])
    assert json.loads((tmp_path / "sharded" / "train_results.json").read_text())["num_processes"] == 2

    # the next round continues the sharded one's adapter, sharded again, and is scored against it
    child = _torchrun("feedback_fsdp.py", "feedback", "train", "--init_from", tmp_path / "sharded", "--feedback", log,
                      "--trainer", "dpo", "--max_steps", "2", "--max_length", "64", "--learning_rate", "1e-3",
                      "--output_dir", tmp_path / "child")
    assert child.returncode == 0 and "FEEDBACK-FSDP sharded" in child.stdout, child.stderr[-4000:]
    assert json.loads((tmp_path / "child" / "hf_adapt.json").read_text())["init_from"]["trainer"] == "kto"
    grown = load_file(tmp_path / "child" / "adapter_model.safetensors")
    assert grown.keys() == ours.keys() and any(not torch.equal(grown[k], ours[k]) for k in ours)
    assert 0 <= json.loads((tmp_path / "child" / "eval_results.json").read_text())["win_rate"] <= 1
