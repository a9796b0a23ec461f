"""The one Accelerate training and evaluation loop.

A task turns a batch into ``{"loss", "logits"}``; the loop never moves tensors by hand
and never asks whether it runs distributed: ``accelerator.prepare``, ``accumulate``,
``backward`` and ``gather_for_metrics`` take care of that.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from hf_adapt import preemption
from hf_adapt.adapters import freeze_frozen_norm_statistics
from hf_adapt.metrics import classification_metrics, is_better

logger = logging.getLogger(__name__)


class Task(Protocol):
    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``{"loss": scalar, "logits": [batch, ...]}`` for one batch."""


class ClassificationTask:
    """Cross-entropy on the backbone's logits, optionally weighted per class (``class_weights[c]``)."""

    def __init__(self, logits_fn: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor],
                 class_weights: torch.Tensor | None = None):
        self.logits_fn = logits_fn
        self.class_weights = class_weights

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self.logits_fn(model, batch["inputs"])
        weight = None if self.class_weights is None else self.class_weights.to(logits.device)
        return {"loss": F.cross_entropy(logits.float(), batch["labels"], weight=weight), "logits": logits}


def balanced_class_weights(labels: list[int], num_classes: int) -> torch.Tensor:
    """``n_rows / (n_classes x rows of class c)`` per class, as scikit-learn's ``compute_class_weight("balanced")``.

    A class absent from ``labels`` gets weight 0 (it contributes no loss either way).
    """
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=num_classes).double()
    present = counts > 0
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = counts.sum() / (int(present.sum()) * counts[present])
    return weights.float()


class Callback:
    """Hooks into :func:`fit`; override what you need. Strategies (gradual unfreezing, continual
    learning) are callbacks on this one loop, never a second loop."""

    def on_train_start(self, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Once, after ``accelerator.prepare``."""

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """Before each epoch's first batch, after ``model.train()``."""

    def before_optimizer_step(self, model: nn.Module) -> None:
        """Once the gradients of an optimiser step are synchronised, before clipping and ``optimizer.step()``."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """After each epoch's evaluation (``metrics``: the validation metrics, if any, and ``train_loss``), on every
        process; may raise to stop training (a hyperparameter search prunes a trial so)."""


class CheckpointPhase(Protocol):
    """Where :func:`fit` saves its training state and resumes from (:class:`hf_adapt.checkpoints.Phase`)."""

    every_steps: int | None  # save every this many optimiser steps (None: only when training ends)
    resume_from: Path | None  # the checkpoint to continue from; None: start fresh

    @property
    def name(self) -> str:
        """The phase's name, recorded in the state it saves."""

    def save(self, accelerator, step: int, state: dict[str, Any], tensors: dict[str, Any], model: nn.Module,
             optimizer: torch.optim.Optimizer) -> Path:
        """Save the training state (``model``'s and ``optimizer``'s, sharded or not, and the accelerator's) with the
        loop's ``state`` and ``tensors``; collective. The checkpoint's path."""

    def load(self, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer,
             ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Restore the state saved in ``resume_from`` (after ``accelerator.prepare``): the loop's state and tensors.
        A checkpoint saved by another number of processes, or sharded otherwise, is refused before it is read."""


class ExampleDataset(Dataset):
    """Raw inputs (texts or images) with labels (class ids, or regression targets), and optionally the task id of each (continual learning)."""

    def __init__(self, inputs: list[Any], labels: list[int], tasks: list[int] | None = None):
        if len(inputs) != len(labels) or (tasks is not None and len(tasks) != len(labels)):
            raise ValueError(f"{len(inputs)} inputs, {len(labels)} labels and {len(tasks or labels)} task ids")
        self.inputs, self.labels, self.tasks = inputs, labels, tasks

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if self.tasks is None:
            return self.inputs[index], self.labels[index]
        return self.inputs[index], self.labels[index], self.tasks[index]


def make_loader(dataset: ExampleDataset, collate: Callable, batch_size: int, train: bool, seed: int,
                num_workers: int = 0, balanced: bool = False, lengths: list[int] | None = None) -> DataLoader:
    """Batches of ``{"inputs", "labels"[, "task"]}``; shuffled (seeded) for training.

    ``balanced``: training batches are drawn with replacement, each class equally likely
    (a seeded ``WeightedRandomSampler``; an epoch is still ``len(dataset)`` examples).
    ``lengths`` (each row's, ``group_by_length``): training batches hold rows of similar length, shuffled in
    mega-batches of 50 batches each sorted by length (transformers' seeded ``LengthGroupedSampler``), so a
    padded batch wastes less.
    ``dataset`` may instead be a stream (:class:`hf_adapt.data.stream.TrainStream`), which orders itself.
    """
    def collate_fn(examples):
        inputs, labels, *tasks = zip(*examples)
        # class ids, (regression) standardised numbers, or (multi-label) a 0/1 flag per label
        floats = any(isinstance(label, (float, list)) for label in labels)  # multi-label rows: 0/1 lists
        batch = {"inputs": collate(list(inputs), train),
                 "labels": torch.tensor(labels, dtype=torch.float32 if floats else torch.long)}
        if tasks:
            batch["task"] = torch.tensor(tasks[0], dtype=torch.long)
        return batch

    if isinstance(dataset, IterableDataset):  # (position, example): batches seeded by position, as rows are below
        # its own generator: starting an iteration (each epoch, a resume) draws a seed, never from dropout's
        return DataLoader(dataset, batch_size=batch_size, collate_fn=_seeded(collate_fn, seed),
                          generator=torch.Generator().manual_seed(seed))
    if not train:
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_fn, num_workers=num_workers)
    sampler = None
    if balanced:
        from torch.utils.data import WeightedRandomSampler

        labels = torch.as_tensor(dataset.labels)
        weights = (1.0 / torch.bincount(labels).double())[labels]
        sampler = WeightedRandomSampler(weights, num_samples=len(labels), replacement=True,
                                        generator=torch.Generator().manual_seed(seed))
    elif lengths is not None:
        from transformers.trainer_pt_utils import LengthGroupedSampler

        if len(lengths) != len(dataset):
            raise ValueError(f"{len(lengths)} lengths for {len(dataset)} rows")
        sampler = LengthGroupedSampler(batch_size, lengths=list(lengths), generator=torch.Generator().manual_seed(seed))
    return training_loader(dataset, collate_fn, batch_size, seed, num_workers, sampler)


def training_loader(dataset: Dataset, collate_fn: Callable, batch_size: int, seed: int, num_workers: int = 0,
                    sampler=None) -> DataLoader:
    """A seeded, shuffled (or ``sampler``-drawn) training loader whose batches draw their random numbers
    (augmentation, masking) from a seed of their own: a hash of ``seed``, a salt that changes every
    epoch, and the rows the batch holds.

    So a batch comes out the same whatever ran before it, in any worker process, and a run resumed
    mid-epoch (Accelerate's loader collates one batch ahead) sees exactly the batches it would have;
    the salt gives the same rows new draws next epoch, even in a batch of one.
    """
    # the order (or the sampler's draws), the salts and the workers' base seed, all from one generator that
    # fit() rewinds to an epoch's start when it resumes
    generator = getattr(sampler, "generator", None) or torch.Generator().manual_seed(seed)
    order = sampler or torch.utils.data.RandomSampler(range(len(dataset)), generator=generator)
    # a last batch of one row: BatchNorm cannot train on it ("Expected more than 1 value per channel"), and one
    # row's gradient step is noise; a different row sits it out each epoch
    lone = len(order) > batch_size and len(order) % batch_size == 1
    return DataLoader(_Keyed(dataset), batch_size=batch_size, sampler=_Salted(order, generator),
                      collate_fn=_seeded(collate_fn, seed), generator=generator, num_workers=num_workers, drop_last=lone)


def _seeded(collate_fn: Callable, seed: int) -> Callable:
    """``collate_fn`` over ``(key, item)`` pairs, its random draws seeded by ``seed`` and the batch's keys."""
    def seeded_collate(items):
        keys = [key for key, _ in items]
        with _batch_rng(seed, keys):
            return collate_fn([item for _, item in items])

    return seeded_collate


class _Salted(torch.utils.data.Sampler):
    """``(salt, index)`` for each index of ``sampler``. The salt is a hash of ``generator``'s state as each pass
    starts: new every epoch, the same after a rewind, and drawn from nothing (the shuffle is what it was)."""

    def __init__(self, sampler, generator: torch.Generator):
        self.sampler, self.generator = sampler, generator

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        salt = _hash64(self.generator.get_state().numpy().tobytes())
        return ((salt, index) for index in self.sampler)


class _Keyed(Dataset):
    """A dataset read by ``(salt, index)`` keys, whose items carry their key."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[tuple[int, int], Any]:
        return key, self.dataset[key[1]]


def _hash64(data: bytes) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@contextlib.contextmanager
def _batch_rng(seed: int, keys: list[tuple[int, int]]):
    """Seed torch's CPU generator, ``random`` and numpy from (seed, keys) for one block; restore them after."""
    import random

    batch_seed = _hash64(f"{seed}:{keys}".encode())
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(batch_seed)  # not torch.manual_seed: GPU streams stay as they are
        random.seed(batch_seed)
        np.random.seed(batch_seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@dataclass
class LoopSettings:
    num_train_epochs: int
    max_steps: int = -1
    learning_rate: float = 1e-3
    head_learning_rate: float | None = None
    head_names: list[str] = field(default_factory=list)
    weight_decay: float = 0.01
    lr_scheduler_type: str = "linear"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    metric_for_best_model: str = "auroc"
    early_stopping_patience: int | None = None
    logging_steps: int = 10
    layer_lr_decay: float | None = None  # lr of layer d = lr * decay ** (top - d); None: one rate for all
    restore_best: bool = True  # False: keep the last epoch's weights (epochs are still evaluated and logged)
    eval_steps: int | None = None  # a stream's epoch: evaluate every this many optimiser steps (None: at max_steps)

    @classmethod
    def from_config(cls, cfg: Any, backbone: Any, **overrides: Any) -> LoopSettings:
        """The settings of a classification config's optimisation fields (finetune's, continual's), the new head
        being ``backbone.head_names``; ``overrides`` for what a recipe sets itself (e.g. ``restore_best``)."""
        settings = dict(
            num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
            head_learning_rate=cfg.head_learning_rate, head_names=backbone.head_names,
            weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.lr_scheduler_type, warmup_ratio=cfg.warmup_ratio,
            max_grad_norm=cfg.max_grad_norm, metric_for_best_model=cfg.metric_for_best_model,
            early_stopping_patience=cfg.early_stopping_patience, logging_steps=cfg.logging_steps,
            layer_lr_decay=cfg.layer_lr_decay, eval_steps=getattr(cfg, "eval_steps", None),
        )
        return cls(**{**settings, **overrides})


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    steps: int = 0
    train_seconds: float = 0.0


@torch.no_grad()
def predict(accelerator, model: nn.Module, task: Task, loader: DataLoader) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels over a prepared loader, gathered from all processes (no duplicates)."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in loader:
        logits = task(model, batch)["logits"]
        logits, labels = accelerator.gather_for_metrics((logits.float(), batch["labels"]))
        all_logits.append(logits.cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()


def evaluate(accelerator, model: nn.Module, task: Task, loader: DataLoader) -> dict[str, float]:
    logits, labels = predict(accelerator, model, task, loader)
    return classification_metrics(logits, labels)


def trainable_keys(model: nn.Module) -> list[str]:
    """State-dict keys of what training changes: trainable parameters and all buffers."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return [k for k in model.state_dict() if k in trainable]


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """CPU copy of what training changes (:func:`trainable_keys`); an FSDP2 shard stays on its device, where its
    device mesh is (each process keeps its own shard: a checkpoint writes it through DCP)."""
    from torch.distributed.tensor import DTensor

    keys = set(trainable_keys(model))
    return {k: v.detach().clone() if isinstance(v, DTensor) else v.detach().cpu().clone()
            for k, v in model.state_dict().items() if k in keys}


def _is_head(name: str, head_names: list[str]) -> bool:
    dotted = f".{name}"
    return any(f".{head}." in dotted for head in head_names)


# "<...>.layer.3.<...>", "blocks.2.", "layers.11.", "h.5.", ResNet's "layer4.1.": the numbered stack of a net
_LAYER = re.compile(r"(?:^|\.)(?:(?:layer|layers|blocks|block|stages|stage)\.?|h\.)(\d+)\.")


def layer_depths(names: list[str], head_names: list[str]) -> tuple[dict[str, int], int]:
    """Depth of each parameter for layer-wise rates and gradual unfreezing, and the top depth.

    Embeddings and stems (before the first numbered block) are depth 0, block ``i`` is
    ``i + 1``, what follows the stack (final norms, timm's ``conv_head``) is one above the
    last block, and the head is the top. For timm nets with nested stages
    (``blocks.2.1``) the outer index counts.
    """
    depths: dict[str, int] = {}
    last_block, seen_block = 0, False
    for name in names:
        if _is_head(name, head_names):
            continue
        match = _LAYER.search(name)
        if match:
            depths[name] = int(match.group(1)) + 1
            last_block, seen_block = max(last_block, depths[name]), True
        else:
            depths[name] = -1 if seen_block else 0  # -1: after the stack, resolved below
    top = last_block + 2
    for name in names:
        if _is_head(name, head_names):
            depths[name] = top
        elif depths[name] == -1:
            depths[name] = last_block + 1
    return depths, top


class GradualUnfreeze(Callback):
    """ULMFiT-style gradual unfreezing: the head alone first, then one more layer group from the top
    every ``every_epochs`` epochs, down to the embeddings or stem.

    Every parameter stays ``requires_grad`` (DDP fixes its set of gradients when it wraps the
    model); the frozen groups' gradients are dropped before each step, so AdamW neither moves
    nor decays them, and their norm layers keep their running statistics.
    """

    def __init__(self, head_names: list[str], every_epochs: int = 1):
        self.head_names, self.every_epochs = head_names, every_epochs
        self.frozen: list[nn.Parameter] = []

    def on_train_start(self, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        named = list(accelerator.unwrap_model(model).named_parameters())
        depths, self.top = layer_depths([n for n, _ in named], self.head_names)
        self.params = [(depths[n], p) for n, p in named]
        self.model = accelerator.unwrap_model(model)

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        lowest = self.top - (epoch - 1) // self.every_epochs  # depth of the lowest trainable group
        frozen_ids = {id(p) for d, p in self.params if d < lowest}
        self.frozen = [p for d, p in self.params if d < lowest]
        for module in self.model.modules():
            own = list(module.parameters(recurse=False))
            if isinstance(module, nn.modules.batchnorm._NormBase) and own and all(id(p) in frozen_ids for p in own):
                module.eval()
        trainable = sum(p.numel() for d, p in self.params if d >= lowest)
        logger.info("epoch %d: training layer groups %d-%d of 0-%d (%s parameters)", epoch, max(lowest, 0), self.top,
                    self.top, f"{trainable:,}")

    def before_optimizer_step(self, model: nn.Module) -> None:
        for param in self.frozen:
            param.grad = None


def make_optimizer(model: nn.Module, settings: LoopSettings) -> torch.optim.Optimizer:
    """AdamW; no decay on biases and norms; the new head at ``head_learning_rate`` if set;
    with ``layer_lr_decay``, each layer's rate shrinks geometrically with its distance from the top.

    A freshly initialised head on a frozen (or LoRA-adapted) backbone learns far slower
    than the adapter at the same rate, so it gets its own rate.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    depths, top = layer_depths([n for n, _ in named], settings.head_names)
    groups: dict[tuple[bool, bool, int], list[nn.Parameter]] = {}
    for name, param in named:
        head = settings.head_learning_rate is not None and _is_head(name, settings.head_names)
        depth = depths[name] if settings.layer_lr_decay is not None else top
        groups.setdefault((head, param.ndim < 2, depth), []).append(param)
    param_groups = []
    for (head, no_decay, depth), params in sorted(groups.items()):
        lr = settings.head_learning_rate if head else settings.learning_rate
        if settings.layer_lr_decay is not None and not head:
            lr *= settings.layer_lr_decay ** max(top - 1 - depth, 0)  # the top layer below the head keeps lr
        param_groups.append({"params": params, "weight_decay": 0.0 if no_decay else settings.weight_decay, "lr": lr})
    return torch.optim.AdamW(param_groups, lr=settings.learning_rate)


@preemption.stoppable
def fit(accelerator, model: nn.Module, task: Task, train_loader: DataLoader, eval_loader: DataLoader | None,
        settings: LoopSettings, evaluate_fn: Callable[..., dict[str, float]] | None = None,
        callbacks: list[Callback] | tuple[Callback, ...] = (), checkpoints: CheckpointPhase | None = None,
        ) -> tuple[nn.Module, FitResult]:
    """Train with per-epoch evaluation, keep the best epoch's weights, stop early if asked.

    ``model`` and the loaders must not be prepared yet. ``evaluate_fn(accelerator, model, task,
    loader)`` scores an epoch (default: classification metrics); its dict must hold
    ``settings.metric_for_best_model``. Returns the prepared model with the best weights
    restored, and the history. With no ``eval_loader`` (a refit on all the data) every epoch
    runs and the last one is kept.

    ``checkpoints``: save the training state every ``checkpoints.every_steps`` optimiser steps
    and when training ends, and first resume from ``checkpoints.resume_from`` if set. A resumed
    run continues bitwise where the saved one was: the same batches in the same order, the same
    dropout draws, and (with loaders from :func:`training_loader`) the same augmentation.
    A stream (:mod:`hf_adapt.data.stream`) has no end: ``max_steps`` steps, each epoch ``eval_steps`` of them.

    SIGTERM (see :mod:`hf_adapt.preemption`) stops every process at the same optimiser step, with a
    checkpoint there when ``checkpoints`` is given, and raises :class:`~hf_adapt.preemption.Preempted`.
    """
    evaluate_fn = evaluate_fn or evaluate
    # the generator that shuffles the training data: its state at an epoch's start fixes the epoch's order
    generator = getattr(train_loader.sampler, "generator", None)
    optimizer = make_optimizer(model, settings)
    model, optimizer, train_loader, eval_loader, steps_per_epoch, stream = _prepare(
        accelerator, model, optimizer, train_loader, eval_loader, settings)
    total_steps = settings.max_steps if settings.max_steps > 0 else steps_per_epoch * settings.num_train_epochs
    epochs = math.ceil(total_steps / steps_per_epoch)
    scheduler = _make_scheduler(accelerator, optimizer, settings, total_steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    for callback in callbacks:
        callback.on_train_start(accelerator, model, optimizer)
    run = _Run(accelerator, model, optimizer, settings, checkpoints, generator)
    result = run.result
    progress = _progress(total_steps, accelerator.is_local_main_process, initial=run.step)
    start = time.perf_counter()
    for epoch in range(run.epoch, epochs + 1):
        if run.finished:
            break
        model.train()
        freeze_frozen_norm_statistics(model)
        for callback in callbacks:
            callback.on_epoch_start(epoch, model)
        epoch_end = min(total_steps, epoch * steps_per_epoch) if stream else total_steps  # a stream never ends
        for batch in run.epoch_batches(epoch, train_loader):
            if run.step >= epoch_end:  # resumed from a checkpoint taken at max_steps, mid-epoch
                break
            with accelerator.accumulate(model):
                loss = task(model, batch)["loss"]
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    for callback in callbacks:
                        callback.before_optimizer_step(model)
                    if settings.max_grad_norm:
                        accelerator.clip_grad_norm_(trainable, settings.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            run.count(loss)
            if accelerator.sync_gradients:
                run.optimizer_stepped(progress, scheduler)
            if run.step >= epoch_end:
                break
        run.check_divergence()
        metrics = evaluate_fn(accelerator, model, task, eval_loader) if eval_loader is not None else {}
        if run.end_epoch(epoch, metrics, eval_loader is not None, callbacks):
            break
        if run.step >= total_steps:
            break
    progress.close()
    if checkpoints is not None and not run.finished:
        run.finished = True
        run.save()  # the phase's final state: a resumed run replays a finished phase from it
    result.steps, result.train_seconds = run.step, time.perf_counter() - start
    if run.best_state is not None and settings.restore_best:
        _unwrapped(accelerator, model).load_state_dict(run.best_state, strict=False)
        metric = settings.metric_for_best_model
        logger.info("restored best epoch %s (%s=%.4f)", result.best_epoch, metric, result.best_metrics[metric])
    return model, result


def _prepare(accelerator, model, optimizer, train_loader: DataLoader, eval_loader: DataLoader | None,
             settings: LoopSettings):
    """Everything through ``accelerator.prepare``, the optimiser steps of an epoch (a stream's: ``eval_steps``),
    and whether the training data is a stream (a torch ``IterableDataset`` with ``seek``, each process's share).

    A stream's loader only has its batches placed on the device: each process reads its own share already, so it
    is neither sharded again nor read by one process and dispatched (Accelerate's ways with an iterable).
    """
    if not isinstance(train_loader.dataset, IterableDataset):
        model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
        _check_best_epoch(accelerator, model, settings, eval_loader)
        return model, optimizer, train_loader, eval_loader, math.ceil(
            len(train_loader) / accelerator.gradient_accumulation_steps), False
    from accelerate.data_loader import prepare_data_loader

    if settings.max_steps <= 0:
        raise ValueError("a stream has no end: set max_steps")
    model, optimizer, eval_loader = accelerator.prepare(model, optimizer, eval_loader)
    _check_best_epoch(accelerator, model, settings, eval_loader)
    train_loader = prepare_data_loader(train_loader, accelerator.device, num_processes=1, process_index=0,
                                       put_on_device=True, dispatch_batches=False)
    return model, optimizer, train_loader, eval_loader, settings.eval_steps or settings.max_steps, True


def _check_best_epoch(accelerator, model: nn.Module, settings: LoopSettings, eval_loader) -> None:
    """Refuse keeping the best epoch's weights where they cannot be copied: under ZeRO-3 each process holds a
    partition of every parameter, and ``state_dict`` gives empty placeholders, so the run would silently keep
    the last epoch (gathering them needs ``deepspeed.zero.GatheredParameters``, which has never run here)."""
    from hf_adapt.sharding import zero3_engine

    if settings.restore_best and eval_loader is not None and zero3_engine(accelerator, model) is not None:
        from hf_adapt.errors import ConfigError

        raise ConfigError("keeping the best epoch's weights is not implemented under DeepSpeed ZeRO-3 (its parameters "
                          "are partitioned): launch with FSDP2 (recipes/accelerate/fsdp.yaml) or ZeRO-2, or train "
                          "without held-out rows to select an epoch on")


def _unwrapped(accelerator, model: nn.Module) -> nn.Module:
    """The module training changes, out of DDP and torch.compile's wrappers: its state-dict keys are those of an
    uncompiled run (no ``_orig_mod.``), so best weights and checkpoints load either way."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def _make_scheduler(accelerator, optimizer, settings: LoopSettings, total_steps: int):
    from transformers import get_scheduler

    scheduler = get_scheduler(
        settings.lr_scheduler_type,
        optimizer,
        # AcceleratedScheduler steps once per process per optimizer step
        num_warmup_steps=int(settings.warmup_ratio * total_steps) * accelerator.num_processes,
        num_training_steps=total_steps * accelerator.num_processes,
    )
    return accelerator.prepare(scheduler)


class _Run:
    """Where :func:`fit` is (step, epoch, position in the epoch, best weights, running loss), and its
    checkpoints: everything a resumed run needs beyond what ``accelerator.save_state`` keeps."""

    def __init__(self, accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, settings: LoopSettings,
                 checkpoints: CheckpointPhase | None, generator: torch.Generator | None):
        self.accelerator, self.model, self.optimizer, self.settings = accelerator, model, optimizer, settings
        self.checkpoints, self.generator = checkpoints, generator
        self.result = FitResult()
        self.step, self.epoch, self.batches, self.stale = 0, 1, 0, 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.finished = False
        self.last_checkpoint: str | None = None
        self.saved_step: int | None = None
        self.epoch_generator = None  # the shuffling generator's state when the current epoch began
        # the first optimiser step whose loss was NaN or inf (-1: none); a tensor, so no device sync per step
        self.diverged_at = torch.full((), -1, dtype=torch.long, device=accelerator.device)
        self.running = torch.zeros((), device=accelerator.device)  # a tensor: no GPU sync per step
        self.seen = 0
        self.consumed = 0  # batches trained on, all epochs: where a stream is
        self.stream_batches = None  # a stream's one iterator, kept across epochs (re-opening it re-reads the rows)
        self.resumed_epoch: int | None = None
        if checkpoints is not None and checkpoints.resume_from is not None:
            self._resume()

    def epoch_batches(self, epoch: int, loader: DataLoader):
        """The epoch's batches; a resumed epoch restarts its shuffle and skips what was already trained on. A
        stream goes on from the batches trained on so far, in any epoch."""
        resumed = epoch == self.resumed_epoch
        self.resumed_epoch = None
        if not resumed:
            self.running, self.seen, self.batches = torch.zeros((), device=self.accelerator.device), 0, 0
        seek = getattr(loader.dataset, "seek", None)
        if seek is not None:  # one pass over an endless stream, each epoch going on where the last stopped
            if self.stream_batches is None:
                seek(self.consumed * loader.batch_size)  # every batch of a stream is full; 0 unless resumed
                self.stream_batches = iter(loader)
            return self.stream_batches
        if resumed:
            if self.generator is not None and self.epoch_generator is not None:
                self.generator.set_state(self.epoch_generator)
            return self.accelerator.skip_first_batches(loader, self.batches)
        self.epoch_generator = self.generator.get_state() if self.generator is not None else None
        return loader

    def count(self, loss: torch.Tensor) -> None:
        loss = loss.detach()
        self.running, self.seen, self.batches = self.running + loss.float(), self.seen + 1, self.batches + 1
        self.consumed += 1
        self.diverged_at = torch.where((self.diverged_at < 0) & ~torch.isfinite(loss), self.step + 1, self.diverged_at)

    def optimizer_stepped(self, progress, scheduler) -> None:
        """Count an optimiser step; log, checkpoint and answer SIGTERM on the steps where they fall due."""
        self.step += 1
        progress.update(1)
        if self.step % self.settings.logging_steps == 0:
            self.check_divergence()
            mean_loss = self.mean_loss()
            self.accelerator.log({"train/loss": mean_loss, "train/lr": scheduler.get_last_lr()[0]}, step=self.step)
            progress.set_postfix(loss=f"{mean_loss:.4f}")
        every = self.checkpoints.every_steps if self.checkpoints is not None else 0
        if every and self.step % every == 0:
            self.save()
        if self.should_stop():
            self.stop()

    def end_epoch(self, epoch: int, metrics: dict[str, float], judged: bool, callbacks=()) -> bool:
        """Record the epoch's metrics and keep the best epoch (the last one when nothing is ``judged``, i.e. no
        validation), then tell the ``callbacks``; True when early stopping says training is over."""
        stop = self._judge(epoch, metrics, judged)
        for callback in callbacks:
            callback.on_epoch_end(epoch, metrics)
        return stop

    def _judge(self, epoch: int, metrics: dict[str, float], judged: bool) -> bool:
        metric, result = self.settings.metric_for_best_model, self.result
        metrics["train_loss"] = self.mean_loss()
        result.history.append({"epoch": epoch, "step": self.step, **metrics})
        self.accelerator.log({f"eval/{k}": v for k, v in metrics.items()}, step=self.step)
        logger.info("epoch %d: %s", epoch, _fmt(metrics))
        self.epoch, self.batches = epoch + 1, 0
        if not judged:
            result.best_epoch, result.best_metrics = epoch, metrics
        elif is_better(metric, metrics[metric], result.best_metrics.get(metric)):
            result.best_epoch, result.best_metrics = epoch, metrics
            restore = self.settings.restore_best
            self.best_state = _trainable_state(_unwrapped(self.accelerator, self.model)) if restore else None
            self.stale = 0
        else:
            self.stale += 1
            patience = self.settings.early_stopping_patience
            if patience is not None and self.stale >= patience:
                logger.info("early stopping: %s did not improve for %d epochs", metric, self.stale)
                return True
        return False

    def mean_loss(self) -> float:
        return self.running.item() / max(self.seen, 1)

    def check_divergence(self) -> None:
        """Stop on a NaN or infinite loss (on any process) before it reaches a saved model or checkpoint.

        Only the loss is watched: under fp16, Accelerate's gradient scaler skips the steps whose
        gradients overflow and lowers its scale, which is its job and not a divergence.
        """
        first = int(self.accelerator.gather(self.diverged_at[None]).max().item())  # every process stops together
        if first >= 0:
            from hf_adapt.errors import TrainingDivergedError

            kept = (f"the last good checkpoint is {self.last_checkpoint}" if self.last_checkpoint else
                    "no checkpoint was kept before it")
            raise TrainingDivergedError(
                f"training diverged: the loss was NaN or infinite at optimiser step {first} (epoch {self.epoch}); "
                f"the run is stopped and its outputs are not written ({kept}). Lower learning_rate (now "
                f"{self.settings.learning_rate}), keep max_grad_norm on (now {self.settings.max_grad_norm}), or "
                "look for extreme values in the inputs")

    def save(self) -> None:
        self.check_divergence()  # a checkpoint is always one to go back to
        state = {"phase": self.checkpoints.name, "step": self.step, "epoch": self.epoch, "batches": self.batches,
                 "consumed": self.consumed,
                 "seen": self.seen, "stale": self.stale, "finished": self.finished,
                 "num_processes": self.accelerator.num_processes, "best_epoch": self.result.best_epoch,
                 "best_metrics": self.result.best_metrics, "history": self.result.history}
        tensors = {"running": self.running.detach().cpu().reshape(1)}
        if self.epoch_generator is not None:
            tensors["epoch_generator"] = self.epoch_generator
        if self.best_state is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_state.items()})
        self.last_checkpoint = str(self.checkpoints.save(self.accelerator, self.step, state, tensors, self.model,
                                                           self.optimizer))
        self.saved_step = self.step

    def should_stop(self) -> bool:
        """Whether SIGTERM reached any process, decided by all at the same step: every step on one process,
        every ``logging_steps`` on several (a small collective, like the divergence check's)."""
        if self.accelerator.num_processes == 1:
            return preemption.requested()
        if self.step % self.settings.logging_steps:
            return False
        flag = torch.tensor([int(preemption.requested())], device=self.accelerator.device)
        return bool(self.accelerator.gather(flag).max().item())

    def stop(self) -> None:
        """Save where training stands (when checkpointing) and raise :class:`~hf_adapt.preemption.Preempted`."""
        if self.checkpoints is None:
            kept = ("checkpointing is off, so the training done so far is lost (set --checkpointing_steps N to "
                    "make a stop resumable)")
        else:
            if self.saved_step != self.step:
                self.save()
            kept = f"saved checkpoint {self.last_checkpoint}; continue with --resume_from_checkpoint latest"
        raise preemption.Preempted(f"stopped by SIGTERM at optimiser step {self.step} (epoch {self.epoch}): {kept}; "
                                   "the output directory was not written")

    def _resume(self) -> None:
        state, tensors = self.checkpoints.load(self.accelerator, self.model, self.optimizer)
        self.step, self.epoch, self.batches = state["step"], state["epoch"], state["batches"]
        self.consumed = state.get("consumed", 0)  # checkpoints from before streaming lack it
        self.seen, self.stale, self.finished = state["seen"], state["stale"], state["finished"]
        self.result.best_epoch, self.result.best_metrics = state["best_epoch"], state["best_metrics"]
        self.result.history = state["history"]
        self.running = tensors["running"].reshape(()).to(self.accelerator.device)
        self.epoch_generator = tensors.get("epoch_generator")
        best = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
        self.best_state = best or None
        self.resumed_epoch = self.epoch
        self.last_checkpoint = str(self.checkpoints.resume_from)


def _progress(total: int, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", dynamic_ncols=True)


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
