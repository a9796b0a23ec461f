"""Run ``hf-adapt feedback train`` with the policy's base sharded by FSDP2, under ``torchrun --nproc_per_node 2`` on
CPU (gloo). Accelerate applies FSDP to GPU ranks only, so this launcher shards the base itself as it is loaded
(``fully_shard`` per decoder layer and the root), the way transformers' distributed loading hands a sharded model
to its ``Trainer`` (``is_distributed_loading_by_transformers``: no DDP wrap; the adapter peft adds stays replicated,
its gradients averaged by the Trainer). Every forward pass of the policy is then a collective, as under
Accelerate's FSDP2. Only the round's first model is sharded (the recipe may build more on one process).
Usage: ``feedback_fsdp.py feedback train <flags>``; prints ``FEEDBACK-FSDP sharded``."""

from __future__ import annotations

import sys

import torch
from torch.distributed.fsdp import fully_shard

from hf_adapt.cli import main
from hf_adapt.feedback import model as feedback_model

build_base = feedback_model.build_base


def sharded_base(*args, **kwargs):
    backbone = build_base(*args, **kwargs)
    feedback_model.build_base = build_base  # the first model only
    for module in backbone.model.modules():
        if type(module).__name__ == "LlamaDecoderLayer":
            fully_shard(module)
    fully_shard(backbone.model)
    assert any(isinstance(p, torch.distributed.tensor.DTensor) for p in backbone.model.parameters())
    backbone.model._is_distributed_loading_by_transformers = True  # what from_pretrained(distributed_config=...) sets
    print("FEEDBACK-FSDP sharded", flush=True)
    return backbone


if __name__ == "__main__":
    feedback_model.build_base = sharded_base
    sys.exit(main(sys.argv[1:]))
