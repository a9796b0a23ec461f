"""The model a feedback round trains, built by hf-adapt and handed to TRL, and the outputs it writes.

A policy is a causal LM with a peft adapter; a reward model is a sequence classifier with one
output and its score head saved in the adapter (``modules_to_save``). A round that continues a
served version (``init_from``) trains that version's adapter further; TRL's preference trainers
then keep a frozen copy of it as the reference, so the reference is the parent, not the base.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hf_adapt.artifacts import check_safetensors
from hf_adapt.errors import ConfigError, ModelError
from hf_adapt.feedback.trainers import REWARD  # the objective of a reward model; policies are "clm"
from hf_adapt.run_record import read_record

logger = logging.getLogger("hf_adapt.feedback")


def backbone_spec(model: dict[str, Any], objective: str):
    """A :class:`BackboneSpec` from a ``model`` block (``name_or_path``, ``revision``, ...)."""
    from hf_adapt.backbones import BackboneSpec

    return BackboneSpec(name_or_path=model["name_or_path"], num_labels=1 if objective == REWARD else 0,
                        family="transformers", revision=model.get("revision"),
                        trust_remote_code=bool(model.get("trust_remote_code")), max_length=model["max_length"],
                        pooling="model", quantization=model.get("quantization"))


def build_base(model: dict[str, Any], objective: str):
    """The base model (no adapter) as a :class:`Backbone`; its tokenizer gets a pad token if it lacks one."""
    from hf_adapt import lm
    from hf_adapt.backbones import build_backbone

    spec = backbone_spec(model, objective)
    if objective == REWARD:
        backbone = build_backbone(spec)
    else:
        backbone, _ = lm.build_lm(spec, "clm")
    if backbone.model.__class__.__name__.startswith("MeanPooling"):
        raise ModelError(f"model {model['name_or_path']!r} cannot score sequences for a reward model")
    tokenizer = backbone.preprocessor.tokenizer
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        backbone.model.config.pad_token_id = tokenizer.pad_token_id
    return backbone


def build_model(model: dict[str, Any], objective: str, adapter: dict[str, Any], parent_dir: Path | None):
    """``(peft model, backbone)``: a fresh adapter from ``adapter``, or the parent's adapter, trainable."""
    from hf_adapt.regimes import apply_regime

    backbone = build_base(model, objective)
    if parent_dir is None:
        return apply_regime(backbone, "adapter", adapter), backbone
    from peft import PeftModel

    from hf_adapt import quantization

    check_safetensors(parent_dir)
    base = quantization.prepare(backbone.model, model.get("quantization"))
    try:
        return PeftModel.from_pretrained(base, str(parent_dir), is_trainable=True), backbone
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"the adapter of {parent_dir} does not load onto {model['name_or_path']!r}: {err}") from err


def check_chat_template(tokenizer, conversational: int, source: str) -> None:
    """Refuse conversational records for a tokenizer that cannot format them."""
    if conversational and not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{conversational} feedback record(s) are conversations (lists of messages), but the tokenizer "
                         f"of {source!r} has no chat template to format them; use a chat model, add a chat_template to "
                         "its tokenizer_config.json, or log prompts and completions as plain text")


def read_feedback_info(directory: str | Path) -> dict[str, Any]:
    """``hf_adapt.json`` of a feedback output (a policy or a reward model); refuses anything else, naming its
    loader."""
    directory = Path(directory)
    record = read_record(directory).expect(("policy", "reward_model"), directory, "a policy or reward model")
    return record.as_dict()


def _local(source: str | Path, revision: str | None) -> Path:
    from hf_adapt.predict import local_dir as _local_dir

    return Path(_local_dir(str(source), revision))


def load_policy(source: str | Path, revision: str | None = None, trust_remote_code: bool = False, merge: bool = False):
    """A trained policy from a feedback output folder or Hub repo: ``(model, tokenizer, info)``.

    The model is the base with the adapter (merged into the weights with ``merge``), in eval mode.
    """
    from peft import PeftModel
    from transformers import AutoTokenizer

    directory = _local(source, revision)
    info = read_feedback_info(directory)
    if info["objective"] == REWARD:
        raise ModelError(f"{source} is a reward model; load it with hf_adapt.feedback.load_reward_model")
    return _load(directory, info, trust_remote_code, merge, PeftModel, AutoTokenizer)


def load_reward_model(source: str | Path, revision: str | None = None, trust_remote_code: bool = False):
    """A reward model from a feedback output (``--trainer reward``): ``(model, tokenizer)``; ``model(...).logits[:, 0]``
    is the reward."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    directory = _local(source, revision)
    info = read_feedback_info(directory)
    if info["objective"] != REWARD:
        raise ModelError(f"{source} is a {info['trainer']} policy, not a reward model")
    model, tokenizer, _ = _load(directory, info, trust_remote_code, False, PeftModel, AutoTokenizer)
    return model, tokenizer


def _load(directory: Path, info: dict[str, Any], trust_remote_code: bool, merge: bool, peft_model, auto_tokenizer):
    if info["model"].get("trust_remote_code") and not trust_remote_code:
        raise ModelError(f"{directory}: the base model needs trust_remote_code=True, which runs code from its repo; "
                         "pass it only if you trust that code")
    check_safetensors(directory)
    # a QLoRA round's base reloads at full precision (see hf_adapt.quantization)
    backbone = build_base({**info["model"], "trust_remote_code": trust_remote_code, "quantization": None},
                          info["objective"])
    model = peft_model.from_pretrained(backbone.model, str(directory))
    if merge:
        model = model.merge_and_unload()
    return model.eval(), auto_tokenizer.from_pretrained(str(directory)), info


def check_parent_model(parent_info: dict[str, Any], objective: str, trainer: str, source: str) -> None:
    """A parent a round can continue: a feedback output of the same kind (policy or reward model)."""
    if parent_info["objective"] != objective:
        what = "a reward model" if parent_info["objective"] == REWARD else "a policy"
        raise ConfigError(f"init_from {source!r} is {what}; trainer {trainer!r} "
                          f"{'trains a reward model' if objective == REWARD else 'trains a policy'}")
