"""What a classifier's output directory shows about its test split: figures, examples, subgroups.

Each function writes into an output directory (paths returned relative to it, as the card
links them) or returns JSON-ready facts for the card. Recipes call them after testing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hf_adapt.errors import ConfigError

logger = logging.getLogger("hf_adapt.report")

FIGURES = "figures"
EXAMPLES = "examples"


def write_figures(directory: Path, history: list[dict[str, Any]], metric: str, probs: np.ndarray,
                  y_true: np.ndarray, labels: list[str], positive: int | None = None,
                  threshold: float | None = None, before: np.ndarray | None = None) -> dict[str, str]:
    """Training curves, test confusion matrix and reliability diagram as PNGs; for binary tasks
    (``positive`` set) the score distribution by class and the ROC and precision-recall curves, with the decision
    threshold marked if one was chosen.

    With a ``threshold`` the confusion matrix shows the thresholded decisions, as the model serves them.
    A refit has no validation metric per epoch, so no training curves.
    """
    from hf_adapt import figures

    (directory / FIGURES).mkdir(exist_ok=True)
    from hf_adapt.operating_point import decide

    predicted = decide(probs, positive, threshold)
    paths = {
        "confusion_matrix": figures.confusion_matrix(y_true, predicted, labels,
                                                     directory / FIGURES / "confusion_matrix.png"),
        "reliability": figures.reliability_diagram(probs, y_true, directory / FIGURES / "reliability.png",
                                                   before=before),
    }
    if all(metric in row for row in history):
        paths["training_curves"] = figures.training_curves(history, metric, directory / FIGURES / "training_curves.png")
    if positive is not None:
        paths["score_distribution"] = figures.score_distribution(
            probs[:, positive], y_true, labels, positive, threshold, directory / FIGURES / "score_distribution.png")
        if len(np.unique(y_true == positive)) == 2:  # both classes on test: the curves are defined
            paths["roc_pr"] = figures.roc_and_pr_curves(probs[:, positive], y_true == positive, labels[positive],
                                                        threshold, directory / FIGURES / "roc_pr.png")
    return {name: Path(path).relative_to(directory).as_posix() for name, path in paths.items()}


def write_regression_figures(directory: Path, history: list[dict[str, Any]], metric: str, predicted: np.ndarray,
                             actual: np.ndarray, target: str) -> dict[str, str]:
    """A regression model's training curves, predicted-vs-actual and residual plots of the test split (numbers
    in the target's unit), as PNGs; paths relative to ``directory``."""
    from hf_adapt import figures

    (directory / FIGURES).mkdir(exist_ok=True)
    paths = {
        "predicted_vs_actual": figures.predicted_vs_actual(predicted, actual, target,
                                                           directory / FIGURES / "predicted_vs_actual.png"),
        "residuals": figures.residual_plot(predicted, actual, target, directory / FIGURES / "residuals.png"),
    }
    if history and all(metric in row for row in history):
        paths["training_curves"] = figures.training_curves(history, metric, directory / FIGURES / "training_curves.png")
    return {name: Path(path).relative_to(directory).as_posix() for name, path in paths.items()}


def write_multilabel_figures(directory: Path, history: list[dict[str, Any]], metric: str, probs: np.ndarray,
                             targets: np.ndarray, names: list[str], thresholds: np.ndarray) -> dict[str, str]:
    """A multi-label model's training curves and per-label precision-recall curves of the test split, as PNGs;
    paths relative to ``directory``."""
    from hf_adapt import figures

    (directory / FIGURES).mkdir(exist_ok=True)
    paths = {"precision_recall": figures.precision_recall_per_label(
        probs, targets, names, thresholds, directory / FIGURES / "precision_recall.png")}
    if history and all(metric in row for row in history):
        paths["training_curves"] = figures.training_curves(history, metric, directory / FIGURES / "training_curves.png")
    return {name: Path(path).relative_to(directory).as_posix() for name, path in paths.items()}


def example_indices(y_true: np.ndarray, count: int) -> list[int]:
    """Up to ``count`` test rows, one class after another, so every class shows up if it can."""
    by_class = [list(np.flatnonzero(y_true == c)) for c in np.unique(y_true)]
    picked: list[int] = []
    while len(picked) < count and any(by_class):
        for rows in by_class:
            if rows and len(picked) < count:
                picked.append(int(rows.pop(0)))
    return picked


def write_examples(directory: Path, images: list[Any]) -> list[str]:
    """Save test images as PNGs (``examples/0.png`` ...) so the card's snippet has a real input."""
    (directory / EXAMPLES).mkdir(exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = directory / EXAMPLES / f"{i}.png"
        image.save(path)
        paths.append(path.relative_to(directory).as_posix())
    return paths


def write_gradcam(directory: Path, model, backbone, images: list[Any], probs: np.ndarray, y_true: np.ndarray,
                  labels: list[str]) -> list[dict[str, str]]:
    """Grad-CAM overlays for the predicted class of each image; empty for models without a conv feature map."""
    predicted = [int(p.argmax()) for p in probs]
    titles = [f"true {labels[t]}, predicted {labels[p]} ({probs[i, p]:.2f})"
              for i, (t, p) in enumerate(zip(y_true, predicted))]
    return gradcam_figures(directory, model, backbone, images, predicted, titles)


def gradcam_figures(directory: Path, model, backbone, images: list[Any], outputs: list[int],
                    titles: list[str]) -> list[dict[str, str]]:
    """Grad-CAM overlays of output ``outputs[i]`` for image ``i`` (a class, or a regression model's one output),
    titled; empty for models without a conv feature map."""
    import torch

    from hf_adapt import figures

    if not images:
        return []
    device = next(model.parameters()).device
    batch = backbone.preprocessor.collate(images, train=False)["pixel_values"].to(device)
    layer = figures.gradcam_target_layer(model, example=batch)
    if layer is None:
        logger.info("no Grad-CAM maps: the backbone has no convolutional feature map to attribute")
        return []

    def forward(pixels: torch.Tensor) -> torch.Tensor:
        return backbone.logits(model, {"pixel_values": pixels})

    (directory / FIGURES).mkdir(exist_ok=True)
    shown = figures.as_seen(batch, backbone.preprocessor.data_config)  # the model's view: resized, cropped
    paths = figures.gradcam_overlays(forward, layer, shown, batch, outputs, titles, directory / FIGURES)
    return [{"path": Path(p).relative_to(directory).as_posix(), "title": t} for p, t in zip(paths, titles)]


def write_row_explanations(directory: Path, model, backbone, data_info: dict[str, Any], labels: list[str],
                           rows: list[dict[str, Any]], predicted: list[str], task=None) -> list[dict[str, Any]]:
    """Integrated-gradients attributions per column for a few test rows (``figures/explain_<i>.png``
    and ``.json``), and the card's summary of each: prediction and the three strongest columns. ``task``: the
    model's :class:`hf_adapt.tasks.Task` (default classification; a regression model's prediction is its own)."""
    from hf_adapt.explain import TEMPLATE_BUCKET, explain_row, write_explanation

    shown = []
    for i, (row, label) in enumerate(zip(rows, predicted)):
        result = explain_row(model, backbone, backbone.preprocessor, data_info, labels, row,
                             predicted=label if task is None or task.name == "classification" else None, task=task)
        png, _ = write_explanation(result, directory / FIGURES, stem=f"explain_{i}")
        top = [c for c in result["columns"] if c["column"] != TEMPLATE_BUCKET][:3]
        shown.append({"path": png.relative_to(directory).as_posix(), "predicted": label,
                      "explained_output": result["explained_output"],
                      "top": [{"column": c["column"], "value": c["value"], "attribution": c["attribution"]}
                              for c in top]})
    return shown


# ---------------------------------------------------------------- subgroups


def check_subgroups(splits: dict[str, Any], labels: list[str], columns: list[str] | None,
                    bins: dict[str, list[float]] | None, positive_label: str | None) -> None:
    """Fail before training on sensitive columns that are missing or cannot be grouped."""
    from hf_adapt.subgroups import group_values

    bins = bins or {}
    for name in bins:
        if name not in (columns or []):
            raise ConfigError(f"sensitive_bins names {name!r}, which is not in sensitive_columns {columns}")
    if positive_label is not None and positive_label not in labels:
        raise ConfigError(f"positive_label {positive_label!r} is not one of the labels {labels}")
    if positive_label is not None and len(labels) != 2:
        raise ConfigError(f"positive_label applies to binary tasks; this one has {len(labels)} labels")
    for name in columns or []:
        test = splits["test"]
        if name not in test.column_names:
            raise ConfigError(f"sensitive column {name!r} is not in the test split; columns: {test.column_names}")
        group_values(list(test[name]), bins.get(name), name)


def subgroup_facts(test_split, probs: np.ndarray, y_true: np.ndarray, labels: list[str], columns: list[str],
                   bins: dict[str, list[float]] | None, positive_label: str | None,
                   threshold: float | None = None, n_boot: int = 0, seed: int = 0) -> tuple[dict | None, list[str]]:
    """Per-group test metrics (with bootstrap intervals when ``n_boot``) and gaps for the card, and limitation
    sentences drawn from them (decisions at ``threshold`` on the positive class's probability when an operating
    point was chosen)."""
    if not columns:
        return None, []
    from hf_adapt.subgroups import group_values, limitation_sentences, subgroup_report

    bins = bins or {}
    groups = {name: group_values(list(test_split[name]), bins.get(name), name) for name in columns}
    positive = positive_label or (labels[1] if len(labels) == 2 else None)
    score = probs[:, labels.index(positive)] if positive else probs
    from hf_adapt.operating_point import decide

    predicted = decide(probs, labels.index(positive) if positive else None, threshold)
    report = subgroup_report(y_true, predicted, score, groups, labels, positive, bins=bins, n_boot=n_boot, seed=seed)
    report["resamples"] = n_boot
    return report, limitation_sentences(report)
