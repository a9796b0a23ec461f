"""Models whose weights are sharded across processes (FSDP2, DeepSpeed ZeRO): which they are, and their checkpoints.

Accelerate's ``save_state`` writes one process's view of the model and optimizer. That is the
whole state under DDP, but under FSDP2 (parameters as ``DTensor`` shards, whether Accelerate's
``fsdp_version: 2`` or ``fully_shard`` applied them) each process holds only its shard of the
weights and of the optimizer state, and a model that Accelerate did not shard itself would be
saved as the main process's shard alone. So:

- FSDP2: the trainable weights and the optimizer state go through ``torch.distributed.checkpoint``
  (DCP), every process writing its own shard into ``sharded/`` of the checkpoint, read and
  written with ``get_state_dict`` / ``set_state_dict`` (torch's recommended path, which maps the
  optimizer state to parameter names, so it reloads whatever the sharding). Accelerate's
  ``save_state`` still writes the rest (scheduler, every process's RNG states, gradient scaler),
  with the model and optimizer held out of it.
- DeepSpeed (any ZeRO stage): Accelerate's ``save_state`` calls the engine's
  ``save_checkpoint``, which writes each process's partitions of the weights and optimizer;
  frozen parameters are left out (``exclude_frozen_parameters``), as hf-adapt checkpoints only
  what training changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from hf_adapt.errors import ConfigError

SHARDED_DIR = "sharded"  # a DCP checkpoint: one .distcp file per process and a .metadata index


def is_fsdp2(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP2 (``DTensor``) shards."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def zero3_engine(accelerator, model: nn.Module):
    """The DeepSpeed ZeRO-3 engine that wraps ``model`` (whose parameters it partitions); None under anything else."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None or plugin.zero_stage != 3:
        return None
    return next((m for m in getattr(accelerator, "_models", []) if accelerator.unwrap_model(m) is model), model)


def is_sharded(accelerator, model: nn.Module) -> bool:
    """Whether no process holds ``model``'s full weights (FSDP2, ZeRO-3): a forward pass is then a collective."""
    return is_fsdp2(model) or zero3_engine(accelerator, model) is not None


def uses_deepspeed(accelerator) -> bool:
    return str(getattr(accelerator, "distributed_type", "")).endswith("DEEPSPEED")


def require_deepspeed(gpu: bool) -> None:
    """A launch that asks for DeepSpeed (``ACCELERATE_USE_DEEPSPEED``): refuse it by name where it cannot run, before
    Accelerate would fail with its own message or, on a machine without a GPU, quietly run without DeepSpeed."""
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("this launch asks for DeepSpeed (distributed_type: DEEPSPEED), which is not installed: "
                          'pip install -e ".[deepspeed]" (it needs a CUDA toolkit), or launch with '
                          "recipes/accelerate/fsdp.yaml, which shards with torch alone")
    if not gpu:
        raise ConfigError("this launch asks for DeepSpeed, which runs on GPUs and this machine has none; "
                          "launch with recipes/accelerate/cpu_2proc.yaml for several CPU processes")


@contextlib.contextmanager
def accelerate_state_only(accelerator) -> Iterator[None]:
    """Hold the models and optimizers out of ``accelerator.save_state`` / ``load_state`` (which then keep the
    schedulers, RNG states and scaler): their sharded states go through DCP instead. Accelerate has no option for
    this, so its lists are swapped for empty ones for the call."""
    models, optimizers = accelerator._models, accelerator._optimizers
    accelerator._models, accelerator._optimizers = [], []
    try:
        yield
    finally:
        accelerator._models, accelerator._optimizers = models, optimizers


def _options(**kwargs: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, **kwargs)  # what training changes, buffers included


def save_dcp(directory: Path, model: nn.Module, optimizer, tensors: dict[str, Any]) -> None:
    """Every process writes its shard of ``model``'s trainable weights, ``optimizer``'s state and the ``tensors``
    (the loop's sharded ones: the best epoch's weights) to ``directory / sharded``. Collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, _plain(optimizer), options=_options())
    dcp.save({"model": model_state, "optim": optim_state, "loop": tensors}, checkpoint_id=str(directory / SHARDED_DIR))


def load_dcp(directory: Path, model: nn.Module, optimizer, tensor_keys: list[str]) -> dict[str, Any]:
    """Restore what :func:`save_dcp` wrote into ``model`` and ``optimizer`` (sharded as they are now), after checking
    that the checkpoint holds exactly this model's trainable tensors; the loop's ``tensor_keys`` (``best.<name>``),
    each shaped and sharded like the model's ``<name>``. Collective."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    path = directory / SHARDED_DIR
    model_state, optim_state = get_state_dict(model, _plain(optimizer), options=_options())
    saved = {k.removeprefix("model.") for k in dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
             if k.startswith("model.")}
    # DCP flattens nested keys with dots; parameter names hold dots too, so compare whole names
    check_fits(directory, saved, set(model_state))
    current = model.state_dict()
    tensors = {k: torch.empty_like(current[k.removeprefix("best.")]) for k in tensor_keys}
    loaded = {"model": model_state, "optim": optim_state, "loop": tensors}
    dcp.load(loaded, checkpoint_id=str(path), planner=_plain_data_planner())
    set_state_dict(model, _plain(optimizer), model_state_dict=loaded["model"], optim_state_dict=loaded["optim"],
                   options=_options(strict=False))  # frozen weights are not in it: they stay as built
    return loaded["loop"]


def check_fits(path: Path, saved: set[str], expected: set[str]) -> None:
    """Refuse a checkpoint whose trainable tensors are not this model's, naming a few of each side."""
    if saved != expected:
        raise ConfigError(
            f"checkpoint {path} does not fit this model: {len(saved - expected)} saved tensors it lacks "
            f"(e.g. {sorted(saved - expected)[:3]}), {len(expected - saved)} it needs that were not saved "
            f"(e.g. {sorted(expected - saved)[:3]}); resume with the settings of the run that saved it")


def _plain_data_planner():
    """DCP's loader, but what is not a tensor (the optimizer's param groups) must unpickle as plain data
    (``weights_only``): DCP's default would run any pickle."""
    import torch
    from torch.distributed.checkpoint import DefaultLoadPlanner

    class PlainDataPlanner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value) -> None:
            torch.load(value, weights_only=True)  # raises on anything but tensors, numbers, strings and containers
            value.seek(0)
            super().load_bytes(read_item, value)

    return PlainDataPlanner()


def _plain(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the torch one
