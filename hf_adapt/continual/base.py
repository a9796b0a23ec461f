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

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hf_adapt.continual.routing import mask_logits
from hf_adapt.loop import Callback, ExampleDataset, Task
from hf_adapt.metrics import classification_metrics
from hf_adapt.multilabel import DEFAULT_THRESHOLD, NOT_ANNOTATED, choose_thresholds, multilabel_metrics

Row = tuple[str, int]  # (experience name, row of its train split)


@dataclass
class Experience:
    """One step of the stream: its own train, validation and test rows, with labels in the run's label map."""

    name: str
    task: int  # the task id: the experience's position in the run's history
    classes: list[int]  # label ids (in the run's label map) present in this experience (multi-label: it annotates)
    labels: dict[str, list[Any]]  # split -> label ids (multi-label: each row's positive label ids, of ``classes``)
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

    def balance_keys(self, split: str = "train") -> list[int]:
        """What a class-balanced selection balances, per row: its class; multi-label, its rarest label in this
        split (-1 for a row without one), so rare labels keep rows."""
        labels = self.labels[split]
        if not labels or not isinstance(labels[0], list):
            return list(labels)
        counts = {c: sum(c in row for row in labels) for c in self.classes}
        return [min(row, key=lambda c: (counts[c], c)) if row else -1 for row in labels]

    def targets(self, split: str, row: int, size: int) -> Any:
        """Row ``row``'s training target over a head of ``size`` outputs: its class id; multi-label, per label
        1 or 0 where this experience annotates it, else -1 (not annotated: no loss, no score)."""
        label = self.labels[split][row]
        if not isinstance(label, list):
            return label
        annotated = set(self.classes)
        return [1.0 if c in label else 0.0 if c in annotated else float(NOT_ANNOTATED) for c in range(size)]


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
    multi_label: bool = False  # task: multi_label: sigmoid outputs, each experience annotating its own labels
    thresholds: list[float] = field(default_factory=list)  # multi-label: each label's threshold (0.5 until chosen)
    chosen: set[int] = field(default_factory=set)  # multi-label: labels whose threshold validation rows chose

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
            labels.append(experience.targets(split, row, self.head_size))
            tasks.append(experience.task)
        return ExampleDataset(inputs, labels, tasks)

    def metrics(self, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """Classification metrics; multi-label, those of :func:`hf_adapt.multilabel.multilabel_metrics` over the
        annotated targets, each label decided at its threshold."""
        if not self.multi_label:
            return classification_metrics(logits, labels)
        return multilabel_metrics(logits, labels, self.thresholds_for(logits.shape[1]))

    def choose_thresholds(self, logits: np.ndarray, labels: np.ndarray) -> list[int]:
        """Multi-label: each label with a positive among these (validation) rows' annotated targets gets its F1-best
        threshold there; the others keep theirs (no old rows are needed). Returns the labels chosen."""
        thresholds, defaulted = choose_thresholds(logits, labels)
        self.thresholds = list(self.thresholds_for(logits.shape[1]))
        chosen = [j for j in range(logits.shape[1]) if j not in defaulted]
        for j in chosen:
            self.thresholds[j] = float(thresholds[j])
        self.chosen.update(chosen)
        return chosen

    def thresholds_for(self, size: int) -> np.ndarray:
        """The first ``size`` labels' thresholds (0.5 for those not chosen yet)."""
        return np.asarray(self.thresholds[:size] + [DEFAULT_THRESHOLD] * (size - len(self.thresholds)), dtype=float)

    def base_task(self, num_classes: int, always: bool = False) -> ContinualTask:
        """The loss every strategy starts from: cross-entropy over the head (``task_classes`` masks it by
        experience, see there), or binary cross-entropy over the labels each row's experience annotates."""
        if self.multi_label:
            return MultiLabelContinualTask(self.backbone.logits)
        return ContinualTask(self.backbone.logits, self.task_classes(num_classes, always))

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

    @staticmethod
    def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """How far the student's outputs are from the teacher's (both over the same classes), at ``temperature``:
        KL(teacher || student) of their softmaxes, times T^2 (Hinton et al., 2015)."""
        t = temperature
        target = F.softmax(teacher.float() / t, dim=-1)
        return t * t * F.kl_div(F.log_softmax(student.float() / t, dim=-1), target, reduction="batchmean")


class MultiLabelContinualTask(ContinualTask):
    """Binary cross-entropy per label over the (row, label) targets that are annotated (not -1): an experience
    annotates its own labels, so its rows teach nothing about the others'. Outputs are never masked."""

    def __init__(self, logits_fn):
        super().__init__(logits_fn, None)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.logits_fn(model, batch["inputs"])
        return {"loss": self.loss_of(logits, batch["labels"]), "logits": logits, "raw_logits": logits}

    @staticmethod
    def loss_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean binary cross-entropy over the annotated (row, label) targets."""
        targets = targets.float()
        known = targets != NOT_ANNOTATED
        losses = F.binary_cross_entropy_with_logits(logits.float(), targets.clamp(min=0), reduction="none")
        return (losses * known).sum() / known.sum().clamp(min=1)

    @staticmethod
    def distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        """Binary cross-entropy of the student's sigmoids against the teacher's, per label, at ``temperature``
        (times T^2, as for softmax distillation), averaged over rows and labels."""
        t = temperature
        target = torch.sigmoid(teacher.float() / t)
        return t * t * F.binary_cross_entropy_with_logits(student.float() / t, target)


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
