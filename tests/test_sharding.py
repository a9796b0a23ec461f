"""What can be checked of DeepSpeed without DeepSpeed or a GPU: a launch that asks for it is refused by name, and a
checkpoint under it goes through the engine's own sharded save and load (Accelerate's ``save_state`` /
``load_state`` hand those keyword arguments to ``engine.save_checkpoint`` / ``load_checkpoint``). FSDP2 checkpoints
are tested on two CPU processes in tests/recipes/test_fsdp.py."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from hf_adapt.checkpoints import STATE_FILE, Phase
from hf_adapt.errors import ConfigError
from hf_adapt.runtime import make_accelerator


def test_a_deepspeed_launch_without_deepspeed_says_how_to_install_it(monkeypatch):
    import importlib.util

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match=r'pip install -e "\.\[deepspeed\]"'):
            make_accelerator("no", 1, "none")
    elif not torch.accelerator.is_available():
        with pytest.raises(ConfigError, match="runs on GPUs"):
            make_accelerator("no", 1, "none")
    else:
        pytest.skip("DeepSpeed and a GPU are here: the launch is allowed")


class FakeDeepSpeedAccelerator:
    """Records what ``Phase`` asks of Accelerate under ``distributed_type: DEEPSPEED``."""

    distributed_type = "DistributedType.DEEPSPEED"
    is_main_process, num_processes = True, 1

    def __init__(self):
        self.calls = []

    def save_state(self, directory, **kwargs):
        self.calls.append(("save_state", kwargs))

    def load_state(self, directory, **kwargs):
        self.calls.append(("load_state", kwargs))

    def wait_for_everyone(self):
        pass

    def register_save_state_pre_hook(self, hook):
        raise AssertionError("the trainable-only hook cannot filter the engine's checkpoint")


def test_a_deepspeed_checkpoint_goes_through_the_engine_without_the_frozen_weights(tmp_path):
    accelerator, model = FakeDeepSpeedAccelerator(), nn.Linear(2, 2)
    phase = Phase(tmp_path / "train", 2, 2, None)
    path = phase.save(accelerator, 2, {"step": 2, "epoch": 1}, {"running": torch.zeros(1)}, model, None)
    assert accelerator.calls == [("save_state", {"exclude_frozen_parameters": True})]
    assert json.loads((path / STATE_FILE).read_text())["step"] == 2
    state, tensors = Phase(tmp_path / "train", 2, 2, path).load(accelerator, model, None)
    # frozen weights are not in the checkpoint: the engine must not insist on them
    assert accelerator.calls[-1] == ("load_state", {"load_module_strict": False})
    assert state["step"] == 2 and set(tensors) == {"running"}


def test_a_checkpoint_resumes_only_under_the_launch_that_saved_it(tmp_path):
    """A two-process FSDP2 checkpoint holds its weights as DCP shards and no model.safetensors: resumed by a plain
    launch it is refused by name before anything is read, not with a missing file."""
    from safetensors.torch import save_file

    from hf_adapt.checkpoints import TENSORS_FILE

    step = tmp_path / "train" / "step-4"
    (step / "sharded").mkdir(parents=True)
    save_file({"running": torch.zeros(())}, str(step / TENSORS_FILE))
    (step / STATE_FILE).write_text(json.dumps({"step": 4, "epoch": 1, "num_processes": 2, "sharding": "fsdp2"}))
    accelerator = make_accelerator("no", 1, "none")
    model = accelerator.prepare(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"saved by 2 process\(es\) with sharding fsdp2; resume it as it was "
                                          r"launched \(now 1, sharding none\)"):
        Phase(step.parent, 2, 2, step).load(accelerator, model)


def test_keeping_the_best_epoch_under_zero3_is_refused_not_silently_skipped():
    from types import SimpleNamespace

    from hf_adapt.loop import LoopSettings, _check_best_epoch

    model = nn.Linear(2, 2)
    zero3 = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)), _models=[model],
                            unwrap_model=lambda m: m)
    with pytest.raises(ConfigError, match="best epoch's weights is not implemented under DeepSpeed ZeRO-3"):
        _check_best_epoch(zero3, model, LoopSettings(num_train_epochs=1), eval_loader=[])
    _check_best_epoch(zero3, model, LoopSettings(num_train_epochs=1, restore_best=False), eval_loader=[])
    _check_best_epoch(zero3, model, LoopSettings(num_train_epochs=1), eval_loader=None)  # nothing to select on
    zero2 = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2)))
    _check_best_epoch(zero2, model, LoopSettings(num_train_epochs=1), eval_loader=[])
