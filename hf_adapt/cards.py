"""Model cards rendered from the Jinja templates in ``model_cards/``, metadata via ModelCardData."""

from __future__ import annotations

import json
import platform
from importlib import metadata, resources
from pathlib import Path
from typing import Any

# metric key -> (model-index metric type, display name)
_METRICS = {
    "accuracy": ("accuracy", "Accuracy"),
    "macro_f1": ("f1", "Macro F1"),
    "auroc": ("roc_auc", "AUROC"),
    "log_loss": ("log_loss", "Log loss"),
    "ece": ("ece", "Expected calibration error"),
}
_PIPELINE = {"text": "text-classification", "image": "image-classification"}
_VERSIONED = ("hf-adapt", "torch", "transformers", "peft", "timm", "accelerate", "datasets")


def template_path(name: str) -> Path:
    """A template from ``model_cards/``: the checkout's folder, or its installed copy in a wheel."""
    checkout = Path(__file__).resolve().parents[1] / "model_cards" / name
    if checkout.is_file():
        return checkout
    return Path(str(resources.files("hf_adapt.model_cards").joinpath(name)))


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hardware_description(accelerator) -> str:
    import torch

    device = accelerator.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"
    return f"{accelerator.num_processes} x {name}"


def card_data(facts: dict[str, Any]):
    """YAML metadata: base model, library, pipeline, tags and the test metrics (model-index)."""
    from huggingface_hub import EvalResult, ModelCardData

    task_type = _PIPELINE[facts["input_kind"]]
    dataset_name = facts["dataset_name"]
    results = [
        EvalResult(
            task_type=task_type,
            dataset_type=facts.get("dataset_id") or dataset_name,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=_METRICS[key][0],
            metric_name=_METRICS[key][1],
            metric_value=round(float(value), 4),
        )
        for key, value in facts["test_metrics"].items()
        if key in _METRICS and value == value  # NaN (undefined) metrics are not reported
    ]
    tags = ["hf-adapt", facts["family"], task_type, facts["regime"]]
    if facts.get("adapter"):
        tags.append(str(facts["adapter"]["peft_type"]).lower())
    if facts["data_kind"] == "table":
        tags.append("tabular-as-text")
    return ModelCardData(
        model_name=facts["model_name"],
        base_model=facts.get("base_model"),
        base_model_relation="adapter" if facts["regime"] == "adapter" else "finetune",
        library_name="peft" if facts["regime"] == "adapter" else facts["family"],
        pipeline_tag=task_type,
        license=facts.get("license"),
        datasets=[facts["dataset_id"]] if facts.get("dataset_id") else None,
        tags=tags,
        eval_results=results,
    )


def render_card(facts: dict[str, Any], template: str = "classifier.md"):
    """A ``huggingface_hub.ModelCard`` filled only with the measured facts given."""
    from huggingface_hub import ModelCard

    adapter = facts.get("adapter")
    history = facts["history"]
    context = {
        **facts,
        "adapter_json": json.dumps(adapter, sort_keys=True) if adapter else None,
        "history_metrics": [m for m in ("accuracy", "auroc", "log_loss") if history and m in history[0]],
        "model_column": "this model",
        "versions": library_versions(),
    }
    return ModelCard.from_template(card_data(facts), template_path=str(template_path(template)), **context)
