"""Text backbones: any ``AutoModelForSequenceClassification`` checkpoint, Hub id or folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_adapt.backbones.base import Backbone, BackboneSpec, adapter_target_names, head_prefixes
from hf_adapt.errors import ModelError
from hf_adapt.quantization import load_kwargs
from hf_adapt.sources import hub_id, resolve_source

logger = logging.getLogger("hf_adapt.backbones")

PREPROCESSOR_FILE = "hf_adapt_text.json"
# Head modules of *ForSequenceClassification models, for checkpoints whose head is kept.
_KNOWN_HEADS = ("pre_classifier", "classifier", "score")


class TextPreprocessor:
    """Tokenizes a list of texts with per-batch (dynamic) padding."""

    input_kind = "text"

    def __init__(self, tokenizer: Any, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def collate(self, inputs: list[str], train: bool) -> dict[str, torch.Tensor]:
        return dict(
            self.tokenizer(
                list(inputs),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
        )

    def check_inputs(self, inputs: dict[str, list[str]]) -> dict[str, int]:
        """Per split, how many texts are longer than ``max_length`` tokens (``collate`` truncates them), with
        one warning for all splits that counts them."""
        truncated = {}
        for split, texts in inputs.items():
            lengths = self.lengths(texts, truncate=False)
            truncated[split] = sum(n > self.max_length for n in lengths)
        if any(truncated.values()):
            logger.warning("texts longer than max_length %d tokens are truncated: %s; raise max_length to keep more "
                           "of them", self.max_length,
                           ", ".join(f"{split} {n} of {len(inputs[split])}" for split, n in truncated.items()))
        return truncated

    def lengths(self, texts: list[str], truncate: bool = True) -> list[int]:
        """Each text's length in tokens (special tokens included), at most ``max_length`` when ``truncate``, as
        ``collate`` cuts it (what ``group_by_length`` sorts by)."""
        lengths = []
        for start in range(0, len(texts), 1000):
            lengths += self.tokenizer(list(texts[start:start + 1000]), return_length=True,
                                      return_attention_mask=False, verbose=False)["length"]
        return [min(n, self.max_length) for n in lengths] if truncate else lengths

    def save(self, directory: str) -> None:
        self.tokenizer.save_pretrained(directory)
        Path(directory, PREPROCESSOR_FILE).write_text(json.dumps({"max_length": self.max_length}, indent=2))


def forward_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a transformers model on ``inputs``: the output's ``logits``, or the tensor a bare head returns."""
    out = model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


class MeanPoolingClassifier(nn.Module):
    """Masked mean of the encoder's last hidden states, then dropout and a linear head.

    Sentence encoders (e.g. sentence-transformers checkpoints) are trained to be read by
    mean pooling; their [CLS] token and pooler are not, so a [CLS] head starts far worse.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return self.classifier(self.dropout(pooled))


def resolve_pooling(path: str, spec: BackboneSpec, config: Any) -> str:
    """``auto``: mean pooling where the checkpoint says it was trained for it, else its own head.

    sentence-transformers checkpoints declare their pooling in ``1_Pooling/config.json``.
    A checkpoint with a trained classification head keeps that head unless ``reset_head``.
    """
    has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if spec.pooling == "auto":
        if has_head and not spec.reset_head:
            return "model"
        from transformers.utils import cached_file

        pooling_file = cached_file(path, "1_Pooling/config.json", revision=spec.revision,
                                   _raise_exceptions_for_missing_entries=False,
                                   _raise_exceptions_for_connection_errors=False)
        if pooling_file and json.loads(Path(pooling_file).read_text()).get("pooling_mode_mean_tokens"):
            return "mean"
        return "model"
    if spec.pooling == "mean" and has_head and not spec.reset_head:
        raise ModelError(f"model {spec.name_or_path!r} has a trained classification head that mean pooling "
                         "would discard; use text_pooling: model, or reset_head: true")
    return spec.pooling


def _mean_pooling_model(path: str, spec: BackboneSpec) -> MeanPoolingClassifier:
    from transformers import AutoModel

    kwargs = dict(revision=spec.revision, trust_remote_code=spec.trust_remote_code, dtype=torch.float32,
                  **spec.model_kwargs, **load_kwargs(spec.quantization))
    try:  # no pooler: it would be an unused parameter under DDP
        encoder = AutoModel.from_pretrained(path, add_pooling_layer=False, **kwargs)
    except TypeError:
        encoder = AutoModel.from_pretrained(path, **kwargs)
    return MeanPoolingClassifier(encoder, spec.num_labels)


def load_config(path: str, spec: BackboneSpec):
    """The ``AutoConfig`` at ``path`` (``spec``'s revision and remote-code setting); a ModelError naming the model."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(
            path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise ModelError(
            f"model {spec.name_or_path!r} could not be loaded: no transformers checkpoint at that "
            f"local path or Hub id ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err


def load_tokenizer(path: str, spec: BackboneSpec):
    """The tokenizer at ``path``, padding with eos where it has no pad token (decoder LMs)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path, revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError(f"tokenizer of {spec.name_or_path!r} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token  # decoder LMs: pad with eos, as is customary
    return tokenizer


def _check_existing_head(config: Any, spec: BackboneSpec) -> None:
    """Refuse to silently drop a trained classification head of another size."""
    architectures = getattr(config, "architectures", None) or []
    has_head = any(a.endswith("ForSequenceClassification") for a in architectures)
    if has_head and config.num_labels != spec.num_labels and not spec.reset_head:
        labels = list(getattr(config, "id2label", {}).values())
        raise ModelError(
            f"model {spec.name_or_path!r} has a trained {config.num_labels}-label classification head "
            f"({labels}) but the data has {spec.num_labels} labels; set reset_head: true to replace it"
        )


def hub_id_of(spec: BackboneSpec) -> str | None:
    """The Hub repo the pretrained weights came from: the source itself, its known id, or none when local."""
    if not spec.pretrained:
        return None
    return hub_id(spec.name_or_path)


class TransformersBuilder:
    input_kind = "text"
    language_modelling = True

    def claims(self, name_or_path: str) -> bool:
        config = Path(resolve_source(name_or_path), "config.json")
        if not config.is_file():
            return False
        try:
            return "model_type" in json.loads(config.read_text())
        except ValueError:
            return False

    def build(self, spec: BackboneSpec) -> Backbone:
        from transformers import AutoModelForSequenceClassification

        path = resolve_source(spec.name_or_path, field="model_name_or_path")
        config = load_config(path, spec)
        _check_existing_head(config, spec)
        tokenizer = load_tokenizer(path, spec)
        pooling = resolve_pooling(path, spec, config)
        if pooling == "mean":
            model = _mean_pooling_model(path, spec)
            return Backbone(
                family="transformers",
                model=model,
                head_names=["classifier"],
                target_modules=default_target_modules(model.encoder),
                preprocessor=TextPreprocessor(tokenizer, spec.max_length),
                forward=forward_logits,
                num_parameters=sum(p.numel() for p in model.parameters()),
                info={"model_type": config.model_type, "pooling": "mean",
                      "commit": getattr(config, "_commit_hash", None), "hub_id": hub_id_of(spec),
                      "quantization": spec.quantization},
            )
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=spec.num_labels,
            ignore_mismatched_sizes=spec.reset_head,
            output_loading_info=True,
            revision=spec.revision,
            trust_remote_code=spec.trust_remote_code,
            dtype=torch.float32,
            **spec.model_kwargs,
            **load_kwargs(spec.quantization),
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        new_keys = list(info["missing_keys"]) + [key[0] for key in info.get("mismatched_keys", [])]
        head_names = head_prefixes(new_keys, model)
        if not head_names:  # the checkpoint's own head is kept
            modules = dict(model.named_modules())
            head_names = [name for name in _KNOWN_HEADS if name in modules]
            if spec.reset_head:
                for name in head_names:
                    for module in modules[name].modules():
                        if hasattr(module, "reset_parameters"):
                            module.reset_parameters()
        if not head_names:
            raise ModelError(f"cannot find the classification head of {spec.name_or_path!r}")
        return Backbone(
            family="transformers",
            model=model,
            head_names=head_names,
            target_modules=default_target_modules(model),
            preprocessor=TextPreprocessor(tokenizer, spec.max_length),
            forward=forward_logits,
            peft_task_type="SEQ_CLS",
            num_parameters=sum(p.numel() for p in model.parameters()),
            info={"model_type": model.config.model_type, "new_modules": head_names, "pooling": "model",
                  "commit": getattr(config, "_commit_hash", None), "hub_id": hub_id_of(spec),
                  "quantization": spec.quantization},
        )

    def load_preprocessor(self, directory: str, spec: BackboneSpec) -> TextPreprocessor:
        from transformers import AutoTokenizer

        settings = json.loads(Path(directory, PREPROCESSOR_FILE).read_text())
        return TextPreprocessor(AutoTokenizer.from_pretrained(directory), settings["max_length"])


def default_target_modules(model: nn.Module) -> list[str]:
    """peft's own per-architecture LoRA targets (e.g. BERT: query, value), else every linear layer."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model.config.model_type)
    return list(known) if known else adapter_target_names(model, exclude=list(_KNOWN_HEADS))
