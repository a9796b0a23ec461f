"""A full disk while a run writes its outputs or a checkpoint (issue 17): a clear error naming the path, and
nothing half-written left behind. The disk is a real, tiny tmpfs, mounted in a private mount namespace
(``unshare -rm``), so the writers meet the kernel's own ENOSPC."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .test_resume import _args


def _on_tiny_disk(tmp_path: Path, size: str, hf_adapt_args: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run ``hf-adapt`` with ``disk`` (a tmpfs of ``size``) mounted at ``tmp_path/disk``; return the run and what
    the disk holds afterwards (the mount vanishes with its namespace)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs util-linux unshare for a private tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "hf_adapt.cli", *hf_adapt_args])
    script = (f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(disk))} || exit 99; {command}; rc=$?; "
              f"echo '--- left:'; cd {shlex.quote(str(disk))} && find . -mindepth 1 | sort; exit $rc")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLCONFIGDIR": str(tmp_path / "mpl")}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, text=True, timeout=300)
    if done.returncode == 99 or "unshare failed" in done.stderr:
        pytest.skip(f"cannot mount a private tmpfs here: {done.stderr[-300:]}")
    left = done.stdout.split("--- left:\n", 1)[-1].split()
    return done, left


@pytest.mark.timeout(600)
def test_a_full_disk_while_writing_outputs_names_the_path_and_leaves_nothing(tiny_bert, credit_sample, tmp_path):
    out = tmp_path / "disk" / "out"
    done, left = _on_tiny_disk(tmp_path, "96k", ["finetune", *_args(tiny_bert, credit_sample, out),
                                                 "--torch_num_threads", "1"])
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"no space left on device while writing {out}" in done.stderr
    assert "Traceback" not in done.stderr
    assert left == [], f"left on the full disk: {left}"


@pytest.mark.timeout(600)
def test_a_full_disk_while_saving_a_checkpoint_names_the_path_and_drops_the_partial(tiny_bert, credit_sample,
                                                                                     tmp_path):
    out = tmp_path / "disk" / "out"
    done, left = _on_tiny_disk(tmp_path, "48k", ["finetune", *_args(tiny_bert, credit_sample, out),
                                                 "--torch_num_threads", "1", "--checkpointing_steps", "2"])
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"no space left on device while writing {out}.checkpoints/train/step-2" in done.stderr
    assert "Traceback" not in done.stderr
    assert not [p for p in left if ".partial" in p], f"a half-written checkpoint was left: {left}"
