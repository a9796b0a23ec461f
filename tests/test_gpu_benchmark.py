"""benchmarks/gpu.py: the smoke run covers every section on CPU; its checks and its FLOPs count can fail."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu.py"
ROWS = ["plain PyTorch", "hf-adapt", "HF Trainer + peft", "hf-adapt FSDP", "hf-adapt feedback", "TRL DPOTrainer"]


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores
def test_smoke_run_prints_every_row_and_the_checks_pass(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--output_dir", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
    out = done.stdout
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in out.splitlines() if line.startswith("| LoRA |") or line.startswith("| DPO |")]
    for name in ROWS:
        row = next((line for line in table if line.split("|")[2].strip() == name), None)
        assert row is not None, f"no row for {name}:\n{out[-3000:]}"
        assert re.search(r"[\d,.]+ (tokens|pairs)/s", row), f"{name} measured nothing: {row}"
    for name in ("hf-adapt", "HF Trainer + peft", "hf-adapt FSDP"):
        assert f"PASS: {name}: the same batches as plain" in out, out[-3000:]
        assert f"PASS: {name}: per-step losses vs plain" in out, out[-3000:]
    assert "FAIL" not in out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["mode"] == "smoke" and results["versions"]["trl"] and results["date"]
    losses = results["lora"]["plain PyTorch"]["losses"]
    assert len(losses) == results["plan"]["warmup"] + results["plan"]["steps"] + 1
    assert len(set(losses)) > 1  # a loss curve, not a constant the check could not tell apart
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# GPU benchmark (smoke)")


def test_the_checks_fail_on_other_losses_or_batches(gpu_bench):
    plain = {"losses": [10.0, 9.0, 8.0], "fingerprints": [[[1, 2]], [[3, 4]], [[5, 6]]]}
    drifted = {"losses": [10.0, 9.0, 8.1], "fingerprints": [[[1, 2]], [[5, 6]], [[3, 4]]]}
    assert gpu_bench.loss_check("x", plain, plain, 1e-4)[1] is True
    assert gpu_bench.loss_check("x", drifted, plain, 1e-4)[1] is False
    assert gpu_bench.batch_check("x", plain, plain)[1] is True
    assert gpu_bench.batch_check("x", drifted, plain)[1] is False
    lines = gpu_bench.checks(gpu_bench.GPU, {"plain PyTorch": plain, "hf-adapt": {**plain, "tokens_per_s": 90.0,
                                                                                  "mfu": 0.3},
                                            "HF Trainer + peft": {**plain, "tokens_per_s": 100.0}},
                             {"world": 2, "distributed_type": "MULTI_GPU", "processes": 2}, smoke=False)
    failed = [text for text, ok in lines if ok is False]
    assert any("tokens/s" in t for t in failed) and any("MFU" in t for t in failed) and any("FSDP" in t for t in failed)


def test_flops_count_the_models_matmuls_and_lora_parameters(gpu_bench):
    import torch
    from peft import get_peft_model
    from transformers import LlamaForCausalLM

    plan = gpu_bench.SMOKE
    model = LlamaForCausalLM(gpu_bench.llama_config(plan))
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    lora = sum(p.numel() for p in get_peft_model(model, gpu_bench.lora_config(plan)).parameters() if p.requires_grad)
    flops = gpu_bench.flops_per_token(plan)
    assert (flops["matmul_parameters"], flops["lora_parameters"]) == (matmul, lora)
    assert flops["lora_flops"] == 4 * matmul + 6 * lora + 12 * plan.layers * plan.hidden * plan.seq
    big = gpu_bench.flops_per_token(gpu_bench.GPU)
    assert 0.95e9 < big["matmul_parameters"] < 1.1e9  # the "1B" model: ~1.04B with the tied output projection


def test_peak_flops_lookup_and_override(gpu_bench, monkeypatch):
    import torch

    assert gpu_bench.peak_tflops(500.0) == (500.0, "--peak_tflops")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for name, peak in [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H200", 989.4), ("NVIDIA H100 PCIe", 756.0),
                       ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0, name=name: name)
        assert gpu_bench.peak_tflops(None)[0] == peak, name
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Some GPU")
    assert gpu_bench.peak_tflops(None)[0] is None
