"""Language modelling on unlabelled text: masked LM for encoders, causal LM for decoders.

Documents come from :func:`hf_adapt.data.load_corpus` (split by document, never by block, so no document
is scored that was trained on); here they are tokenised, and packed into ``max_length`` blocks or
truncated. Held-out masked-LM data is masked once, with a seeded generator, so every score
of a run (before and after training, every epoch) counts the same tokens.

:func:`load_pretrained_lm` rebuilds the trained language model from a pretrain output.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from hf_adapt.backbones.base import Backbone, BackboneSpec
from hf_adapt.errors import ConfigError, DataError, ModelError
from hf_adapt.loop import Callback, training_loader
from hf_adapt.outputs import RUN_FILE
from hf_adapt.quantization import load_kwargs
from hf_adapt.run_record import read_record
from hf_adapt.sources import resolve_source

logger = logging.getLogger("hf_adapt.lm")

OBJECTIVES = ("mlm", "clm")
# Parameters the base checkpoint lacks (normally the LM head of an encoder-only checkpoint):
# trained with the adapter and saved beside it, so the output rebuilds the trained model exactly.
LM_HEAD_FILE = "lm_head.safetensors"
PIPELINE_TAGS = {"mlm": "fill-mask", "clm": "text-generation"}
TRUNCATED = "__truncated__"  # a tokenized document's flag, counted into one warning, then dropped


# ----------------------------------------------------------------------------- model


def lm_capabilities(config: Any) -> tuple[bool, bool]:
    """Whether a transformers config can train as (masked LM, causal LM).

    A decoder (``is_decoder``, a ``*ForCausalLM``/``*LMHeadModel`` architecture, or a model
    type transformers knows only as a causal LM) is causal; an encoder with a masked-LM
    class is masked. BERT-like types appear in both of transformers' mappings, so the
    mapping alone does not decide.
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", None)
    auto_map = getattr(config, "auto_map", None) or {}
    architectures = getattr(config, "architectures", None) or []
    has_masked = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES or "AutoModelForMaskedLM" in auto_map
    has_causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or "AutoModelForCausalLM" in auto_map
    decoder = bool(getattr(config, "is_decoder", False)) or any(
        a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) or (has_causal and not has_masked)
    return has_masked and not decoder, has_causal and decoder


def resolve_objective(config: Any, objective: str, name: str) -> str:
    """``mlm`` or ``clm``: the requested objective, checked against the model, or for ``auto`` the model's own."""
    masked, causal = lm_capabilities(config)
    kind = getattr(config, "model_type", "?")
    if objective == "auto":
        if not (masked or causal):
            raise ModelError(f"model {name!r} ({kind}) is neither a masked nor a causal language model "
                             "that transformers can load; continued pretraining needs one of them")
        return "clm" if causal else "mlm"
    if objective == "mlm" and not masked:
        why = "it is a decoder; use objective: clm" if causal else "transformers has no masked-LM class for it"
        raise ModelError(f"model {name!r} ({kind}) cannot be trained as a masked LM (objective: mlm): {why}")
    if objective == "clm" and not causal:
        why = ("it is a bidirectional encoder; use objective: mlm" if masked
               else "transformers has no causal-LM class for it")
        raise ModelError(f"model {name!r} ({kind}) cannot be trained as a causal LM (objective: clm): {why}")
    return objective


def _auto_class(objective: str):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM


def build_lm(spec: BackboneSpec, objective: str) -> tuple[Backbone, str]:
    """The language model of ``spec`` as a :class:`Backbone`, and the objective it trains with.

    ``info["new_keys"]`` lists the parameters the checkpoint lacked (e.g. the MLM head of a
    ``BertModel`` checkpoint): they start freshly initialised, and train even under an adapter.
    """
    from hf_adapt.backbones.transformers import (
        TextPreprocessor,
        default_target_modules,
        forward_logits,
        hub_id_of,
        load_config,
        load_tokenizer,
    )

    path = resolve_source(spec.name_or_path, field="model_name_or_path")
    config = load_config(path, spec)
    objective = resolve_objective(config, objective, spec.name_or_path)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and spec.max_length > positions:
        raise ConfigError(f"max_length {spec.max_length} exceeds the {positions} positions of model "
                          f"{spec.name_or_path!r}")
    tokenizer = load_tokenizer(path, spec)
    if objective == "mlm" and tokenizer.mask_token is None:
        raise ModelError(f"tokenizer of {spec.name_or_path!r} has no mask token, which masked-LM training needs")
    try:
        model, loading = _auto_class(objective).from_pretrained(
            path, revision=spec.revision, trust_remote_code=spec.trust_remote_code, dtype=torch.float32,
            output_loading_info=True, **spec.model_kwargs, **load_kwargs(spec.quantization))
    except (OSError, ValueError) as err:
        raise ModelError(f"model {spec.name_or_path!r} could not be loaded as a {objective} model: "
                         f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
    new_keys = sorted(loading["missing_keys"])
    if new_keys:
        logger.warning("%s has no weights for %d tensors (%s): they start freshly initialised, are trained, and are "
                       "saved with the output", spec.name_or_path, len(new_keys), ", ".join(new_keys[:4]))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    backbone = Backbone(
        family="transformers",
        model=model,
        head_names=[],  # an LM keeps its own head; nothing is added for peft to save
        target_modules=default_target_modules(model),
        preprocessor=TextPreprocessor(tokenizer, spec.max_length),
        forward=forward_logits,
        peft_task_type="CAUSAL_LM" if objective == "clm" else None,
        num_parameters=sum(p.numel() for p in model.parameters()),
        info={"model_type": config.model_type, "commit": getattr(config, "_commit_hash", None),
              "hub_id": hub_id_of(spec), "objective": objective, "new_keys": new_keys,
              "quantization": spec.quantization},
    )
    return backbone, objective


def new_parameters(model: nn.Module, new_keys: list[str]) -> dict[str, nn.Parameter]:
    """The parameters named in ``new_keys``, once each (tied aliases share one entry), by their names in the
    plain model: a new module that an adapter wraps keeps its weight under ``base_layer``."""
    wanted = set(new_keys)
    found: dict[int, tuple[str, nn.Parameter]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        name = name.replace(".base_layer.", ".")
        if name in wanted and id(param) not in found:
            found[id(param)] = (name, param)
    return dict(found.values())


def check_mergeable(adapter: dict[str, Any]) -> None:
    """Refuse prompt-learning methods (prompt or prefix tuning, ...): they add virtual tokens, not weights, so
    they cannot be merged into the plain language model that :func:`load_pretrained_lm` returns."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PromptLearningConfig

    config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(str(adapter.get("peft_type", "")).upper())
    if config_class is not None and issubclass(config_class, PromptLearningConfig):
        raise ConfigError(f"adapter: {adapter['peft_type']} is a prompt-learning method, which cannot be merged into "
                          "the language model a later run starts from; use LORA, IA3, LOHA or LOKR")


def train_new_parameters(model: nn.Module, backbone: Backbone) -> None:
    """Under an adapter, let the parameters the checkpoint lacked train too: a random head frozen for good
    would cap what the adapter can learn."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for param in new_parameters(base, backbone.info["new_keys"]).values():
        param.requires_grad_(True)


# ----------------------------------------------------------------------------- data


def tokenize(dataset, tokenizer, column: str, objective: str, max_length: int, packing: bool):
    """``input_ids`` (and for MLM ``special_tokens_mask``) per example: documents truncated to
    ``max_length`` (one warning counts them), or with ``packing`` concatenated and cut into ``max_length``
    blocks (the classic ``group_texts``: per 1,000 documents the tail shorter than a block is dropped).
    Causal LM documents end with the eos token, so packed blocks keep their boundaries."""
    mlm = objective == "mlm"
    eos = None if mlm else tokenizer.eos_token_id

    def encode(batch):
        encoded = tokenizer(batch[column], return_special_tokens_mask=mlm, return_attention_mask=False, verbose=False)
        out = {"input_ids": encoded["input_ids"]}
        if mlm:
            out["special_tokens_mask"] = encoded["special_tokens_mask"]
        elif eos is not None:
            out["input_ids"] = [ids if ids and ids[-1] == eos else ids + [eos] for ids in out["input_ids"]]
        if not packing:
            long = [row for row, ids in enumerate(out["input_ids"]) if len(ids) > max_length]
            if mlm and long:  # the tokenizer's own truncation keeps the closing special token
                cut = tokenizer([batch[column][row] for row in long], truncation=True, max_length=max_length,
                                return_special_tokens_mask=True, return_attention_mask=False, verbose=False)
                for key in out:
                    for row, seq in zip(long, cut[key]):
                        out[key][row] = seq
            flagged = set(long)
            out = {key: [seq[:max_length] for seq in values] for key, values in out.items()}
            return {**out, TRUNCATED: [row in flagged for row in range(len(out["input_ids"]))]}
        total = sum(len(ids) for ids in out["input_ids"])
        usable = (total // max_length) * max_length if total >= max_length else total
        blocks = {}
        for key, values in out.items():
            flat = [token for seq in values for token in seq][:usable]
            blocks[key] = [flat[i:i + max_length] for i in range(0, usable, max_length)]
        return blocks

    tokenized = dataset.map(encode, batched=True, batch_size=1000, remove_columns=dataset.column_names,
                            desc=f"tokenizing ({'packed' if packing else 'truncated'})")
    if packing:
        return tokenized
    truncated = sum(tokenized[TRUNCATED])
    if truncated:
        logger.warning("%d of %d documents are longer than max_length %d tokens and were truncated; raise max_length "
                       "or use packing to train on all of their text", truncated, len(tokenized), max_length)
    return tokenized.remove_columns([TRUNCATED])


def fixed_eval_examples(dataset, tokenizer, objective: str, mlm_probability: float, seed: int,
                        split: str) -> list[dict[str, list[int]]]:
    """Held-out examples with their labels fixed once: MLM masks drawn with a generator seeded by ``seed``
    (one example at a time, so the masks depend neither on batch size nor on the number of processes);
    causal LM labels are the inputs."""
    if objective == "clm":
        examples = [{"input_ids": ids, "labels": ids} for ids in dataset["input_ids"]]
    else:
        from transformers import DataCollatorForLanguageModeling

        collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability, seed=seed)
        examples = []
        for row in dataset:
            batch = collator([row])
            examples.append({"input_ids": batch["input_ids"][0].tolist(), "labels": batch["labels"][0].tolist()})
    scored = sum(sum(label != -100 for label in e["labels"][1 if objective == "clm" else 0:]) for e in examples)
    if not scored:
        raise DataError(f"split {split!r} leaves no token to score; it needs more text"
                        + (" or a higher mlm_probability" if objective == "mlm" else ""))
    return examples


def pad_batch(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids`` (with ``pad_token_id``) and ``labels`` (with -100); labels default to the inputs."""
    length = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    labels = torch.full((len(examples), length), -100, dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        input_ids[row, :n] = torch.tensor(example["input_ids"])
        attention_mask[row, :n] = 1
        labels[row, :n] = torch.tensor(example.get("labels", example["input_ids"]))
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def train_collator(tokenizer, objective: str, mlm_probability: float):
    """MLM: transformers' dynamic masking (fresh masks every epoch); CLM: padded inputs as labels, pads -100."""
    if objective == "mlm":
        from transformers import DataCollatorForLanguageModeling

        return DataCollatorForLanguageModeling(tokenizer, mlm_probability=mlm_probability)
    return partial(_causal_collate, pad_token_id=tokenizer.pad_token_id)


def _causal_collate(examples: list[dict[str, Any]], pad_token_id: int) -> dict[str, torch.Tensor]:
    return pad_batch([{"input_ids": e["input_ids"]} for e in examples], pad_token_id)


def eval_collator(tokenizer):
    """Held-out examples carry their fixed labels: only pad them per batch."""
    return partial(pad_batch, pad_token_id=tokenizer.pad_token_id)


def make_lm_loader(examples, collate, batch_size: int, train: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """Training batches draw their masks from their own seed (``loop.training_loader``): resumes are exact."""
    if train:
        return training_loader(examples, collate, batch_size, seed, num_workers)
    return DataLoader(examples, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)


# ----------------------------------------------------------------------------- task and evaluation


class LanguageModelingTask:
    """Token-level cross-entropy: a causal LM predicts each next token, a masked LM the masked ones."""

    def __init__(self, causal: bool):
        self.causal = causal

    def token_losses(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        """Logits, and per example the summed loss and the number of scored tokens."""
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        scores, labels = (logits[:, :-1], batch["labels"][:, 1:]) if self.causal else (logits, batch["labels"])
        # flat (tokens, vocab) rows: the (batch, vocab, length) layout of a transpose is ~4x slower at a 32k
        # vocabulary (benchmarks/README.md, gpu.py)
        losses = F.cross_entropy(scores.float().reshape(-1, scores.shape[-1]), labels.reshape(-1), ignore_index=-100,
                                 reduction="none").view(labels.shape)
        return logits, losses.sum(dim=1), (labels != -100).sum(dim=1)

    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits, sums, counts = self.token_losses(model, batch)
        return {"loss": sums.sum() / counts.sum().clamp(min=1), "logits": logits}


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 700 else float("inf")


@torch.no_grad()
def loss_and_tokens(accelerator, model: nn.Module, task: LanguageModelingTask, loader: DataLoader) -> tuple[float, int]:
    """Token-weighted mean loss over a prepared loader and the tokens it scored, over all processes
    (``gather_for_metrics`` drops the samples Accelerate repeats to even out the last batch)."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    tokens = torch.zeros((), dtype=torch.long, device=accelerator.device)
    for batch in loader:
        _, sums, counts = task.token_losses(model, batch)
        sums, counts = accelerator.gather_for_metrics((sums.double(), counts))
        total, tokens = total + sums.sum(), tokens + counts.sum()
    count = int(tokens.item())
    return (total.item() / count if count else float("nan")), count


def evaluate_lm(accelerator, model: nn.Module, task: LanguageModelingTask, loader: DataLoader) -> dict[str, float]:
    """``{"loss", "perplexity"}`` for :func:`hf_adapt.loop.fit`'s ``evaluate_fn``."""
    loss, _ = loss_and_tokens(accelerator, model, task, loader)
    return {"loss": loss, "perplexity": perplexity(loss)}


class ScoreBefore(Callback):
    """Scores the untrained model on a held-out loader once :func:`fit` has prepared it, so the
    "before" number comes from the same (device-placed, possibly distributed) model as "after"."""

    def __init__(self, task: LanguageModelingTask, loader: DataLoader):
        self.task, self.loader = task, loader
        self.loss, self.tokens = float("nan"), 0

    def on_train_start(self, accelerator, model: nn.Module, optimizer) -> None:
        self.loss, self.tokens = loss_and_tokens(accelerator, model, self.task, self.loader)
        logger.info("before training: held-out loss %.4f, perplexity %.2f over %d tokens", self.loss,
                    perplexity(self.loss), self.tokens)


# ----------------------------------------------------------------------------- artifacts


def save_lm(model: nn.Module, backbone: Backbone, regime: str, directory: Path,
            state: dict[str, Any] | None = None) -> None:
    """Full: the whole LM with ``save_pretrained``; adapter: peft's files, plus the parameters the base
    checkpoint lacked (``lm_head.safetensors``), which peft does not save. ``state``: the model's gathered full
    state dict where its parameters are sharded (:func:`hf_adapt.artifacts.gathered_state`)."""
    from hf_adapt.regimes import get_regime

    model.save_pretrained(str(directory), **({"state_dict": state} if state is not None else {}))
    backbone.preprocessor.tokenizer.save_pretrained(str(directory))
    if get_regime(regime).uses_adapter and backbone.info["new_keys"]:
        from safetensors.torch import save_file

        if state is None:
            new = new_parameters(model.get_base_model(), backbone.info["new_keys"])
            tensors = {name: param.detach().cpu().contiguous() for name, param in new.items()}
        else:  # the peft model's keys, as new_parameters names them in the plain model
            wanted, tensors = set(backbone.info["new_keys"]), {}
            for key, value in state.items():
                name = key.removeprefix("base_model.model.").replace(".base_layer.", ".")
                if name in wanted and name not in tensors:
                    tensors[name] = value.contiguous()
        save_file(tensors, str(directory / LM_HEAD_FILE))


def read_pretrain_info(directory: str | Path) -> dict[str, Any]:
    """``hf_adapt.json`` of a pretrain output (a language model); refuses anything else, naming its loader."""
    directory = Path(directory)
    info = read_record(directory).expect(("language_model",), directory, "a language model").as_dict()
    if info.get("objective") not in OBJECTIVES:
        raise ModelError(f"{directory / RUN_FILE}: objective {info.get('objective')!r} is not one of {OBJECTIVES}")
    return info


def load_pretrained_lm(directory: str | Path, trust_remote_code: bool = False, base: dict[str, Any] | None = None):
    """Rebuild the language model a pretrain run wrote to ``directory``.

    Adapter outputs: the base from ``model.name_or_path`` at the pinned revision, the saved new
    parameters (if any), the adapter, merged with ``merge_and_unload``. Full outputs: the saved model.

    Args:
        directory: a pretrain output folder.
        trust_remote_code: allow a base whose code lives in its repo; the folder cannot turn it on.
        base: a ``model`` block (``name_or_path``, ``revision``) to build an adapter output on instead of
            the one its ``hf_adapt.json`` names, e.g. the portable root of a transfer chain.

    Returns:
        ``(model, tokenizer, info)``: a plain transformers model in eval mode (no peft wrapper), its
        tokenizer, and the run info (``hf_adapt.json``).
    """
    from transformers import AutoTokenizer

    directory = Path(directory)
    info = read_pretrain_info(directory)
    model_info = base or info["model"]
    if (model_info.get("trust_remote_code") or info["model"].get("trust_remote_code")) and not trust_remote_code:
        raise ModelError(f"{directory}: the base model needs trust_remote_code=True, which runs code from its repo; "
                         "pass it to load_pretrained_lm only if you trust that code")
    from hf_adapt.regimes import get_regime, registered_regimes

    if info["regime"] not in registered_regimes():
        raise ModelError(f"{directory / RUN_FILE}: unknown regime {info['regime']!r}")
    auto_class = _auto_class(info["objective"])
    kwargs = {"trust_remote_code": trust_remote_code, "dtype": torch.float32}
    if get_regime(info["regime"]).uses_adapter:
        model = _adapted_lm(directory, model_info, auto_class, kwargs)
    else:
        model = auto_class.from_pretrained(str(directory), **kwargs)
    return model.eval(), AutoTokenizer.from_pretrained(str(directory)), info


def _adapted_lm(directory: Path, model_info: dict[str, Any], auto_class, kwargs: dict[str, Any]) -> nn.Module:
    """The base LM at its pinned revision, the parameters it lacked (``lm_head.safetensors``), the adapter
    merged in: a plain transformers model."""
    from peft import PeftModel

    from hf_adapt.weights import check_safetensors

    source = model_info["name_or_path"]
    try:
        base_lm = auto_class.from_pretrained(resolve_source(source, field="model.name_or_path"),
                                             revision=model_info.get("revision"), **kwargs)
    except (OSError, ValueError) as err:
        raise ModelError(f"{directory}: base model {source!r} could not be loaded: "
                         f"{str(err).splitlines()[0]}") from err
    head = directory / LM_HEAD_FILE
    if head.is_file():
        from safetensors.torch import load_file

        unexpected = base_lm.load_state_dict(load_file(str(head)), strict=False).unexpected_keys
        if unexpected:
            raise ModelError(f"{head} holds tensors the base model lacks: {unexpected[:5]}")
    check_safetensors(directory)
    return PeftModel.from_pretrained(base_lm, str(directory)).merge_and_unload()
