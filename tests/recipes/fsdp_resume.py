"""Run under ``torchrun --nproc_per_node 2`` on CPU (gloo): :func:`hf_adapt.loop.fit` on a tiny BERT with a LoRA
adapter, sharded with FSDP2 (``fully_shard`` per encoder layer and the root, as in ``fsdp_save.py``: Accelerate
shards only on GPUs), checkpointing through :class:`hf_adapt.checkpoints.Checkpoints` with the run checks a recipe
uses. Usage: ``fsdp_resume.py MODEL_DIR OUT_DIR MODE [LEARNING_RATE]``, MODE one of

- ``whole``: train 2 epochs (6 optimiser steps) without checkpoints;
- ``stop``: checkpoint every 2 steps, and every process exits right after the step-4 checkpoint (mid-epoch 2);
- ``resume``: ``--resume_from_checkpoint latest`` in a fresh launch, and finish.

A finished run's main process writes ``OUT_DIR/final.safetensors`` (the gathered weights ``fit`` returns: the best
epoch's, the first, restored), ``last.safetensors`` (the weights and AdamW moments as the last epoch ended, gathered) and
``history.json``, and prints ``FSDP-RESUME done <mode>``."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.distributed.fsdp import fully_shard

from hf_adapt import checkpoints as checkpointing
from hf_adapt.artifacts import gathered_state
from hf_adapt.backbones import BackboneSpec, build_backbone
from hf_adapt.loop import Callback, ClassificationTask, ExampleDataset, LoopSettings, evaluate, fit, make_loader
from hf_adapt.regimes import apply_regime
from hf_adapt.runtime import make_accelerator

TEXTS = [f"applicant {i}: {'steady job, savings' if i % 3 else 'late payments, no savings'}" for i in range(32)]
LABELS = [int(i % 3 != 0) for i in range(32)]
ADAPTER = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1}  # dropout: RNG states must resume


@dataclass
class RunConfig:
    """The settings the run record pins (and those it lets a resumed run change)."""

    output_dir: str
    learning_rate: float = 5e-2
    overwrite_output_dir: bool = False
    checkpointing_steps: int | None = field(default=None, metadata={"resumable": True})
    checkpoints_total_limit: int = field(default=2, metadata={"resumable": True})
    resume_from_checkpoint: str | None = field(default=None, metadata={"resumable": True})


class LastEpoch(Callback):
    """Gather the weights and the optimizer's moments as the last epoch ends (every process takes part)."""

    def __init__(self, out: Path, epochs: int):
        self.out, self.epochs = out, epochs

    def on_train_start(self, accelerator, model, optimizer) -> None:
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        if epoch != self.epochs:
            return
        weights = gathered_state(self.accelerator, self.model)
        moments = get_optimizer_state_dict(self.model, self.optimizer.optimizer,
                                           options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.accelerator.is_main_process:
            tensors = {f"weight.{k}": v for k, v in weights.items()}
            tensors |= {f"{name}.{k}": v[name] for k, v in moments["state"].items() for name in ("exp_avg", "exp_avg_sq")}
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(self.out / "last.safetensors"))


def evaluate_small_adapter(accelerator, model, task, loader) -> dict[str, float]:
    """The validation metrics and ``small_adapter``, minus the norm of LoRA's B matrices: they grow from zero, so the
    first epoch is the best, and the weights ``fit`` restores at the end are the ones the checkpoint kept (sharded)."""
    norm = sum(float(p.full_tensor().norm()) for name, p in model.named_parameters() if ".lora_B." in name)
    return {**evaluate(accelerator, model, task, loader), "small_adapter": -norm}


def sharded_model(model_dir: str):
    spec = BackboneSpec(model_dir, num_labels=2, family="transformers", reset_head=True, max_length=32)
    torch.manual_seed(0)  # every process builds the same head and adapter
    backbone = build_backbone(spec)
    model = apply_regime(backbone, "adapter", ADAPTER)
    for module in model.modules():
        if type(module).__name__ == "BertLayer":
            fully_shard(module)
    fully_shard(model)
    model._is_accelerate_prepared = True  # sharded already: Accelerate's prepare would wrap it in DDP on CPU
    return backbone, model


def stop_after(step: int) -> None:
    """Every process exits (no teardown) once the step-``step`` checkpoint is in place: a run stopped there."""
    save = checkpointing.Phase.save

    def save_then_exit(self, accelerator, at_step, *args, **kwargs):
        path = save(self, accelerator, at_step, *args, **kwargs)
        if at_step == step:
            print(f"FSDP-RESUME stopped {at_step}", flush=True)
            os._exit(0)
        return path

    checkpointing.Phase.save = save_then_exit


def main(model_dir: str, out_dir: str, mode: str, learning_rate: str = "5e-2") -> None:
    out = Path(out_dir)
    accelerator = make_accelerator("no", 1, "none")
    cfg = RunConfig(output_dir=str(out), learning_rate=float(learning_rate),
                    checkpointing_steps=2 if mode == "stop" else None,
                    resume_from_checkpoint="latest" if mode == "resume" else None)
    backbone, model = sharded_model(model_dir)
    collate = backbone.preprocessor.collate
    train = make_loader(ExampleDataset(TEXTS[:24], LABELS[:24]), collate, 4, train=True, seed=3)
    evaluation = make_loader(ExampleDataset(TEXTS[24:], LABELS[24:]), collate, 4, train=False, seed=3)
    phase = None
    runs = checkpointing.Checkpoints.from_config(cfg)
    if runs is not None:
        runs.open(accelerator, cfg, data_sha256="tiny-texts")  # refuses a resume with other settings
        phase = runs.phase(accelerator, "train")
        if phase.resume_from is not None and accelerator.is_main_process:
            print(f"FSDP-RESUME from {phase.resume_from}", flush=True)
    if mode == "stop":
        stop_after(4)
    settings = LoopSettings(num_train_epochs=2, learning_rate=cfg.learning_rate, logging_steps=1,
                            metric_for_best_model="small_adapter", head_names=backbone.head_names)
    task = ClassificationTask(backbone.forward)
    model, result = fit(accelerator, model, task, train, evaluation, settings, evaluate_small_adapter,
                        callbacks=[LastEpoch(out, 2)], checkpoints=phase)
    state = gathered_state(accelerator, model)
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(out / "final.safetensors"))
        (out / "history.json").write_text(json.dumps({"history": result.history, "best_epoch": result.best_epoch,
                                                      "steps": result.steps}))
        print(f"FSDP-RESUME done {mode}", flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
    main(*sys.argv[1:])
