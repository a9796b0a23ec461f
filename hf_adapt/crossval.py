"""K-fold cross-validation for the classification recipe.

Train and validation rows are pooled and split into K stratified folds (grouped, so that no
patient is in two folds, when the data has a group column); the test split stays held out.
Each fold trains a fresh model on K-1 folds for the configured epochs and is scored on the
held-out fold; nothing is selected on it (no best epoch, no early stopping), so the fold
scores estimate what the same training does on unseen rows, and the scikit-learn baselines
(table data), fitted and scored on the very same folds, are a fair paired comparison.
Afterwards the recipe keeps either a refit on all pooled rows with the same settings, or the
best fold's model (whose own fold score is then the best of K, hence optimistic).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger("hf_adapt.crossval")


class FoldTrainer(Protocol):
    """What :func:`cross_validate` needs of a recipe: a fresh model trained on given rows per call."""

    accelerator: Any  # freed of each fold's model before the next
    task: Any  # hf_adapt.tasks.Task bound to the data: each fold's metrics and its baselines

    def train(self, train_rows: tuple[list, list], held_rows: tuple[list, list] | None, select_epoch: bool = True,
              phase: str = "train") -> Any:
        """Train a fresh model on ``train_rows`` (inputs, labels) and score ``held_rows`` each epoch; with
        ``select_epoch`` false every epoch runs and the last is kept. The run, with ``history`` (a
        :class:`~hf_adapt.loop.FitResult`) and, given held rows, their ``held_logits`` and ``held_labels``.
        ``phase`` names its checkpoints."""


@dataclass
class CrossValidation:
    k: int
    keep: str  # "refit" or "best_fold"
    grouped_by: str | None
    folds: list[dict[str, Any]]  # per fold: rows, positives, best epoch, held-out metrics, baselines' metrics
    summary: dict[str, dict[str, dict[str, float]]]  # model/baseline -> metric -> {"mean", "std"}
    oof_logits: np.ndarray  # out-of-fold logits, in pooled-row order (train rows, then validation rows)
    oof_labels: np.ndarray
    kept: Any = None  # the recipe's Trained run that is saved
    chosen_fold: int | None = None  # best_fold: which fold (1-based)
    refit_epochs: int | None = None  # refit: epochs trained on all pooled rows (the folds' settings)
    fold_of_row: list[int] = field(default_factory=list)  # 1-based fold of each pooled row

    def facts(self) -> dict[str, Any]:
        """JSON-ready summary for ``cv_results.json`` and the card."""
        return {"k": self.k, "keep": self.keep, "grouped_by": self.grouped_by, "chosen_fold": self.chosen_fold,
                "refit_epochs": self.refit_epochs, "folds": self.folds, "summary": self.summary,
                "fold_of_row": self.fold_of_row}


def make_folds(data, k: int, seed: int, group_column: str | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, held-out rows) of each fold, as indices into train + validation pooled."""
    from hf_adapt.data import group_folds

    labels = np.asarray(list(data.splits["train"]["label"]) + list(data.splits["validation"]["label"]))
    groups = None
    if group_column:
        groups = np.asarray(list(data.splits["train"][group_column]) + list(data.splits["validation"][group_column]))
    return group_folds(labels, groups, k, seed)


def _held_facts(data, held_labels: np.ndarray) -> dict[str, Any]:
    """A held-out fold's labels: rows per class, or (regression, the labels standardised) the rows alone."""
    if data.task != "classification":
        return {}
    return {"held_label_counts": {data.labels[c]: int((held_labels == c).sum()) for c in range(data.num_labels)}}


def summarize(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean and sample standard deviation (ddof=1) of each metric across folds; NaN folds are left out."""
    summary = {}
    for name in rows[0]:
        values = np.array([row[name] for row in rows], dtype=np.float64)
        values = values[np.isfinite(values)]
        summary[name] = {"mean": float(values.mean()) if len(values) else float("nan"),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                         "folds": int(len(values))}
    return summary


def cross_validate(trainer: FoldTrainer, data, folds, inputs: dict[str, list], labels: dict[str, list],
                   cfg) -> CrossValidation:
    """Train one model per fold through ``trainer`` (the finetune recipe's), then keep or refit."""
    from hf_adapt.baselines import baseline_columns, baseline_outputs, baselines_for
    from hf_adapt.metrics import is_better

    pool_inputs = inputs["train"] + inputs["validation"]
    pool_labels = labels["train"] + labels["validation"]
    task = trainer.task
    frame, names = None, baselines_for(data.kind, task.name)
    if names:
        import pandas as pd

        frame = pd.concat([data.splits["train"].to_pandas(), data.splits["validation"].to_pandas()],
                          ignore_index=True)
    oof = np.zeros((len(pool_labels), data.num_labels))  # regression: one standardised output
    fold_of_row = np.zeros(len(pool_labels), dtype=int)
    rows, baseline_rows, metric = [], {name: [] for name in names}, cfg.metric_for_best_model
    best_value, kept, chosen, fold_facts = None, None, None, []
    for number, (train_rows, held_rows) in enumerate(folds, start=1):
        held_labels = np.asarray(pool_labels)[held_rows]
        logger.info("fold %d/%d: training on %d rows, validating on %d", number, len(folds), len(train_rows),
                    len(held_rows))
        trained = trainer.train(([pool_inputs[i] for i in train_rows], [pool_labels[i] for i in train_rows]),
                                ([pool_inputs[i] for i in held_rows], held_labels.tolist()), select_epoch=False,
                                phase=f"fold-{number}")
        oof[held_rows] = trained.held_logits
        fold_of_row[held_rows] = number
        metrics = task.metrics(trained.held_logits, trained.held_labels)
        rows.append(metrics)
        fold = {"fold": number, "train_rows": int(len(train_rows)), "held_rows": int(len(held_rows)),
                **_held_facts(data, held_labels),
                "epochs": len(trained.history.history), "metrics": metrics, "baselines": {}}
        if frame is not None:
            for name in names:
                outputs = baseline_outputs(name, frame.iloc[train_rows], frame.iloc[held_rows], baseline_columns(data),
                                           task, seed=cfg.seed)
                fold["baselines"][name] = task.metrics(outputs, held_labels)
                baseline_rows[name].append(fold["baselines"][name])
        logger.info("fold %d/%d: %s=%.4f", number, len(folds), metric, metrics[metric])
        if cfg.cv_keep == "best_fold" and is_better(metric, metrics[metric], best_value):
            best_value, kept, chosen = metrics[metric], trained, number
        fold_facts.append(fold)
        del trained
        trainer.accelerator.free_memory()  # drop the accelerator's references to this fold's model and optimizer
    summary = {"model": summarize(rows)}
    summary.update({name: summarize(values) for name, values in baseline_rows.items() if values})
    cv = CrossValidation(len(folds), cfg.cv_keep, cfg.group_column, fold_facts, summary, oof,
                         np.asarray(pool_labels), fold_of_row=fold_of_row.tolist())
    if cfg.cv_keep == "refit":
        logger.info("refit on all %d train + validation rows with the folds' settings", len(pool_labels))
        cv.kept = trainer.train((pool_inputs, pool_labels), None, phase="refit")
        cv.refit_epochs = len(cv.kept.history.history)
    else:
        cv.kept, cv.chosen_fold = kept, chosen
    return cv
