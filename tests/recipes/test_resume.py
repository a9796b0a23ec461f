"""Checkpoint and resume: a run killed with SIGKILL mid-epoch and resumed ends bitwise where an
uninterrupted run with the same seed ends, on one process and on two."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
PREEMPT = Path(__file__).with_name("preempt.py")
KILLED = -signal.SIGKILL


def _args(tiny_bert, credit_sample, out: Path, *extra: str) -> list[str]:
    return ["--model_name_or_path", str(tiny_bert), "--base_model_id", "hf-adapt-tests/tiny-bert",
            "--data", str(credit_sample), "--output_dir", str(out), "--num_train_epochs", "2",
            "--per_device_train_batch_size", "16", "--learning_rate", "5e-3", "--max_length", "128",
            "--report_to", "none", "--logging_steps", "2", "--bootstrap_resamples", "0", *extra]


def _run(args: list[str], kill_at: str | None = None, processes: int = 1, recipe: str = "finetune",
         kill_in: str | None = None, term_at: int | None = None) -> subprocess.CompletedProcess:
    """``hf-adapt <recipe>`` in a fresh process (under ``accelerate launch`` for two), optionally killed
    right after the checkpoint ``kill_at`` (``phase:step``) is on disk."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    for name in ("HF_ADAPT_TEST_KILL_AT", "HF_ADAPT_TEST_KILL_IN", "HF_ADAPT_TEST_TERM_AT"):
        env.pop(name, None)
    if term_at:
        env["HF_ADAPT_TEST_TERM_AT"] = str(term_at)
    if kill_at:
        env["HF_ADAPT_TEST_KILL_AT"] = kill_at
    if kill_in:
        env["HF_ADAPT_TEST_KILL_IN"] = kill_in
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     "--main_process_port", "0"]
    else:
        args = [*args, "--torch_num_threads", "1"]
    # teardown of gloo groups has hung before: a hard timeout keeps CI from stalling
    return subprocess.run([*launcher, str(PREEMPT), recipe, *args], env=env, capture_output=True, text=True,
                          timeout=400)


def _assert_same_run(resumed: Path, reference: Path) -> None:
    """Bitwise: every adapter tensor, every test metric and the per-epoch history (validation metrics, mean train loss)."""
    ours, theirs = load_file(resumed / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys()
    differing = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not differing, f"{len(differing)} of {len(ours)} tensors differ, e.g. {differing[:3]}"
    assert json.loads((resumed / "eval_results.json").read_text()) == json.loads(
        (reference / "eval_results.json").read_text())
    history = [json.loads((out / "train_results.json").read_text())["history"] for out in (resumed, reference)]
    assert history[0] == history[1]


def _checkpoints(out: Path, phase: str = "train") -> list[str]:
    return sorted((p.name for p in out.with_name(f"{out.name}.checkpoints").joinpath(phase).iterdir()),
                  key=lambda name: (len(name), name))


def _kill_and_resume(tiny_bert, credit_sample, tmp_path, processes: int, kill_at: str, every: str = "4"):
    reference = tmp_path / "reference"
    done = _run(_args(tiny_bert, credit_sample, reference), processes=processes)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    killed = _run(_args(tiny_bert, credit_sample, out, "--checkpointing_steps", every), kill_at=kill_at,
                  processes=processes)
    assert killed.returncode in (KILLED, 1) and not out.exists(), killed.stderr[-3000:]  # 1: the launcher's
    return reference, out


@pytest.fixture(scope="module")
def killed_run(tiny_bert, credit_sample, tmp_path_factory):
    """An uninterrupted run, and the same run killed right after its checkpoint at step 12 (epoch 2 of 7-step epochs)."""
    tmp_path = tmp_path_factory.mktemp("resume")
    reference, out = _kill_and_resume(tiny_bert, credit_sample, tmp_path, 1, "train:12")
    return reference, out.with_name("out.checkpoints")


def _copy(checkpoints: Path, out: Path) -> Path:
    """A fresh copy of the killed run's checkpoints for ``out`` (tests resume, and so prune, their own)."""
    import shutil

    shutil.copytree(checkpoints, out.with_name(f"{out.name}.checkpoints"))
    return out


def test_a_run_killed_mid_epoch_resumes_to_the_same_adapter_and_metrics(killed_run, tiny_bert, credit_sample,
                                                                        tmp_path):
    reference, checkpoints = killed_run
    out = _copy(checkpoints, tmp_path / "out")
    assert _checkpoints(out) == ["step-8", "step-12"], "keep the last 2 (checkpoints_total_limit)"
    state = json.loads((out.with_name("out.checkpoints") / "train" / "step-12" / "loop_state.json").read_text())
    steps_per_epoch = json.loads((reference / "train_results.json").read_text())["steps"] // 2
    assert state["epoch"] == 2 and 0 < state["batches"] < steps_per_epoch, "the kill must land mid-epoch"
    assert len(state["history"]) == 1 and state["best_epoch"] == 1

    resumed = _run(_args(tiny_bert, credit_sample, out, "--checkpointing_steps", "4",
                         "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "step-12" in resumed.stderr
    _assert_same_run(out, reference)
    steps = json.loads((reference / "train_results.json").read_text())["steps"]
    assert _checkpoints(out)[-1] == f"step-{steps}", "the finished phase keeps its final state"


def test_sigterm_saves_a_checkpoint_where_it_stops_and_the_resumed_run_ends_the_same(killed_run, tiny_bert,
                                                                                   credit_sample, tmp_path):
    """How schedulers pre-empt: SIGTERM at step 6, between the checkpoints at 4 and 8. The run saves step 6,
    says so, exits 143 with nothing written, and resumes from there to the uninterrupted run's adapter."""
    reference, _ = killed_run
    out = tmp_path / "out"
    stopped = _run(_args(tiny_bert, credit_sample, out, "--checkpointing_steps", "4"), term_at=6)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at optimiser step 6 (epoch 1): saved checkpoint" in stopped.stderr
    assert "step-6; continue with --resume_from_checkpoint latest" in stopped.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.partial-*")) and not list(tmp_path.glob(".out.lock"))
    assert _checkpoints(out) == ["step-4", "step-6"]
    resumed = _run(_args(tiny_bert, credit_sample, out, "--checkpointing_steps", "4",
                         "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step-6" in resumed.stderr
    _assert_same_run(out, reference)


def test_sigterm_without_checkpointing_says_the_work_is_lost_and_writes_nothing(tiny_bert, credit_sample, tmp_path):
    out = tmp_path / "out"
    stopped = _run(_args(tiny_bert, credit_sample, out), term_at=3)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "stopped by SIGTERM at optimiser step 3 (epoch 1): checkpointing is off" in stopped.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no output, staging folder, checkpoint or lock left"


@pytest.mark.slow
def test_resuming_from_a_named_earlier_checkpoint_replays_the_rest(killed_run, tiny_bert, credit_sample, tmp_path):
    reference, checkpoints = killed_run
    copy = _copy(checkpoints, tmp_path / "again")
    step_8 = copy.with_name("again.checkpoints") / "train" / "step-8"
    args = _args(tiny_bert, credit_sample, copy, "--checkpointing_steps", "4", "--resume_from_checkpoint", str(step_8))
    resumed = _run(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {step_8}" in resumed.stderr
    _assert_same_run(copy, reference)


def test_resume_refuses_other_settings_and_a_fresh_run_refuses_old_checkpoints(killed_run, tiny_bert, credit_sample,
                                                                               tmp_path):
    from hf_adapt.config import parse_config
    from hf_adapt.errors import ConfigError, OutputError
    from hf_adapt.recipes.finetune import FinetuneConfig, main

    out = _copy(killed_run[1], tmp_path / "out")
    snapshot = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))

    def config(*extra):
        return parse_config(FinetuneConfig, _args(tiny_bert, credit_sample, out, "--checkpointing_steps", "4", *extra))

    with pytest.raises(ConfigError, match=r"differs in \['learning_rate'\]"):
        main(config("--resume_from_checkpoint", "latest", "--learning_rate", "1e-3"))
    with pytest.raises(OutputError, match="holds the checkpoints of an earlier run"):
        main(config())
    with pytest.raises(ConfigError, match="not a complete step-N checkpoint"):
        main(config("--resume_from_checkpoint", str(out.parent)))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == snapshot, "a refused run changed files"


def test_a_run_killed_while_writing_its_outputs_leaves_the_previous_output_whole(killed_run, tiny_bert,
                                                                                credit_sample, tmp_path):
    import shutil

    import hf_adapt
    from hf_adapt.errors import ModelError

    reference, _ = killed_run
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    killed = _run(_args(tiny_bert, credit_sample, out, "--overwrite_output_dir", "true", "--seed", "7"),
                  kill_in="write")
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert hf_adapt.load_adapted(str(out)).labels == ["bad", "good"]
    (partial,) = tmp_path.glob(".out.partial-*")
    assert (partial / "adapter_model.safetensors").is_file(), "killed after the adapter, before the rest"
    with pytest.raises(ModelError, match="not an hf-adapt output"):
        hf_adapt.load_adapted(str(partial))

    from hf_adapt.outputs import check_output_dir

    check_output_dir(out, overwrite=True)  # as the next run does first
    assert not partial.exists(), "the dead run's staging folder is tidied away"


@pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores
@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_a_two_process_run_killed_mid_epoch_resumes_to_the_same_adapter(tiny_bert, credit_sample, tmp_path):
    # two processes x 16 rows: 4 steps an epoch; killed after step 6, in epoch 2
    reference, out = _kill_and_resume(tiny_bert, credit_sample, tmp_path, 2, "train:6", every="3")
    resumed = _run(_args(tiny_bert, credit_sample, out, "--checkpointing_steps", "3",
                         "--resume_from_checkpoint", "latest"), processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(out, reference)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_sigterm_stops_two_processes_at_the_same_step_and_they_resume_to_the_same_adapter(tiny_bert, credit_sample,
                                                                                         tmp_path):
    """Each process gets SIGTERM at its third batch; they agree at the next logging step (4), save it together,
    and exit 143; the resumed pair ends where an uninterrupted pair does."""
    reference = tmp_path / "reference"
    done = _run(_args(tiny_bert, credit_sample, reference), processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    stopped = _run(_args(tiny_bert, credit_sample, out, "--checkpointing_steps", "3"), processes=2, term_at=3)
    assert stopped.returncode != 0 and not out.exists(), stopped.stderr[-3000:]
    assert "stopped by SIGTERM at optimiser step 4 (epoch 1): saved checkpoint" in stopped.stderr
    assert _checkpoints(out) == ["step-3", "step-4"]
    resumed = _run(_args(tiny_bert, credit_sample, out, "--checkpointing_steps", "3",
                         "--resume_from_checkpoint", "latest"), processes=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_same_run(out, reference)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_continual_run_killed_in_its_second_experience_resumes_to_the_same_model(block_resnet, blocks_csv,
                                                                                   tmp_path):
    """The first experience is replayed from its final checkpoint, and the replay buffer and forgetting matrix
    it leads to come out the same; with random augmentation (crops, flips) on, which each batch draws from its
    own seed."""
    config = tmp_path / "continual.yaml"
    config.write_text(json.dumps({
        "model_name_or_path": str(block_resnet), "family": "timm", "reset_head": True, "image_size": 32,
        "data": str(blocks_csv), "label_column": "label", "feature_columns": [f"p{i}" for i in range(100)],
        "text_template": None, "pixel_shape": [10, 10], "validation_size": 0.2, "test_size": 0.25,
        "experiences": [{"name": "ab", "classes": [0, 1]}, {"name": "cd", "classes": [2, 3]}], "strategy": "replay",
        "regime": "full", "num_train_epochs": 2, "per_device_train_batch_size": 16, "learning_rate": 3e-3,
        "head_learning_rate": 3e-3, "warmup_ratio": 0.0, "report_to": "none", "base_model_id": None,
        "max_forgetting": 1.0, "train_transform": {"hflip": 0.5, "scale": [0.6, 1.0]}}))

    def run(out: Path, *extra: str, kill_at: str | None = None) -> subprocess.CompletedProcess:
        return _run(["--config", str(config), "--output_dir", str(out), *extra], kill_at=kill_at, recipe="continual")

    reference, out = tmp_path / "reference", tmp_path / "out"
    assert run(reference).returncode == 0
    killed = run(out, "--checkpointing_steps", "5", kill_at="experience-2:10")
    assert killed.returncode == KILLED and not out.exists(), killed.stderr[-3000:]
    assert _checkpoints(out, "experience-1")[-1] == "step-18", "the finished experience kept its final state"
    resumed = run(out, "--checkpointing_steps", "5", "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ours, theirs = (load_file(o / "model.safetensors") for o in (out, reference))
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    results = [json.loads((o / "continual_results.json").read_text()) for o in (out, reference)]
    assert results[0]["matrix"] == results[1]["matrix"]
