"""One adapter (with its own head copy) per experience; old adapters are frozen, so nothing is forgotten in them.

Which adapter answers an input is the routing rule:

- ``task_id`` (task-incremental runs): the adapter of the example's task.
- ``confidence`` (class- and domain-incremental runs, where no task id exists at test time):
  every adapter scores the input over its own experience's classes, and the adapter with the
  highest top-class probability answers. Overconfident adapters win inputs they never saw,
  so this rule is where such a model forgets; the accuracy matrix measures it.
- ``label`` (multi-label, class-incremental): each label is answered by the adapter of the
  experience that annotates it; the labels are independent sigmoids, so nothing is chosen.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hf_adapt.continual.base import ContinualRun, ContinualTask, Experience, MultiLabelContinualTask, Strategy
from hf_adapt.continual.routing import label_logits, routed_logits
from hf_adapt.errors import ConfigError

ROUTINGS = ("auto", "task_id", "confidence", "label")
FIRST = "default"  # peft's name for the first adapter: outputs load with PeftModel.from_pretrained as usual


class AdapterPerExperience(Strategy):
    name = "adapter_per_experience"

    def __init__(self, routing: str = "auto"):
        if routing not in ROUTINGS:
            raise ConfigError(f"strategy_options.routing {routing!r} is not one of {list(ROUTINGS)}")
        self.routing = routing
        self.adapters: dict[str, str] = {}  # experience name -> adapter name

    @property
    def description(self) -> str:
        return f"a separate adapter per experience, chosen by {self.routing.replace('_', ' ')}"

    def check(self, run: ContinualRun, regime: str) -> None:
        from hf_adapt.regimes import get_regime

        if not get_regime(regime).uses_adapter:
            raise ConfigError(f"strategy adapter_per_experience needs regime: adapter, not {regime!r}")
        if self.routing == "task_id" and run.scenario != "task":
            raise ConfigError(f"routing: task_id needs the task id at test time, which a {run.scenario}-incremental "
                              "run does not have; use scenario: task, or routing: confidence")
        if run.multi_label:
            self._check_multi_label(run)
        if self.routing == "label" and not run.multi_label:
            raise ConfigError("routing: label answers each label of a multi-label model from its own adapter; a "
                              "single-label model takes task_id or confidence")
        if self.routing == "auto":
            self.routing = "task_id" if run.scenario == "task" else "label" if run.multi_label else "confidence"
        single = [e.name for e in run.experiences if len(e.classes) < 2]
        if self.routing == "confidence" and single:
            raise ConfigError(f"routing: confidence cannot serve experience(s) {single} with a single class: their "
                              "adapter would learn nothing and answer every input with certainty; merge them, or "
                              "use scenario: task")
        for earlier in run.experiences:  # a parent trained with one adapter: it answers for all its experiences
            if earlier.trained_at == 0 and earlier.name not in self.adapters:
                self.adapters[earlier.name] = FIRST

    def _check_multi_label(self, run: ContinualRun) -> None:
        if run.scenario == "domain":
            raise ConfigError("strategy adapter_per_experience with task: multi_label needs scenario: class (each "
                              "label answered by the adapter of the experience that annotates it) or task; in a "
                              "domain-incremental run every adapter annotates every label, and no rule picks one")
        if self.routing == "confidence":
            raise ConfigError("routing: confidence compares one softmax per adapter; a multi-label model answers "
                              "each label from the adapter of the experience that annotates it (routing: label)")

    def before_experience(self, run: ContinualRun, experience: Experience, model: nn.Module) -> nn.Module:
        name = FIRST if not self.adapters else f"exp{experience.task}"
        if name != FIRST:
            model.add_adapter(name, model.peft_config[FIRST])
        model.set_adapter(name)  # the active adapter (and its head copy) trains; the others are frozen
        self.adapters[experience.name] = name
        return model

    def training_task(self, run: ContinualRun, task: ContinualTask, model: nn.Module):
        # each adapter learns its own experience's classes only, so the confidences routing compares are comparable
        return run.base_task(run.head_size, always=True)

    def evaluation_task(self, run: ContinualRun, task: ContinualTask, model: nn.Module):
        learnt = [e for e in run.learnt() if e.name in self.adapters]
        if not learnt:  # before the first experience: the one fresh adapter
            return task
        positions = {e.task: i for i, e in enumerate(learnt)}
        masks = run.task_classes(run.head_size, always=True)
        experts = [(self.adapters[e.name], masks[e.task]) for e in learnt]

        loss_of = MultiLabelContinualTask.loss_of if run.multi_label else F.cross_entropy
        if self.routing == "label":
            def by_label(model_, batch):
                logits = label_logits(model_, task.logits_fn, batch["inputs"], experts)
                return {"loss": loss_of(logits, batch["labels"]), "logits": logits}

            return by_label

        def routed(model_, batch):
            choice = None
            if self.routing == "task_id":  # -1: a task not learnt yet, answered by confidence
                choice = torch.tensor([positions.get(int(t), -1) for t in batch["task"]])
            logits = routed_logits(model_, task.logits_fn, batch["inputs"], experts, choice)
            return {"loss": loss_of(logits, batch["labels"]), "logits": logits}

        return routed

    def state(self) -> tuple[dict[str, Any], dict]:
        return {"adapters": self.adapters, "routing": self.routing}, {}

    def load_state(self, facts: dict[str, Any], tensors: dict) -> None:
        if self.routing not in ("auto", facts["routing"]):
            raise ConfigError(f"strategy_options.routing {self.routing!r} differs from the parent's "
                              f"{facts['routing']!r}; an update keeps its parent's routing")
        self.adapters = dict(facts["adapters"])
        self.routing = facts["routing"]

    def card_facts(self) -> dict[str, Any]:
        return {"routing": self.routing, "adapters": dict(self.adapters)}
