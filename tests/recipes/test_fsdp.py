"""FSDP2 on two CPU processes (gloo): what a sharded model saves is what one process would save.

``accelerate launch --use_fsdp`` runs unsharded on a machine without a GPU (Accelerate applies FSDP to GPU
ranks only), so the test shards with ``torch.distributed.fsdp.fully_shard`` itself, as Accelerate's
``fsdp_version: 2`` does on GPUs, and checks the part hf-adapt owns: gathering the shards and writing the
artifacts (see :func:`hf_adapt.artifacts.gathered_state`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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
