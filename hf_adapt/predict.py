"""Serve an hf-adapt output: ``load_adapted(path_or_repo_id)`` returns a :class:`Predictor`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hf_adapt.artifacts import read_run_info, restore_model
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

        if isinstance(item, (str, Path)):
            with Image.open(item) as image:
                return image.copy()
        if isinstance(item, dict) and data.get("pixel_shape"):
            item = np.asarray([item[c] for c in data["feature_columns"]], dtype=np.float32)
        if isinstance(item, np.ndarray):
            if data.get("pixel_shape") and item.ndim == 1:
                item = item.reshape(data["pixel_shape"])
            return Image.fromarray(np.clip(item, 0, 255).astype(np.uint8))
        return item

    @torch.no_grad()
    def logits(self, inputs: Any) -> torch.Tensor:
        """Raw logits as a CPU float tensor, one row per input (a single input may be passed bare)."""
        if not isinstance(inputs, list):
            inputs = [inputs]
        out = []
        for start in range(0, len(inputs), self.batch_size):
            chunk = [self._to_input(x) for x in inputs[start:start + self.batch_size]]
            batch = {k: v.to(self.device) for k, v in self.preprocessor.collate(chunk, train=False).items()}
            out.append(self.backbone.logits(self.model, batch).float().cpu())
        return torch.cat(out)

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """Class probabilities as a numpy array, columns in ``self.labels`` order."""
        return softmax(self.logits(inputs).numpy().astype(np.float64))

    def predict(self, inputs: Any) -> list[dict[str, Any]]:
        """One ``{"label", "probabilities"}`` per input; a single input may be passed bare."""
        if not isinstance(inputs, list):
            inputs = [inputs]
        probs = self.predict_proba(inputs)
        return [
            {"label": self.labels[int(p.argmax())], "probabilities": dict(zip(self.labels, map(float, p)))}
            for p in probs
        ]

    __call__ = predict


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
    model = restore_model(backbone, info["regime"], directory)
    if merge and hasattr(model, "merge_and_unload"):
        try:
            model = model.merge_and_unload()
        except (AttributeError, ValueError, NotImplementedError):
            pass  # method without a merge: serve it unmerged
    preprocessor = builder.load_preprocessor(str(directory), spec)
    return Predictor(model, backbone, preprocessor, labels, info, device=device)
