"""PNG figures for the model card: training curves, confusion matrix, reliability diagram, Grad-CAM.

Figures are built on ``matplotlib.figure.Figure`` objects, never through ``pyplot``: no
backend is switched, no global figure list grows, and nothing needs a display. PNGs are
small (a few inches at 100 dpi, tens of KB) and written atomically: to a hidden temporary file in
the same folder first, then renamed, so a crash never leaves a half-written figure where
the card links one. Each PNG carries its title in the PNG ``Title`` text field too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hf_adapt.errors import ConfigError
from hf_adapt.metrics import LOWER_IS_BETTER, expected_calibration_error, is_better

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure
    from PIL.Image import Image

logger = logging.getLogger("hf_adapt.figures")

DPI = 100


def new_figure(**kwargs: Any) -> Figure:
    """A figure at the cards' resolution, laid out to fit its contents; write it with :func:`save_figure`."""
    from matplotlib.figure import Figure

    return Figure(dpi=DPI, layout="constrained", **kwargs)


def save_figure(fig: Figure, path: str | os.PathLike, title: str) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically; the title also goes into the PNG metadata."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=DPI, metadata={"Title": title})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Eval mode inside; every submodule gets its own training flag back afterwards. Non-modules pass through."""
    import torch

    modules = list(model.modules()) if isinstance(model, torch.nn.Module) else []
    flags = [m.training for m in modules]
    if modules:
        model.eval()  # through eval(), so modules that override train() get their say
    try:
        yield
    finally:
        for m, flag in zip(modules, flags):
            m.training = flag


def training_curves(history: list[dict[str, Any]], metric: str, path: str | os.PathLike) -> Path:
    """Train loss and validation log loss (left), validation ``metric`` with its best epoch (right).

    Args:
        history: one row per epoch, as the loop logs it: ``epoch``, ``train_loss`` and the
            validation metrics (``log_loss``, ``accuracy``, ``auroc`` ...).
        metric: the validation metric that picked the best epoch; lower is better for
            ``hf_adapt.metrics.LOWER_IS_BETTER``, higher for the rest.
        path: where the PNG goes.
    """
    if not history:
        raise ValueError("training_curves needs at least one epoch of history")
    if any(metric not in row for row in history):
        raise ConfigError(f"metric {metric!r} is missing from the training history; rows hold {sorted(history[0])}")
    epochs = [row["epoch"] for row in history]

    def series(key: str) -> list[float]:
        return [float("nan") if row.get(key) is None else float(row[key]) for row in history]

    values = series(metric)
    best = None  # index of the best epoch; NaN (e.g. AUROC of a one-class split) never wins
    for i, value in enumerate(values):
        if is_better(metric, value, None if best is None else values[best]):
            best = i

    from matplotlib.ticker import MaxNLocator

    fig = new_figure(figsize=(8, 3.5))
    loss_ax, metric_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, series("train_loss"), "o-", label="train loss")
    if any("log_loss" in row for row in history):
        loss_ax.plot(epochs, series("log_loss"), "s-", label="validation log loss")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss_ax.legend(fontsize=8)
    metric_ax.plot(epochs, values, "o-", color="tab:green", label=f"validation {metric}")
    if best is not None:
        metric_ax.plot([epochs[best]], [values[best]], "*", color="tab:red", markersize=14,
                       label=f"best epoch {epochs[best]}")
    metric_ax.set(xlabel="epoch", ylabel=metric, title=f"Validation {metric}")
    metric_ax.legend(fontsize=8)
    for ax in (loss_ax, metric_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    best_text = f"best epoch {epochs[best]}" if best is not None else "no epoch with a defined value"
    return save_figure(fig, path, f"Training curves; validation {metric}, {best_text}")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str], path: str | os.PathLike) -> Path:
    """Confusion matrix of label indices on the test split, counts in the cells.

    Counts are written in the cells up to 20 classes; beyond that only the colours are.
    """
    from sklearn.metrics import ConfusionMatrixDisplay

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    k = len(labels)
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= k):  # sklearn would drop such rows silently
            raise ValueError(f"{name} holds label indices outside 0..{k - 1} for labels {list(labels)}")
    side = min(4.0 + 0.35 * max(k - 4, 0), 12.0)
    fig = new_figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    rotate = 45 if k > 3 and max(len(str(label)) for label in labels) > 6 else "horizontal"
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(k)), display_labels=list(labels), ax=ax, colorbar=True,
        include_values=k <= 20, values_format="d", xticks_rotation=rotate, cmap="Blues",
    )
    title = f"Confusion matrix, test split (n={len(y_true)})"
    ax.set_title(title)
    return save_figure(fig, path, title)


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Per-bin count, mean top-label confidence and accuracy, binned exactly like ``expected_calibration_error``.

    Bins are equal-width and right-closed (``(0.4, 0.467]``), the lowest one also holding 0.
    Empty bins have count 0 and NaN confidence and accuracy. The count-weighted mean of
    ``|accuracy - confidence|`` over the bins is the ECE.
    """
    probs, y_true = np.asarray(probs, dtype=np.float64), np.asarray(y_true)
    if probs.ndim != 2 or len(probs) != len(y_true):
        raise ValueError(f"probs must be (n, k) with n = len(y_true) = {len(y_true)}; got shape {probs.shape}")
    # the same three lines as hf_adapt.metrics.expected_calibration_error, so plot and number agree
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_confidence, "accuracy": accuracy}


def reliability_diagram(probs: np.ndarray, y_true: np.ndarray, path: str | os.PathLike, n_bins: int = 15,
                        before: np.ndarray | None = None) -> Path:
    """Accuracy against top-label confidence per bin, with the confidence histogram beneath; with ``before`` (the
    probabilities before calibration) their points and ECE too.

    The title's ECE is ``hf_adapt.metrics.expected_calibration_error`` with the same bins.
    """
    stats = reliability_bins(probs, y_true, n_bins)
    ece = expected_calibration_error(np.asarray(probs, dtype=np.float64), np.asarray(y_true), n_bins)
    edges, count = stats["edges"], stats["count"]
    width = 1.0 / n_bins
    full = count > 0

    fig = new_figure(figsize=(5, 5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.bar(edges[:-1][full], stats["accuracy"][full], width=width, align="edge", alpha=0.35,
            edgecolor="tab:blue", label="accuracy per bin")
    top.plot(stats["confidence"][full], stats["accuracy"][full], "o", color="tab:blue",
             label="(mean confidence, accuracy)")
    title = f"Reliability, test split: ECE = {ece:.4f} ({n_bins} bins)"
    if before is not None:
        old = reliability_bins(before, y_true, n_bins)
        old_ece = expected_calibration_error(np.asarray(before, dtype=np.float64), np.asarray(y_true), n_bins)
        seen = old["count"] > 0
        top.plot(old["confidence"][seen], old["accuracy"][seen], "x--", color="tab:orange", alpha=0.8,
                 label=f"before calibration (ECE {old_ece:.4f})")
        title = f"Reliability, test split: ECE {old_ece:.4f} before, {ece:.4f} after calibration"
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02))
    top.legend(fontsize=8, loc="upper left")
    bottom.bar(edges[:-1], count, width=width, align="edge", color="tab:grey", edgecolor="white")
    bottom.set(xlabel="top-label confidence", ylabel="count")
    top.set_title(title, fontsize=10)
    return save_figure(fig, path, title)


def gradcam_target_layer(model: torch.nn.Module, example: torch.Tensor | None = None) -> torch.nn.Module | None:
    """The last feature stage of a timm CNN, to attribute Grad-CAM to; None where Grad-CAM does not apply.

    Rule: unwrap peft (``get_base_model``), take ``feature_info[-1]["module"]`` and keep it
    only if one forward pass shows it returns an ``(N, C, H, W)`` map with ``C`` the
    stage's ``num_chs``. That returns None for models without timm ``feature_info``
    (transformers backbones), token-sequence models (ViT, DeiT, EfficientFormer's last
    stage) and channels-last stages (Swin, MambaOut), whose maps Grad-CAM would misread.
    The check runs on the first row of ``example`` (a preprocessed batch) or on zeros of
    the model's default input size, under ``no_grad`` in eval mode; modes are restored.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    info = getattr(base, "feature_info", None)
    if not info:
        return None
    try:
        last = info[-1]
        layer = base.get_submodule(last["module"])
    except (AttributeError, KeyError, TypeError, IndexError):
        return None
    if example is None:
        from timm.data import resolve_model_data_config

        example = torch.zeros(1, *resolve_model_data_config(base)["input_size"])
    seen: list[tuple[int, ...]] = []

    def record(module, inputs, output):
        seen.append(tuple(output.shape) if isinstance(output, torch.Tensor) else ())

    handle = layer.register_forward_hook(record)
    try:
        with eval_mode(base), torch.no_grad():
            base(example[:1])
    except Exception as err:  # a model that cannot run on this input gets no Grad-CAM, not a failed card
        logger.warning("Grad-CAM skipped: probing %s failed (%s: %s)", last["module"], type(err).__name__, err)
        return None
    finally:
        handle.remove()
    if not seen or len(seen[-1]) != 4 or seen[-1][1] != last.get("num_chs", seen[-1][1]):
        return None
    return layer


def gradcam_maps(model: Callable[[torch.Tensor], torch.Tensor], target_layer: torch.nn.Module, batch: torch.Tensor,
                 class_indices: Sequence[int]) -> np.ndarray:
    """Grad-CAM (captum ``LayerGradCam``) per row of ``batch``, upsampled to its size, ReLU'd, scaled to [0, 1].

    Args:
        model: returns logits ``(n, classes)`` for ``batch``; an ``nn.Module`` (a peft
            model included) or any callable. A module runs in eval mode and gets its
            training flags back, so BatchNorm statistics never move.
        target_layer: the module whose output is attributed (``gradcam_target_layer``).
        batch: ``(n, 3, H, W)``, preprocessed as for prediction.
        class_indices: the class to explain for each row (usually the predicted one).

    Returns:
        ``(n, H, W)`` float array; a row whose map is zero everywhere stays zero.

    Parameters, their ``requires_grad`` flags and ``.grad`` are left as they were: captum
    differentiates with respect to the layer's output only, which works with every
    parameter frozen, and gradients are switched on just for this call.
    """
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    if len(class_indices) != len(batch):
        raise ValueError(f"{len(class_indices)} class indices for a batch of {len(batch)}")
    with eval_mode(model), torch.enable_grad():
        attributions = LayerGradCam(model, target_layer).attribute(
            batch, target=[int(c) for c in class_indices], relu_attributions=True
        )
    maps = LayerAttribution.interpolate(attributions.detach(), tuple(batch.shape[-2:]), interpolate_mode="bilinear")
    maps = maps[:, 0].clamp_min(0).float().cpu().numpy()
    peak = maps.reshape(len(maps), -1).max(axis=1)
    return np.divide(maps, peak[:, None, None], out=np.zeros_like(maps), where=peak[:, None, None] > 0)


def as_seen(batch: torch.Tensor, data_config: dict[str, Any]) -> list[Image]:
    """The preprocessed batch back as PIL images (normalisation undone), aligned pixel for pixel with Grad-CAM."""
    import torch
    from PIL import Image

    mean = torch.tensor(data_config["mean"], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(data_config["std"], dtype=torch.float32).view(-1, 1, 1)
    pixels = (batch.detach().float().cpu() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).squeeze(-1).numpy()) for p in pixels]


def gradcam_overlays(model: Callable[[torch.Tensor], torch.Tensor], target_layer: torch.nn.Module,
                     images: Sequence[Image], batch: torch.Tensor, class_indices: Sequence[int],
                     titles: Sequence[str], directory: str | os.PathLike, prefix: str = "gradcam") -> list[Path]:
    """One PNG per image: the Grad-CAM map (jet, alpha 0.4) over the image resized to the batch's H x W.

    ``images[i]`` must be the picture ``batch[i]`` was made from. It is resized, not
    cropped, so with a centre-crop preprocessing pass the images as cropped for exact
    alignment. Files are ``{prefix}_{i}.png`` in ``directory``; see ``gradcam_maps`` for
    ``model``, ``target_layer`` and ``class_indices``.
    """
    if not len(images) == len(batch) == len(class_indices) == len(titles):
        raise ValueError(f"gradcam_overlays needs as many images ({len(images)}), batch rows ({len(batch)}), "
                         f"class indices ({len(class_indices)}) and titles ({len(titles)})")
    maps = gradcam_maps(model, target_layer, batch, class_indices)
    height, width = maps.shape[1:]
    paths = []
    for i, (image, heat, title) in enumerate(zip(images, maps, titles)):
        fig = new_figure(figsize=(3, 3.3))
        ax = fig.subplots()
        ax.imshow(np.asarray(image.convert("RGB").resize((width, height))))
        ax.imshow(heat, cmap="jet", alpha=0.4, vmin=0.0, vmax=1.0)
        ax.set_axis_off()
        ax.set_title(title, fontsize=9, wrap=True)
        paths.append(save_figure(fig, Path(directory) / f"{prefix}_{i}.png", title))
    return paths


def accuracy_matrix(matrix: Sequence[Sequence[float | None]], row_names: Sequence[str], column_names: Sequence[str],
                    metric: str, path: str | os.PathLike) -> Path:
    """Heat map of a continual run's matrix: rows are the model after each experience, columns the test sets.

    Undefined cells (classes the head did not know yet) are left blank; values are written in the cells.
    """
    values = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    if values.shape != (len(row_names), len(column_names)):
        raise ValueError(f"matrix of shape {values.shape} for {len(row_names)} rows and {len(column_names)} columns")
    lower = metric in LOWER_IS_BETTER
    fig = new_figure(figsize=(1.6 + 1.0 * len(column_names), 1.2 + 0.55 * len(row_names)))
    ax = fig.subplots()
    finite = values[np.isfinite(values)]
    bounds = (0.0, 1.0) if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1) else (finite.min(), finite.max())
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis_r" if lower else "viridis", vmin=bounds[0],
                      vmax=bounds[1], aspect="auto")
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            if np.isfinite(values[r, c]):
                dark = (values[r, c] - bounds[0]) / ((bounds[1] - bounds[0]) or 1) < 0.5
                ax.text(c, r, f"{values[r, c]:.2f}", ha="center", va="center", fontsize=8,
                        color=("white" if dark != lower else "black"))
    ax.set_xticks(range(len(column_names)), labels=list(column_names), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(row_names)), labels=list(row_names), fontsize=8)
    ax.set(xlabel="test set of experience", ylabel="model after")
    fig.colorbar(image, ax=ax, label=metric)
    title = f"Continual learning: test {metric} of each experience after each step"
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, title)


def attribution_bars(names: Sequence[str], values: Sequence[float], path: str | os.PathLike, title: str,
                     xlabel: str = "attribution", max_bars: int = 20) -> Path:
    """Horizontal bars of signed attributions, largest ``|value|`` on top; red pushes towards the explained
    output, blue away from it.

    Only the ``max_bars`` largest are drawn (the title's count says how many were left out); names longer
    than 40 characters are shortened. Used for per-column and per-token explanations (``hf_adapt.explain``).
    """
    if len(names) != len(values):
        raise ValueError(f"attribution_bars needs as many names ({len(names)}) as values ({len(values)})")
    order = sorted(range(len(values)), key=lambda i: -abs(float(values[i])))[:max_bars]
    shown = [float(values[i]) for i in order][::-1]  # barh draws bottom-up: largest last = on top
    labels = [str(names[i]) if len(str(names[i])) <= 40 else str(names[i])[:39] + "…" for i in order][::-1]
    fig = new_figure(figsize=(6.5, 1.2 + 0.28 * max(len(shown), 1)))
    ax = fig.subplots()
    ax.barh(range(len(shown)), shown, color=["tab:red" if v > 0 else "tab:blue" for v in shown])
    ax.set_yticks(range(len(shown)), labels=labels, fontsize=8)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    left_out = len(values) - len(order)
    full_title = title + (f" (top {len(order)} of {len(values)})" if left_out else "")
    ax.set_title(full_title, fontsize=9, wrap=True)
    return save_figure(fig, path, full_title)


def score_distribution(scores: np.ndarray, y_true: np.ndarray, class_names: Sequence[str], positive_index: int,
                       threshold: float | None, path: str | os.PathLike) -> Path:
    """Step densities of the positive-class score for each true class, with the decision threshold marked.

    Densities, not counts, so a rare class (5 % positives) is as visible as the common one;
    the legend gives each class's count. Classes with no test rows are left out.

    Args:
        scores: the predicted probability of class ``positive_index``, one per row.
        y_true: true label indices into ``class_names``.
        class_names: display names of the classes.
        positive_index: the class whose probability ``scores`` holds.
        threshold: the decision threshold (a vertical line), or None for none.
        path: where the PNG goes.
    """
    scores, y_true = np.asarray(scores, dtype=np.float64), np.asarray(y_true)
    k = len(class_names)
    if scores.shape != y_true.shape or scores.ndim != 1:
        raise ValueError(f"scores and y_true must be 1-D of one length; got shapes {scores.shape} and {y_true.shape}")
    if not 0 <= positive_index < k:
        raise ValueError(f"positive_index {positive_index} is outside 0..{k - 1} for classes {list(class_names)}")
    if y_true.size and (y_true.min() < 0 or y_true.max() >= k):
        raise ValueError(f"y_true holds label indices outside 0..{k - 1} for classes {list(class_names)}")
    finite = scores[np.isfinite(scores)]
    low, high = (0.0, 1.0) if finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1) else (finite.min(), finite.max())
    bins = np.linspace(low, high, 26)
    positive_name = class_names[positive_index]

    fig = new_figure(figsize=(6, 3.5))
    ax = fig.subplots()
    others = iter(np.resize(["tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink",
                             "tab:gray", "tab:olive", "tab:cyan"], k))  # red is the positive class's
    for c in range(k):
        rows = y_true == c
        color = "tab:red" if c == positive_index else str(next(others))
        if not rows.any():
            continue
        label = f"{class_names[c]} (n={int(rows.sum())})"
        ax.hist(scores[rows], bins=bins, density=True, histtype="stepfilled", alpha=0.15, color=color)
        ax.hist(scores[rows], bins=bins, density=True, histtype="step", linewidth=1.5, color=color, label=label)
    if threshold is not None:
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1.2, label=f"threshold {threshold:.3g}")
    ax.set(xlabel=f"predicted probability of {positive_name!r}", ylabel="density (per true class)", xlim=(low, high))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    title = f"Scores for {positive_name!r} by true class, test split (n={len(scores)})"
    if threshold is not None:
        title += f"; threshold {threshold:.3g}"
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path, title)


def threshold_rates(scores: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float, float]:
    """False positive rate, true positive rate (recall) and precision when ``scores >= threshold`` is called positive:
    the curves' coordinates of :func:`hf_adapt.operating_point.threshold_metrics`."""
    from hf_adapt.operating_point import threshold_metrics

    rates = threshold_metrics(scores, positive, threshold)
    return 1 - rates["specificity"], rates["sensitivity"], rates["ppv"]


def roc_and_pr_curves(scores: np.ndarray, positive: np.ndarray, positive_name: str, threshold: float | None,
                      path: str | os.PathLike) -> Path:
    """The ROC and precision-recall curves of the positive-class scores (scikit-learn's displays), side by side, with
    the decision threshold's point marked on both when one was chosen."""
    from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay

    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    fig = new_figure(figsize=(10, 4.5))
    roc, pr = fig.subplots(1, 2)
    RocCurveDisplay.from_predictions(positive, scores, ax=roc, name=f"positive: {positive_name}", plot_chance_level=True)
    PrecisionRecallDisplay.from_predictions(positive, scores, ax=pr, name=f"positive: {positive_name}",
                                            plot_chance_level=True)
    if threshold is not None:
        fpr, tpr, precision = threshold_rates(scores, positive, threshold)
        label = f"operating point (threshold {threshold:.4g})"
        roc.plot([fpr], [tpr], "o", color="tab:red", markersize=8, label=label)
        pr.plot([tpr], [precision], "o", color="tab:red", markersize=8, label=label)
    for ax in (roc, pr):
        ax.legend(fontsize=8, loc="lower right" if ax is roc else "lower left")
    title = "ROC and precision-recall curves, test split"
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, title)


def _regression_points(predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    predicted, actual = np.asarray(predicted, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if predicted.shape != actual.shape or predicted.ndim != 1 or not predicted.size:
        raise ValueError(f"predicted and actual must be 1-D of one length; got {predicted.shape} and {actual.shape}")
    return predicted, actual


def predicted_vs_actual(predicted: np.ndarray, actual: np.ndarray, target: str, path: str | os.PathLike) -> Path:
    """Each test row's prediction against its true value, with the identity line: a perfect model lies on it."""
    predicted, actual = _regression_points(predicted, actual)
    fig = new_figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.scatter(actual, predicted, s=10, alpha=0.5)
    low, high = min(actual.min(), predicted.min()), max(actual.max(), predicted.max())
    ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="predicted = actual")
    ax.set_xlabel(f"actual {target}")
    ax.set_ylabel(f"predicted {target}")
    ax.legend(loc="upper left")
    title = f"Predicted vs actual, test split (n={len(actual)})"
    ax.set_title(title)
    return save_figure(fig, path, title)


def residual_plot(predicted: np.ndarray, actual: np.ndarray, target: str, path: str | os.PathLike) -> Path:
    """Residuals (actual - predicted) against the prediction: a funnel or a curve shows what the model misses."""
    predicted, actual = _regression_points(predicted, actual)
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.scatter(predicted, actual - predicted, s=10, alpha=0.5)
    ax.axhline(0, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel(f"predicted {target}")
    ax.set_ylabel("residual (actual - predicted)")
    title = f"Residuals, test split (n={len(actual)})"
    ax.set_title(title)
    return save_figure(fig, path, title)


def precision_recall_per_label(probs: np.ndarray, targets: np.ndarray, names: list[str], thresholds: np.ndarray,
                               path: str | os.PathLike) -> Path:
    """One precision-recall curve per label (multi-label), each with its decision threshold marked."""
    from sklearn.metrics import precision_recall_curve

    fig = new_figure(figsize=(5.5, 4.5))
    ax = fig.subplots()
    for j, name in enumerate(names):
        truth = targets[:, j].astype(bool)
        if not truth.any():
            continue  # undefined without a positive row
        precision, recall, cuts = precision_recall_curve(truth, probs[:, j])
        line = ax.plot(recall, precision, label=name)[0]
        at = min(int(np.searchsorted(cuts, thresholds[j])), len(cuts) - 1)
        ax.plot(recall[at], precision[at], "o", color=line.get_color())
    title = "Test precision-recall per label (dot: its threshold)"
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.legend(fontsize="small", loc="lower left")
    return save_figure(fig, path, title)
