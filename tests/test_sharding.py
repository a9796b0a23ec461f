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
