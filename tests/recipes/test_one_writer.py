"""One writer per output directory (issue 17): two runs into the same new ``output_dir`` never both
"succeed" with one result silently replaced; the second is refused at start, naming the first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hf_adapt import outputs
from hf_adapt.errors import OutputError

from .test_resume import _args


def _hf_adapt(*args: str) -> list[str]:
    return [sys.executable, "-m", "hf_adapt.cli", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.mark.timeout(600)
def test_a_second_run_into_the_same_output_dir_is_refused_naming_the_first(tiny_bert, credit_sample, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(_hf_adapt("finetune", *_args(tiny_bert, credit_sample, out, "--seed", "1")),
                             env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        lock = tmp_path / ".out.lock"
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.is_file(), "the first run holds the output dir from its start"
        second = subprocess.run(_hf_adapt("finetune", *_args(tiny_bert, credit_sample, out, "--seed", "2")),
                                env=_env(), capture_output=True, text=True, timeout=300)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f"output_dir {out} is being written by another run (pid {first.pid} on " in second.stderr
        _, stderr = first.communicate(timeout=400)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert "seed: 1\n" in (out / "config.yaml").read_text(), "the output is the first run's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "no lock, staging folder or second output left"
    again = subprocess.run(_hf_adapt("finetune", *_args(tiny_bert, credit_sample, out, "--seed", "2")),
                           env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds a different hf-adapt run" in again.stderr, again.stderr[-2000:]


def test_a_claim_is_exclusive_released_on_exit_and_dropped_when_its_process_dies(tmp_path):
    out = tmp_path / "out"
    with outputs.claimed(out, overwrite=False):
        with pytest.raises(OutputError, match=rf"output_dir {out} is being written by another run \(pid {os.getpid()}"):
            with outputs.claimed(out, overwrite=False):
                pass
    assert not (tmp_path / ".out.lock").exists()
    with outputs.claimed(out, overwrite=False):  # free again
        pass

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from hf_adapt import outputs\n"
        f"with outputs.claimed({str(out)!r}, overwrite=False):\n"
        "    print('held', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match=f"pid {holder.pid} on"):
            with outputs.claimed(out, overwrite=False):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with outputs.claimed(out, overwrite=False):  # a killed holder blocks nobody
        pass


def test_other_ranks_only_check(tmp_path, monkeypatch):
    out = tmp_path / "out"
    with outputs.claimed(out, overwrite=False):
        monkeypatch.setenv("RANK", "1")
        with outputs.claimed(out, overwrite=False):  # the launch's other processes take no lock of their own
            pass


def test_a_commit_never_replaces_what_another_writer_put_there_meanwhile(tmp_path):
    """The check at commit, for writers that took no lock (another machine, an older hf-adapt)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / outputs.RUN_FILE).write_text(json.dumps({"recipe": "finetune"}))
    (out / "adapter_model.safetensors").write_bytes(b"theirs")
    staging = outputs.staging_path(out)
    staging.mkdir()
    (staging / "adapter_model.safetensors").write_bytes(b"ours")
    with pytest.raises(OutputError, match=r"was written by another run while this one ran \(an hf-adapt finetune "
                                          r"run, written .*\); nothing was overwritten: this run's outputs are in "):
        outputs.commit(staging, out, overwrite=False)
    assert (out / "adapter_model.safetensors").read_bytes() == b"theirs"
    (kept,) = tmp_path.glob("out.unmerged-*")
    assert (kept / "adapter_model.safetensors").read_bytes() == b"ours" and not staging.exists()
