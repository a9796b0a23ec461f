"""Serve an hf-adapt output: ``load_adapted(path_or_repo_id)`` returns a :class:`Predictor`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_adapt.artifacts import check_base, check_safetensors, read_run_info, restore_model
from hf_adapt.backbones import get_builder
from hf_adapt.data import render_row
from hf_adapt.errors import ModelError
from hf_adapt.metrics import softmax
from hf_adapt.transfer import backbone_spec


class Predictor:
    """Labels and probabilities for images, texts or table rows."""

    def __init__(self, model: torch.nn.Module, backbone, preprocessor, labels: list[str], info: dict[str, Any],
                 device: str | torch.device = "cpu", batch_size: int = 32):
        self.model = model.to(device).eval()
        self.backbone = backbone
        self.preprocessor = preprocessor
        self.labels = labels
        self.info = info
        self.device = torch.device(device)
        self.batch_size = batch_size

    def _to_input(self, item: Any) -> Any:
        data = self.info["data"]
        if self.preprocessor.input_kind == "text":
            if isinstance(item, dict):
                return render_row(item, data["feature_columns"], data["text_template"])
            return str(item)
        from PIL import Image

        from hf_adapt.images import open_image

        if isinstance(item, (str, Path)):  # PNG/JPEG or DICOM, windowed as in training
            return open_image(item, str(item), data.get("dicom_window"))
        if isinstance(item, dict) and data.get("pixel_shape"):
            item = np.asarray([item[c] for c in data["feature_columns"]], dtype=np.float32)
        if isinstance(item, np.ndarray):
            if data.get("pixel_shape") and item.ndim == 1:
                item = item.reshape(data["pixel_shape"])
            return Image.fromarray(np.clip(item, 0, 255).astype(np.uint8))
        return item

    @torch.no_grad()
    def logits(self, inputs: Any, task: str | None = None) -> torch.Tensor:
        """Raw logits as a CPU float tensor, one row per input (a single input may be passed bare).

        ``task``: for a task-incremental continual model, the experience the inputs belong to (its
        classes alone compete); other models take none.
        """
        if not isinstance(inputs, list):
            inputs = [inputs]
        route = self._route(task)
        out = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = [self._to_input(x) for x in inputs[start:start + self.batch_size]]
            batch = {k: v.to(self.device) for k, v in self.preprocessor.collate(chunk, train=False).items()}
            out.append(route(batch).float().cpu())
        return torch.cat(out)

    def _route(self, task: str | None):
        """How a batch becomes logits: the model as is, or through a continual model's tasks and adapters."""
        continual = self.info.get("continual") or {}
        tasks = continual.get("tasks") or {}
        if continual.get("scenario") == "task" and task is None:
            raise ModelError(f"this model is task-incremental: pass task= one of {sorted(tasks)}")
        if task is not None and task not in tasks:
            raise ModelError(f"task {task!r} is not one of this model's experiences {sorted(tasks)}"
                             if tasks else "this model takes no task")
        from hf_adapt.continual.routing import mask_logits, routed_logits

        def allowed(name: str) -> torch.Tensor:
            mask = torch.zeros(len(self.labels), dtype=torch.bool)
            mask[tasks[name]["classes"]] = True
            return mask

        adapters = continual.get("adapters")
        if adapters and len(set(adapters.values())) > 1:
            experts = [(adapters[name], allowed(name)) for name in adapters if task is None or name == task]
            return lambda batch: routed_logits(self.model, self.backbone.logits, batch, experts,
                                               torch.zeros(len(next(iter(batch.values()))), dtype=torch.long)
                                               if task is not None else None)
        if task is not None:
            return lambda batch: mask_logits(self.backbone.logits(self.model, batch), allowed(task))
        return lambda batch: self.backbone.logits(self.model, batch)

    def predict_proba(self, inputs: Any, task: str | None = None) -> np.ndarray:
        """Class probabilities as a numpy array, columns in ``self.labels`` order."""
        return softmax(self.logits(inputs, task).numpy().astype(np.float64))

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The decision threshold chosen on validation (``positive_label``, ``threshold``, ``rule``,
        ``target``), or None: then the most probable label is predicted."""
        return self.info.get("operating_point")

    def decide(self, probs: np.ndarray) -> list[str]:
        """Labels for rows of probabilities: the operating point's threshold on the positive class, else argmax."""
        from hf_adapt.operating_point import decide_labels

        return decide_labels(probs, self.labels, self.operating_point)

    def predict(self, inputs: Any, task: str | None = None) -> list[dict[str, Any]]:
        """One ``{"label", "probabilities"}`` per input; a single input may be passed bare.

        With an operating point the label is the positive one when its probability reaches the
        threshold (e.g. the threshold that gave 95 % sensitivity on validation).
        """
        if not isinstance(inputs, list):
            inputs = [inputs]
        probs = self.predict_proba(inputs, task)
        return [{"label": label, "probabilities": dict(zip(self.labels, map(float, p)))}
                for label, p in zip(self.decide(probs), probs)]

    def __call__(self, inputs: Any, task: str | None = None) -> list[dict[str, Any]]:
        return self.predict(inputs, task)


def _local_dir(path_or_repo_id: str, revision: str | None) -> Path:
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path_or_repo_id, revision=revision))


def load_adapted(path_or_repo_id: str, merge: bool = False, device: str = "cpu",
                 revision: str | None = None, trust_remote_code: bool = False) -> Predictor:
    """Rebuild a trained model from an output dir or Hub repo.

    Args:
        path_or_repo_id: an hf-adapt output directory or a Hub repo holding one.
        merge: fold the adapter into the base weights (no adapter overhead at inference).
            Methods that cannot be merged (e.g. prompt tuning) stay unmerged.
        device: where to run the model.
        revision: branch, tag or commit, for Hub repos.
        trust_remote_code: allow a base model whose code lives in its repo; an output folder
            cannot turn this on by itself, since folders from the Hub are untrusted.
    """
    directory = _local_dir(path_or_repo_id, revision)
    info, labels = read_run_info(directory)
    if info.get("operating_point_error"):
        import logging

        logging.getLogger("hf_adapt.predict").warning(
            "%s has no operating point (%s): it predicts the most probable class", path_or_repo_id,
            info["operating_point_error"])
    model_info = info["model"]
    if model_info.get("trust_remote_code") and not trust_remote_code:
        raise ModelError(f"{path_or_repo_id}: the base model needs trust_remote_code=True, which runs code "
                         "from its repo; pass it to load_adapted only if you trust that code")
    builder = get_builder(info["family"])
    with tempfile.TemporaryDirectory(prefix="hf-adapt-load-") as workdir:  # a transfer chain's backbone, written out
        spec = backbone_spec(directory, model_info, len(labels), Path(workdir), trust_remote_code,
                             image_size=model_info.get("image_size"), max_length=model_info.get("max_length", 256),
                             pooling=model_info.get("pooling") or "model")
        backbone = builder.build(spec)
    check_base(backbone, model_info, path_or_repo_id)
    model = restore_model(backbone, info["regime"], directory)
    adapters = (info.get("continual") or {}).get("adapters") or {}
    for name in sorted(set(adapters.values()) - {"default"}):  # one adapter per experience
        check_safetensors(directory / name)
        model.load_adapter(str(directory / name), adapter_name=name)
    if merge and hasattr(model, "merge_and_unload") and len(set(adapters.values())) <= 1:  # several: routed, unmerged
        try:
            model = model.merge_and_unload()
        except (AttributeError, ValueError, NotImplementedError):
            pass  # method without a merge: serve it unmerged
    preprocessor = builder.load_preprocessor(str(directory), spec)
    return Predictor(model, backbone, preprocessor, labels, info, device=device)
