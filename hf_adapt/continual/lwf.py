"""Learning without forgetting (Li & Hoiem, 2016): distil the previous model's outputs on the old classes.

Before each experience after the first, a frozen copy of the model is kept as teacher; the
loss adds ``alpha * T^2 * KL(teacher || student)`` over the classes learnt so far, at
temperature ``T``, on the new experience's inputs (multi-label: the binary cross-entropy of the
student's sigmoids against the teacher's, per old label). No old data is kept.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from hf_adapt.continual.base import ContinualRun, ContinualTask, Experience, Strategy
from hf_adapt.errors import ConfigError


class LwF(Strategy):
    name = "lwf"

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0):
        if not alpha > 0 or not temperature > 0:
            raise ConfigError(f"strategy_options.alpha and temperature must be > 0, got {alpha!r} and {temperature!r}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.teacher: nn.Module | None = None
        self.old_classes = 0

    @property
    def description(self) -> str:
        return f"learning without forgetting (distillation weight {self.alpha:g}, temperature {self.temperature:g})"

    def before_experience(self, run: ContinualRun, experience: Experience, model: nn.Module) -> nn.Module:
        old = [c for e in run.experiences if e.trained_at < run.step for c in e.classes]
        self.teacher, self.old_classes = None, 0
        if old:
            self.teacher = copy.deepcopy(model).eval().requires_grad_(False)
            self.old_classes = max(old) + 1  # label ids are assigned in order of arrival: old classes come first
        return model

    def training_task(self, run: ContinualRun, task: ContinualTask, model: nn.Module):
        if self.teacher is None:
            return task
        teacher, n = self.teacher, self.old_classes

        def distilled(model_, batch):
            out = task(model_, batch)
            # before any task mask: in task-incremental runs the old classes are exactly the masked ones
            with torch.no_grad():
                target = task.logits_fn(teacher, batch["inputs"])[:, :n]
            distance = task.distillation(out["raw_logits"][:, :n], target, self.temperature)
            out["loss"] = out["loss"] + self.alpha * distance
            return out

        return distilled

    def after_experience(self, run: ContinualRun, experience: Experience, model: nn.Module) -> None:
        self.teacher = None  # the next experience copies the model it starts from

    def card_facts(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "temperature": self.temperature}
