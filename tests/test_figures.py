"""Card figures: valid small PNGs, numbers that agree with hf_adapt.metrics, Grad-CAM that touches nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hf_adapt import figures
from hf_adapt.errors import ConfigError
from hf_adapt.metrics import expected_calibration_error

HISTORY = [
    {"epoch": 1, "step": 40, "train_loss": 0.69, "log_loss": 0.62, "accuracy": 0.66, "auroc": 0.71, "ece": 0.09},
    {"epoch": 2, "step": 80, "train_loss": 0.55, "log_loss": 0.57, "accuracy": 0.70, "auroc": 0.78, "ece": 0.06},
    {"epoch": 3, "step": 120, "train_loss": 0.41, "log_loss": 0.59, "accuracy": 0.71, "auroc": 0.76, "ece": 0.04},
]


def _png(path, size=None):
    assert path.is_file() and path.stat().st_size < 100_000
    image = Image.open(path)
    image.load()
    assert image.format == "PNG"
    if size is not None:
        assert image.size == size
    return image


def test_training_curves_mark_the_best_epoch_in_the_metric_direction(tmp_path):
    auroc = figures.training_curves(HISTORY, "auroc", tmp_path / "auroc.png")
    ece = figures.training_curves(HISTORY, "ece", tmp_path / "ece.png")  # lower is better
    assert "best epoch 2" in _png(auroc, (800, 350)).text["Title"]
    assert "best epoch 3" in _png(ece, (800, 350)).text["Title"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auroc.png", "ece.png"]  # no temp files left


def test_training_curves_single_epoch_and_unknown_metric(tmp_path):
    path = figures.training_curves(HISTORY[:1], "accuracy", tmp_path / "figures" / "curves.png")
    assert "best epoch 1" in _png(path).text["Title"]
    with pytest.raises(ConfigError, match="'macro_f1' is missing"):
        figures.training_curves(HISTORY, "macro_f1", tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()
    one_class_epoch = [{**HISTORY[0], "auroc": float("nan")}, *HISTORY[1:]]  # AUROC undefined: never the best
    path = figures.training_curves(one_class_epoch[:1] + one_class_epoch[2:], "auroc", tmp_path / "nan.png")
    assert "best epoch 3" in _png(path).text["Title"]


def test_confusion_matrix_png_without_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    y_true = np.array([0, 0, 1, 1, 2, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0, 2])
    path = figures.confusion_matrix(y_true, y_pred, ["setosa", "versicolor", "virginica"], tmp_path / "cm.png")
    assert _png(path, (500, 400)).text["Title"] == "Confusion matrix, test split (n=7)"
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="outside 0..2"):  # sklearn would silently drop the row
        figures.confusion_matrix(y_true, y_pred + 1, ["setosa", "versicolor", "virginica"], tmp_path / "bad.png")


def test_reliability_bins_and_title_match_metrics_ece(tmp_path):
    rng = np.random.default_rng(0)
    edges = np.linspace(0.0, 1.0, 16)
    # half the confidences sit exactly on bin edges, where right- vs left-closed bins differ
    confidence = np.concatenate([rng.choice(edges[8:], size=100), rng.uniform(0.5, 1.0, size=100)])
    probs = np.stack([confidence, 1 - confidence], axis=1)
    y_true = (rng.uniform(size=200) > confidence).astype(int)  # calibrated on average, not per bin
    y_true[:50] = 1 - y_true[:50]
    ece = expected_calibration_error(probs, y_true)

    stats = figures.reliability_bins(probs, y_true)
    full = stats["count"] > 0
    weighted_gap = np.sum(stats["count"][full] / 200 * np.abs(stats["accuracy"][full] - stats["confidence"][full]))
    assert stats["count"].sum() == 200 and weighted_gap == pytest.approx(ece, abs=1e-12)

    path = figures.reliability_diagram(probs, y_true, tmp_path / "reliability.png")
    assert f"ECE = {ece:.4f}" in _png(path, (500, 500)).text["Title"]


def _lora_resnet():
    import peft
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["layer4.0.conv1", "layer4.0.conv2"],
                             modules_to_save=["fc"], init_lora_weights=False)  # random B: LoRA changes the output
    return peft.get_peft_model(model, config)


def _digit_images(n=3, size=48):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).convert("RGB") for i in range(n)]
    batch = torch.stack([torch.from_numpy(np.asarray(im.resize((size, size)), dtype=np.float32) / 255).permute(2, 0, 1)
                         for im in images])
    return images, (batch - 0.5) / 0.25


def _reference_gradcam(model, layer, batch, targets):
    """Grad-CAM by hand: activations' gradient averaged over space weights the channels."""
    seen = {}
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.update(act=output))
    try:
        with torch.enable_grad():
            logits = model(batch.clone().requires_grad_(True))
            act = seen["act"]
            grads, = torch.autograd.grad(logits[torch.arange(len(batch)), targets].sum(), act)
    finally:
        handle.remove()
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=batch.shape[-2:], mode="bilinear")[:, 0].detach().numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)[:, None, None]
    return np.where(peak > 0, cam / np.where(peak > 0, peak, 1), 0)


def test_gradcam_on_frozen_lora_resnet_matches_hand_computation_and_changes_nothing(tmp_path):
    model = _lora_resnet()
    for name, param in model.named_parameters():
        param.requires_grad_("lora_A" in name)  # a mix: some trainable, most frozen
    model.train()  # left in train mode: Grad-CAM must still run in eval and not move BatchNorm statistics
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    images, batch = _digit_images()
    targets = [0, 2, 1]

    layer = figures.gradcam_target_layer(model, batch)
    assert layer is model.get_base_model().layer4
    maps = figures.gradcam_maps(model, layer, batch, targets)
    paths = figures.gradcam_overlays(model, layer, images, batch, targets, ["zero", "one", "two"], tmp_path / "cam")

    assert all(m.training for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())
    assert not batch.requires_grad

    model.eval()
    expected = _reference_gradcam(model, layer, batch, torch.tensor(targets))
    assert maps.shape == (3, 48, 48) and maps.min() >= 0 and maps.max() == 1.0
    np.testing.assert_allclose(maps, expected, atol=1e-5)

    assert [p.name for p in paths] == ["gradcam_0.png", "gradcam_1.png", "gradcam_2.png"]
    assert [_png(p, (300, 330)).text["Title"] for p in paths] == ["zero", "one", "two"]


def test_gradcam_target_layer_is_none_where_grad_cam_would_misread_the_maps(caplog):
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32, patch_size=8,
                            depth=2, embed_dim=48, num_heads=2)
    assert figures.gradcam_target_layer(vit, torch.zeros(1, 3, 32, 32)) is None  # (N, tokens, C) output
    assert figures.gradcam_target_layer(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))) is None  # no feature_info

    class Permute(torch.nn.Module):
        def forward(self, x):
            return x.permute(0, 2, 3, 1)

    class Stages(torch.nn.Module):
        def __init__(self, channels_last: bool):
            super().__init__()
            self.stage = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), *([Permute()] if channels_last else []))
            self.feature_info = [{"module": "stage", "num_chs": 8, "reduction": 2}]
            self.channels_last = channels_last

        def forward(self, x):
            return self.stage(x).mean(dim=(1, 2) if self.channels_last else (2, 3))

    assert figures.gradcam_target_layer(Stages(channels_last=True), torch.zeros(1, 3, 16, 16)) is None  # Swin-like
    nchw = Stages(channels_last=False)
    assert figures.gradcam_target_layer(nchw, torch.zeros(1, 3, 16, 16)) is nchw.stage
    assert not caplog.records  # every None above comes from the rule, not from a failed probe


def test_score_distribution_png_with_and_without_threshold(tmp_path):
    rng = np.random.default_rng(0)
    y_true = (rng.uniform(size=200) < 0.05).astype(int)  # rare positives: densities keep them visible
    scores = np.clip(rng.normal(0.2 + 0.5 * y_true, 0.15), 0, 1)
    path = figures.score_distribution(scores, y_true, ["healthy", "disease"], 1, 0.42, tmp_path / "scores.png")
    title = _png(path, (600, 350)).text["Title"]
    assert "'disease'" in title and "n=200" in title and "threshold 0.42" in title
    path = figures.score_distribution(scores, y_true, ["healthy", "disease"], 1, None, tmp_path / "plain.png")
    assert "threshold" not in _png(path).text["Title"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.png", "scores.png"]
    with pytest.raises(ValueError, match="outside 0..1"):
        figures.score_distribution(scores, y_true + 1, ["healthy", "disease"], 1, 0.5, tmp_path / "bad.png")


def test_roc_and_pr_curves_mark_the_operating_point(tmp_path):
    from sklearn.metrics import precision_recall_curve, roc_curve

    rng = np.random.default_rng(1)
    positive = rng.uniform(size=300) < 0.3
    scores = np.round(np.clip(rng.normal(0.35 + 0.3 * positive, 0.15), 0, 1), 3)
    path = figures.roc_and_pr_curves(scores, positive, "bad", 0.5, tmp_path / "roc_pr.png")
    assert _png(path).text["Title"] == "ROC and precision-recall curves, test split"
    fpr, tpr, precision = figures.threshold_rates(scores, positive, 0.5)  # the marked points lie on both curves
    curve_fpr, curve_tpr, thresholds = roc_curve(positive, scores, drop_intermediate=False)
    at = np.flatnonzero(thresholds >= 0.5)[-1]
    assert (fpr, tpr) == pytest.approx((curve_fpr[at], curve_tpr[at]))
    curve_precision, curve_recall, pr_thresholds = precision_recall_curve(positive, scores)
    at = np.flatnonzero(pr_thresholds >= 0.5)[0]
    assert (precision, tpr) == pytest.approx((curve_precision[at], curve_recall[at]))
