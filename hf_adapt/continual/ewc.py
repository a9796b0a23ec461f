"""Elastic weight consolidation (Kirkpatrick et al., 2017), online form (Schwarz et al., 2018).

After each experience the diagonal empirical Fisher information of the trainable parameters
(the adapter and head under LoRA) is estimated from per-example gradients; later experiences
pay ``ewc_lambda / 2 * sum(F * (theta - theta_old) ** 2)`` for moving them. A head that grew
for new classes is anchored on its old rows only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hf_adapt.continual.base import ContinualRun, ContinualTask, Experience, Strategy
from hf_adapt.errors import ConfigError


class EWC(Strategy):
    name = "ewc"

    def __init__(self, ewc_lambda: float = 1000.0, fisher_samples: int = 256, decay: float = 1.0):
        if not ewc_lambda > 0:
            raise ConfigError(f"strategy_options.ewc_lambda must be > 0, got {ewc_lambda!r}")
        if not isinstance(fisher_samples, int) or fisher_samples < 1:
            raise ConfigError(f"strategy_options.fisher_samples must be an integer >= 1, got {fisher_samples!r}")
        if not 0 <= decay <= 1:
            raise ConfigError(f"strategy_options.decay must be in [0, 1], got {decay!r}")
        self.ewc_lambda, self.fisher_samples, self.decay = float(ewc_lambda), fisher_samples, float(decay)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}

    @property
    def description(self) -> str:
        return (f"online EWC on the trainable parameters (lambda {self.ewc_lambda:g}, Fisher from "
                f"{self.fisher_samples} examples per experience, decay {self.decay:g})")

    def training_task(self, run: ContinualRun, task: ContinualTask, model: nn.Module):
        if not self.fisher:
            return task
        params = {n: p for n, p in model.named_parameters() if n in self.fisher}
        missing = sorted(set(self.fisher) - set(params))
        if missing:
            raise ConfigError(f"ewc: the model lacks parameters its Fisher matrix covers, e.g. {missing[:3]}; "
                              "continue with the same regime and adapter settings as the earlier version")

        def penalised(model_, batch):
            out = task(model_, batch)
            penalty = sum((self.fisher[n].to(p.device) * (p[: self.anchor[n].shape[0]] - self.anchor[n].to(p.device)) ** 2).sum()
                          for n, p in params.items())
            out["loss"] = out["loss"] + self.ewc_lambda / 2 * penalty
            return out

        return penalised

    def after_experience(self, run: ContinualRun, experience: Experience, model: nn.Module) -> None:
        accelerator = run.accelerator
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        generator = torch.Generator().manual_seed(run.seed)
        rows = experience.rows("train")
        pick = sorted(torch.randperm(len(rows), generator=generator)[: self.fisher_samples].tolist())
        mine = pick[accelerator.process_index::accelerator.num_processes]  # each example once, on one process
        from accelerate.data_loader import prepare_data_loader

        from hf_adapt.loop import make_loader

        loader = prepare_data_loader(make_loader(run.dataset([rows[i] for i in mine]), run.backbone.preprocessor.collate,
                                                 1, train=False, seed=run.seed),
                                     accelerator.device, num_processes=1, process_index=0, put_on_device=True)
        task = run.base_task(run.head_size)
        sums = {n: torch.zeros_like(p) for n, p in params.items()}
        count = torch.zeros((), device=accelerator.device)
        model.eval()
        for batch in loader:  # one example per batch: the empirical Fisher needs per-example gradients
            grads = torch.autograd.grad(task(model, batch)["loss"], list(params.values()), allow_unused=True)
            for (name, _), grad in zip(params.items(), grads):
                if grad is not None:
                    sums[name] += grad.detach() ** 2
            count += 1
        count = accelerator.reduce(count, reduction="sum")
        for name, total in sums.items():
            fisher = accelerator.reduce(total, reduction="sum") / count.clamp(min=1)
            old = self.fisher.get(name)
            if old is not None:  # online EWC: decay the old importance, keep it on the rows it covers
                fisher[: old.shape[0]] += self.decay * old.to(fisher.device)
            self.fisher[name] = fisher.cpu()
            self.anchor[name] = params[name].detach().cpu().clone()

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {f"fisher/{n}": t.contiguous() for n, t in self.fisher.items()}
        tensors.update({f"anchor/{n}": t.contiguous() for n, t in self.anchor.items()})
        return {"parameters": len(self.fisher)}, tensors

    def load_state(self, facts: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.fisher = {k.removeprefix("fisher/"): v for k, v in tensors.items() if k.startswith("fisher/")}
        self.anchor = {k.removeprefix("anchor/"): v for k, v in tensors.items() if k.startswith("anchor/")}

    def card_facts(self) -> dict[str, Any]:
        return {"ewc_lambda": self.ewc_lambda, "fisher_samples": self.fisher_samples, "decay": self.decay}
