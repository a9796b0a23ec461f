"""Run under ``torchrun --nproc_per_node 2`` on CPU (gloo): a tiny BERT classifier under each regime, sharded with
FSDP2 (``fully_shard``, per encoder layer and the root, as Accelerate's ``fsdp_version: 2`` wraps transformer
blocks), trained one step, then gathered with :func:`hf_adapt.artifacts.gathered_state` and written by
:func:`hf_adapt.artifacts.save_model`. The main process restores the files onto a fresh backbone and checks its
logits against the sharded model's. Usage: ``fsdp_save.py MODEL_DIR OUT_DIR``; prints ``FSDP-SAVE <regime> <max
abs logit difference>`` per regime."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.distributed.fsdp import fully_shard

from hf_adapt.artifacts import gathered_state, restore_model, save_model
from hf_adapt.backbones import BackboneSpec, build_backbone
from hf_adapt.regimes import apply_regime
from hf_adapt.runtime import make_accelerator

TEXTS = [f"applicant {i}: {'steady job, savings' if i % 2 else 'late payments, no savings'}" for i in range(16)]
ADAPTER = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "lora_dropout": 0.0}


def sharded_step(model_dir: str, regime: str, accelerator) -> tuple:
    spec = BackboneSpec(model_dir, num_labels=2, family="transformers", reset_head=True, max_length=32)
    torch.manual_seed(0)  # every rank builds the same head and adapter
    backbone = build_backbone(spec)
    model = apply_regime(backbone, regime, ADAPTER)
    for module in model.modules():
        if type(module).__name__ == "BertLayer":
            fully_shard(module)
    fully_shard(model)
    assert any(isinstance(p, torch.distributed.tensor.DTensor) for p in model.parameters()), "nothing was sharded"
    rank = accelerator.process_index
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    batch = backbone.preprocessor.collate(TEXTS[rank::2], train=True)
    loss = F.cross_entropy(backbone.forward(model, batch), torch.tensor([i % 2 for i in range(rank, 16, 2)]))
    loss.backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = backbone.forward(model, backbone.preprocessor.collate(TEXTS, train=False))
    return spec, backbone, model, logits


def language_model(model_dir: str, out_dir: Path, accelerator) -> None:
    """A masked LM with an adapter (pretrain's save_lm, with the MLM head the checkpoint lacks): the files written
    from the gathered shards equal those written from the unsharded model."""
    from safetensors.torch import load_file

    from hf_adapt.lm import LM_HEAD_FILE, build_lm, save_lm

    torch.manual_seed(0)
    backbone, _ = build_lm(BackboneSpec(model_dir, num_labels=0, family="transformers", max_length=32), "mlm")
    model = apply_regime(backbone, "adapter", ADAPTER)
    if accelerator.is_main_process:
        save_lm(model, backbone, "adapter", out_dir / "lm-unsharded")
    for module in model.modules():
        if type(module).__name__ == "BertLayer":
            fully_shard(module)
    fully_shard(model)
    state = gathered_state(accelerator, model)
    if accelerator.is_main_process:
        save_lm(model, backbone, "adapter", out_dir / "lm-sharded", state)
        for name in ("adapter_model.safetensors", LM_HEAD_FILE):
            one, other = (load_file(str(out_dir / d / name)) for d in ("lm-unsharded", "lm-sharded"))
            assert set(one) <= set(other), (name, sorted(set(one) - set(other)))
            assert all(torch.equal(one[k], other[k]) for k in one), name
        print("FSDP-SAVE language_model 0", flush=True)
    accelerator.wait_for_everyone()


def main(model_dir: str, out_dir: str) -> None:
    accelerator = make_accelerator("no", 1, "none")
    language_model(model_dir, Path(out_dir), accelerator)
    for regime in ("adapter", "full", "linear_probe"):
        spec, backbone, model, logits = sharded_step(model_dir, regime, accelerator)
        state = gathered_state(accelerator, model)  # every rank takes part
        if accelerator.is_main_process:
            directory = Path(out_dir) / regime
            directory.mkdir(parents=True)
            save_model(model, backbone, regime, directory, state)
            fresh = build_backbone(spec)
            restored = restore_model(fresh, regime, directory).eval()
            with torch.no_grad():
                reloaded = fresh.forward(restored, fresh.preprocessor.collate(TEXTS, train=False))
            print(f"FSDP-SAVE {regime} {float((reloaded - logits).abs().max()):.3g}", flush=True)
        accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:3])
