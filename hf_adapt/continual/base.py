"""What a continual strategy is: a :class:`~hf_adapt.loop.Callback` with a few experience-level hooks.

The recipe walks the experiences in order. For each it asks the strategy which rows to train
on (:meth:`Strategy.train_rows`: replay and joint add old rows), which task to train with
(:meth:`Strategy.training_task`: EWC and LwF add a loss term), lets it change the model
(:meth:`Strategy.before_experience`: a new adapter) and runs the one loop, :func:`hf_adapt.loop.fit`.
Afterwards the strategy takes what it needs to remember (:meth:`Strategy.after_experience`:
a buffer, a Fisher matrix, a frozen teacher). Its state is saved with the model and restored when
a later version starts from this one (``init_from``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hf_adapt.continual.routing import mask_logits
from hf_adapt.loop import Callback, ExampleDataset, Task

Row = tuple[str, int]  # (experience name, row of its train split)


@dataclass
class Experience:
    """One step of the stream: its own train, validation and test rows, with labels in the run's label map."""

    name: str
    task: int  # the task id: the experience's position in the run's history
    classes: list[int]  # label ids (in the run's label map) present in this experience
    labels: dict[str, list[int]]  # split -> label ids
    splits: dict[str, Any]  # split -> datasets.Dataset (the source's columns)
    data: Any  # the hf_adapt.data.LabelledData it was cut from: how rows become inputs
    description: dict[str, Any]  # source and filter, for the card
    trained_at: int = 0  # the accuracy-matrix row after which it has been learnt (0: before this run)
    _inputs: dict[tuple[str, str], list[Any]] = field(default_factory=dict, repr=False)

    def inputs(self, split: str, input_kind: str) -> list[Any]:
        key = (split, input_kind)
        if key not in self._inputs:
            from hf_adapt.data import rows_to_inputs

            self._inputs[key] = rows_to_inputs(self.splits[split], input_kind, self.data)
        return self._inputs[key]

    def rows(self, split: str = "train") -> list[Row]:
        return [(self.name, i) for i in range(len(self.labels[split]))]


@dataclass
class ContinualRun:
    """What strategies may read: the scenario, the experiences (learnt and to come) and the backbone."""

    scenario: str  # "class", "domain" or "task"
    experiences: list[Experience]
    label_names: list[str]
    backbone: Any
    accelerator: Any
    seed: int
    step: int = 0  # the experience being learnt (its matrix row), 0 before the first
    head_size: int = 0  # outputs of the head now (the recipe grows it)

    @property
    def input_kind(self) -> str:
        return self.backbone.preprocessor.input_kind

    def experience(self, name: str) -> Experience:
        return next(e for e in self.experiences if e.name == name)

    def learnt(self) -> list[Experience]:
        """Experiences learnt so far, including the one being learnt now."""
        return [e for e in self.experiences if e.trained_at <= self.step]

    def seen_classes(self) -> list[int]:
        return sorted({c for e in self.learnt() for c in e.classes})

    def dataset(self, rows: list[Row], split: str = "train") -> ExampleDataset:
        inputs, labels, tasks = [], [], []
        for name, row in rows:
            experience = self.experience(name)
            inputs.append(experience.inputs(split, self.input_kind)[row])
            labels.append(experience.labels[split][row])
            tasks.append(experience.task)
        return ExampleDataset(inputs, labels, tasks)

    def task_classes(self, num_classes: int, always: bool = False) -> torch.Tensor | None:
        """``[tasks, classes]``: which classes each experience may predict. None outside task-incremental runs,
        unless ``always`` (a strategy that masks by experience in any scenario)."""
        if self.scenario != "task" and not always:
            return None
        mask = torch.zeros(len(self.experiences), num_classes, dtype=torch.bool)
        for experience in self.experiences:
            mask[experience.task, [c for c in experience.classes if c < num_classes]] = True
        return mask


class ContinualTask:
    """Cross-entropy over the head; in task-incremental runs each example sees only its task's classes."""

    def __init__(self, logits_fn, task_classes: torch.Tensor | None = None):
        self.logits_fn, self.task_classes = logits_fn, task_classes

    def mask(self, logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        if self.task_classes is None:
            return logits
        return mask_logits(logits, self.task_classes.to(logits.device)[batch["task"]])

    def logits(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return self.mask(self.logits_fn(model, batch["inputs"]), batch)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raw = self.logits_fn(model, batch["inputs"])
        logits = self.mask(raw, batch)
        # raw_logits: before the task mask, for losses over other tasks' classes (distillation)
        return {"loss": F.cross_entropy(logits.float(), batch["labels"]), "logits": logits, "raw_logits": raw}


class Strategy(Callback):
    """The default for every hook is plain fine-tuning on the new experience (the ``naive`` strategy).

    A strategy that keeps state across experiences (a buffer, a Fisher matrix) returns it from
    :meth:`state` as JSON-able facts plus named tensors; both are saved with the model and
    handed back to :meth:`load_state` when a later version continues from it.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""  # one line for the card

    def check(self, run: ContinualRun, regime: str) -> None:
        """Refuse, before any training, a run this strategy cannot serve."""

    def before_experience(self, run: ContinualRun, experience: Experience, model: nn.Module) -> nn.Module:
        return model

    def train_rows(self, run: ContinualRun, experience: Experience) -> list[Row]:
        return experience.rows("train")

    def validation_rows(self, run: ContinualRun, experience: Experience) -> list[Row]:
        return experience.rows("validation")

    def training_task(self, run: ContinualRun, task: ContinualTask, model: nn.Module) -> Task:
        return task

    def evaluation_task(self, run: ContinualRun, task: ContinualTask, model: nn.Module) -> Task:
        return task

    def after_experience(self, run: ContinualRun, experience: Experience, model: nn.Module) -> None:
        """Once the experience is learnt (``model`` is unwrapped, in eval mode)."""

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, {}

    def load_state(self, facts: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned."""

    def card_facts(self) -> dict[str, Any]:
        """Settings worth a line in the card."""
        return {}
