"""Learn from user feedback: a feedback log -> a TRL trainer with a peft adapter -> an evaluated, gated new version.

Shared by ``recipes/feedback.py`` (``accelerate launch``) and ``hf-adapt feedback train``. One
round reads the log (the window since the served version, when continuing one), holds out a
share of its prompts, converts the rest for the chosen trainer, trains with TRL, scores the new
version against its parent on the held-out prompts, and writes an output whose card says what it
learned from and whether it got better. ``min_win_rate`` gates the push.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from hf_adapt.checkpoints import CheckpointOptions
from hf_adapt.config import redefault
from hf_adapt.errors import ConfigError, DataError, ReleaseGateError
from hf_adapt.feedback.trainers import get_trainer
from hf_adapt.hub import PublishOptions
from hf_adapt.options import (
    AdapterOptions,
    CardOptions,
    ModelOptions,
    ParentOptions,
    QuantizationOptions,
    RuntimeOptions,
    SpeedOptions,
    TrainingOptions,
)

logger = logging.getLogger("hf_adapt.feedback")

DEFAULT_POLICY = "HuggingFaceTB/SmolLM2-135M-Instruct"
RESULTS_FILE = "feedback_results.json"
# TRL config fields hf-adapt sets from its own config; trainer_args may not set them twice
_OWN_ARGS = ("output_dir", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
             "learning_rate", "num_train_epochs", "max_steps", "lr_scheduler_type", "warmup_steps", "weight_decay",
             "max_grad_norm", "seed", "logging_steps", "report_to", "bf16", "fp16", "max_length", "use_cpu",
             "dataloader_num_workers", "ddp_timeout", "save_strategy", "save_steps", "save_total_limit", "tf32",
             "torch_compile", "torch_compile_mode", "use_liger_kernel")


def _default_adapter() -> dict[str, Any]:
    return {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "lora_dropout": 0.05}


@dataclass
class FeedbackConfig(ModelOptions, ParentOptions, AdapterOptions, QuantizationOptions, TrainingOptions, RuntimeOptions,
                     CardOptions, CheckpointOptions, PublishOptions, SpeedOptions):
    """Train the next version of a model on what its users said about its answers, with a TRL trainer and a peft
    adapter, and score it against the version it started from on held-out prompts."""

    quantized_parents: ClassVar[bool] = True  # the parent's adapter continues on its base loaded quantized

    # --- the feedback
    feedback: str | None = field(default=None, metadata={"help": "Feedback log: a .jsonl/.json/.parquet file, a folder of them, or a Hub dataset repo (see hf_adapt.feedback.log for the record schema)."})
    feedback_revision: str | None = field(default=None, metadata={"help": "Hub revision of a feedback dataset repo."})
    feedback_since: str | None = field(default=None, metadata={"help": "Use only records after this time: an ISO-8601 time, or 'parent' for after the last record the parent (init_from) trained on. Records without a timestamp are then left out, and counted."})
    feedback_revisions: list[str] | None = field(default=None, metadata={"help": "Use only records whose model_revision is one of these ('parent': the init_from revision)."})
    feedback_models: list[str] | None = field(default=None, metadata={"help": "The model names (a record's model field) whose feedback this round accepts; records naming any other model are refused. Default: the base model, init_from and hub_model_id."})
    on_bad_record: Literal["error", "skip"] = field(default="error", metadata={"help": "A malformed record stops the run with its file and line (error), or is skipped, counted and reported (skip)."})

    # --- the trainer
    trainer: str = field(default="dpo", metadata={"help": "TRL trainer: sft (corrections), reward (a reward model from pairs and scores), dpo / orpo (pairs), kto (thumbs), grpo (prompts, scored by reward_funcs), or one added with hf_adapt.feedback.trainers.register_trainer."})
    trainer_args: dict[str, Any] = field(default_factory=dict, metadata={"help": "Fields of the TRL config class of the trainer (e.g. {beta: 0.1, loss_type: sigmoid} for DPOConfig); checked against it."})
    reward_funcs: list[str] | None = field(default=None, metadata={"help": "grpo: reward functions as module:function import paths, TRL's signature f(prompts, completions, **kwargs) -> list[float]."})
    allow_single_label: bool = field(default=False, metadata={"help": "kto: train even when every thumb is up (or every one down); KTO learns nothing useful from one side unless you mean it."})
    sft_include_up: bool = field(default=False, metadata={"help": "sft: train on completions voted up as well as on corrections."})
    max_pairs_per_prompt: int | None = field(default=None, metadata={"help": "dpo/orpo/reward: at most this many pairs per prompt (the first in log order)."})

    # --- evaluation and the gate
    eval_size: float = field(default=0.2, metadata={"help": "Share of the distinct prompts held out from training to score the round (grouped by prompt, seeded)."})
    max_eval_prompts: int = field(default=200, metadata={"help": "At most this many held-out prompts."})
    judge: str = field(default="auto", metadata={"help": "How the round is scored against its parent: pairs (held-out preference pairs), rule:module:function (a reward function judging both models' greedy answers), reward_model:PATH (a reward model written by this recipe), or auto (grpo: its first reward function; otherwise pairs)."})
    card_examples: int = field(default=0, metadata={"resumable": True, "help": "Judged held-out examples (user prompts and both models' answers, verbatim) that the card and feedback_results.json show, and conflicting answers that the inspection lists. 0 keeps users' text out of the outputs, which are pushed."})
    max_new_tokens: int = field(default=64, metadata={"help": "Tokens each model may generate per held-out prompt (judged evaluation) and per grpo completion."})
    min_win_rate: float | None = field(default=None, metadata={"help": "Release gate: push only if the new version beats its parent on at least this share of held-out comparisons (ties count half). Below it, the outputs are written, nothing is pushed, and the run exits non-zero."})
    ddp_timeout: int = field(default=7200, metadata={"help": "Seconds the ranks of a multi-process run wait for each other; the other ranks wait while the main process scores the round."})

    # --- the components' fields, with this recipe's defaults (TRL's otherwise; trainer_args override)
    model_name_or_path: str = redefault(ModelOptions, "model_name_or_path", DEFAULT_POLICY, help="Base causal LM: Hub id, local folder or pkg://package/path. With init_from, the parent's base is used and this must be left at its default or name the same model.")
    max_length: int = redefault(ModelOptions, "max_length", 512, help="Tokens per example (prompt + completion); longer prompts lose their oldest tokens.")
    init_from: str | None = redefault(ParentOptions, "init_from", None, help="The served version to improve: an earlier hf-adapt feedback output (folder or Hub repo). Its adapter continues training and is the parent every number is compared with.")
    init_from_revision: str | None = redefault(ParentOptions, "init_from_revision", None, help="Hub branch, tag or commit of init_from (the card records the commit).")
    adapter: dict = redefault(AdapterOptions, "adapter", default_factory=_default_adapter, help="peft config as a dict (peft_type plus that config's fields); target_modules default to peft's for the architecture. Ignored with init_from (the parent's adapter continues).")
    learning_rate: float = redefault(TrainingOptions, "learning_rate", 1e-4, help="Peak learning rate.")
    num_train_epochs: float = redefault(TrainingOptions, "num_train_epochs", 1.0, help="Passes over the converted feedback.")
    per_device_train_batch_size: int = redefault(TrainingOptions, "per_device_train_batch_size", 4, help="Examples (pairs, thumbs, prompts) per device per step.")
    per_device_eval_batch_size: int = redefault(TrainingOptions, "per_device_eval_batch_size", 8, help="Examples per forward pass in the evaluation.")
    warmup_ratio: float = redefault(TrainingOptions, "warmup_ratio", 0.0, help="Share of the steps spent warming up.")
    weight_decay: float = redefault(TrainingOptions, "weight_decay", 0.0, help="AdamW weight decay.")
    mixed_precision: Literal["no", "bf16", "fp16"] = redefault(TrainingOptions, "mixed_precision", "no", help="no: float32 (TRL's bf16 default is turned off: on CPU it is ~4x slower).")
    output_dir: str = redefault(RuntimeOptions, "output_dir", "outputs/feedback", help="Where the new version is written (atomically).")
    report_to: str = redefault(RuntimeOptions, "report_to", "none", help="Trackers for TRL's logs: none, or a comma list (tensorboard, trackio, ...).")
    dataset_name: str | None = redefault(CardOptions, "dataset_name", None, help="Name of the feedback data for the card (default: the log's file name).")

    def validate(self) -> None:
        if not self.feedback:
            raise ConfigError("feedback: name the feedback log (a .jsonl/.json/.parquet file, a folder or a Hub "
                              "dataset repo)")
        if not 0 < self.eval_size < 1:
            raise ConfigError(f"eval_size must be in (0, 1), got {self.eval_size}")
        if self.min_win_rate is not None and not 0 <= self.min_win_rate <= 1:
            raise ConfigError(f"min_win_rate must be in [0, 1], got {self.min_win_rate}")
        get_trainer(self.trainer).check_config(self)  # an unknown trainer, reward_funcs, a reward model's judge
        if self.feedback_since == "parent" and not self.init_from:
            raise ConfigError("feedback_since: parent needs init_from (the version the feedback is about)")
        if self.feedback_revisions and "parent" in self.feedback_revisions and not self.init_from:
            raise ConfigError("feedback_revisions: 'parent' needs init_from")
        if not (self.judge in ("auto", "pairs") or self.judge.startswith(("rule:", "reward_model:"))):
            raise ConfigError(f"judge {self.judge!r}: use auto, pairs, rule:module:function or reward_model:PATH")
        clash = sorted(set(self.trainer_args) & set(_OWN_ARGS))
        if clash:
            raise ConfigError(f"trainer_args sets {clash}, which are hf-adapt fields here: set them directly "
                              "(e.g. --learning_rate; warmup_steps is warmup_ratio, use_liger_kernel is liger_kernel)")
        if self.feedback_since not in (None, "parent"):
            from hf_adapt.feedback.log import parse_time

            try:
                parse_time(self.feedback_since, "feedback_since")
            except ValueError as err:
                raise ConfigError(str(err)) from None


@dataclass
class FeedbackResult:
    output_dir: Path
    metrics: dict[str, Any]
    gate: dict[str, Any]
    model: Any
    tokenizer: Any
    push: Any = None

    @property
    def test_metrics(self) -> dict[str, Any]:
        """The round against its parent on the held-out prompts."""
        return self.metrics


# ----------------------------------------------------------------------------- the window and the split


@dataclass
class Window:
    """The records a round uses, and what was left out of the log and why."""

    log: Any  # FeedbackSet of the records in the window
    left_out: dict[str, int]
    since: str | None
    revisions: list[str] | None


def select_window(log, cfg: FeedbackConfig, parent, served: set[str]) -> Window:
    """The records in the configured window; records about another model are refused, not filtered."""
    from hf_adapt.feedback.log import parse_time

    others: dict[str, list[str]] = {}
    for record, where in zip(log.records, log.where):
        if record.get("model") and record["model"] not in served:
            others.setdefault(record["model"], []).append(where)
    if others:
        names = "; ".join(f"{name!r} ({len(lines)} records, e.g. {lines[0]})" for name, lines in others.items())
        raise DataError(f"feedback log {cfg.feedback}: records about another model: {names}. This round trains "
                        f"{sorted(served)}; filter the log, or list the model in feedback_models if it is the same")
    since = cfg.feedback_since
    if since == "parent":
        since = (parent.info.get("feedback") or {}).get("last") or parent.info.get("trained_at")
        if not since:
            raise ConfigError(f"feedback_since: parent, but {cfg.init_from} records no feedback window or time")
    revisions = cfg.feedback_revisions
    if revisions and "parent" in revisions:
        known = [r for r in dict.fromkeys((cfg.init_from_revision, parent.revision)) if r]
        if not known:
            raise ConfigError(f"feedback_revisions: 'parent' names the revision of init_from, but {cfg.init_from} is a "
                              "local folder with none; list the revision your serving logs for it (e.g. [v3])")
        revisions = [r for r in revisions if r != "parent"] + known  # the tag asked for, and the commit it is
    keep, left_out = [], {"before the window": 0, "no timestamp": 0, "other model revision": 0}
    start = parse_time(since) if since else None
    for index, record in enumerate(log.records):
        if start is not None:
            if not record.get("timestamp"):
                left_out["no timestamp"] += 1
                continue
            if parse_time(record["timestamp"]) <= start:
                left_out["before the window"] += 1
                continue
        if revisions and record.get("model_revision") not in revisions:
            left_out["other model revision"] += 1
            continue
        keep.append(index)
    return Window(log.select(keep), {k: v for k, v in left_out.items() if v}, since, revisions)


def split_prompts(records: list[dict[str, Any]], eval_size: float, max_eval: int, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) record indices; every record of a prompt falls on one side."""
    from hf_adapt.feedback.convert import key

    prompts = sorted({key(r["prompt"]) for r in records})
    if len(prompts) < 2:
        raise DataError(f"the feedback holds {len(prompts)} distinct prompt(s); a round needs at least 2, one to "
                        "train on and one held out to score it")
    random.Random(seed).shuffle(prompts)
    held = set(prompts[:min(max_eval, max(1, round(eval_size * len(prompts))))])
    train = [i for i, r in enumerate(records) if key(r["prompt"]) not in held]
    return train, [i for i, r in enumerate(records) if key(r["prompt"]) in held]


def check_rows(conversion, cfg: FeedbackConfig, source: str) -> None:
    """Refuse, before any model loads, training data a trainer cannot learn from."""
    if not conversion.rows:
        raise DataError(f"feedback {source}: nothing for trainer {cfg.trainer} to train on ({conversion.describe()})")
    spec = get_trainer(cfg.trainer)
    if spec.check_rows is not None:
        spec.check_rows(conversion, cfg, source)


# ----------------------------------------------------------------------------- TRL


def trl_config(cfg: FeedbackConfig, workdir: str, counts: dict[str, int], num_processes: int):
    """The TRL config of ``cfg.trainer``: hf-adapt's fields, the trainer's own defaults for this run (e.g. KTO's
    class-balance weights), then ``trainer_args``."""
    import dataclasses

    from hf_adapt.runtime import trackers_for

    spec = get_trainer(cfg.trainer)
    config_class, _ = spec.classes()
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(cfg.trainer_args) - known)
    if unknown:
        raise ConfigError(f"trainer_args: {config_class.__name__} has no field(s) {unknown}")
    values: dict[str, Any] = {
        "output_dir": workdir, "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "per_device_eval_batch_size": cfg.per_device_eval_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps, "learning_rate": cfg.learning_rate,
        "num_train_epochs": cfg.num_train_epochs, "max_steps": cfg.max_steps, "lr_scheduler_type": cfg.lr_scheduler_type,
        "warmup_steps": cfg.warmup_ratio, "weight_decay": cfg.weight_decay, "max_grad_norm": cfg.max_grad_norm,
        "seed": cfg.seed, "logging_steps": cfg.logging_steps, "report_to": trackers_for(cfg.report_to) or "none",
        "save_strategy": "steps" if cfg.checkpointing_steps else "no", "save_steps": cfg.checkpointing_steps or 500,
        "save_total_limit": cfg.checkpoints_total_limit, "bf16": cfg.mixed_precision == "bf16", "fp16": cfg.mixed_precision == "fp16",
        "gradient_checkpointing": False, "max_length": cfg.max_length, "dataloader_num_workers": cfg.num_workers,
        # on a machine without an accelerator TRL must be told it runs on CPU, one process or several, or it
        # refuses bf16 ("Your setup doesn't support bf16/gpu")
        "use_cpu": not _has_accelerator(), "ddp_timeout": cfg.ddp_timeout,
        "disable_tqdm": True,
        # the speed options (require_runtime has refused what this machine cannot do); TRL applies them
        "tf32": True if cfg.tf32 else None, "torch_compile": cfg.torch_compile,
        "torch_compile_mode": cfg.torch_compile_mode if cfg.torch_compile else None,
        "use_liger_kernel": cfg.liger_kernel,
    }
    if spec.defaults is not None:
        values.update(spec.defaults(cfg, counts, num_processes))
    values = {k: v for k, v in values.items() if k in known}  # e.g. GRPOConfig has no max_length
    values.update(cfg.trainer_args)
    try:
        return config_class(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"trainer {cfg.trainer}: invalid {config_class.__name__} settings: {err}") from err


def make_trainer(cfg: FeedbackConfig, model, tokenizer, rows: list[dict[str, Any]], args):
    from datasets import Dataset

    from hf_adapt.preemption import trainer_callback

    spec = get_trainer(cfg.trainer)
    _, trainer_class = spec.classes()
    kwargs: dict[str, Any] = {"model": model, "args": args, "train_dataset": Dataset.from_list(rows),
                              "processing_class": tokenizer,
                              "callbacks": [trainer_callback(save=cfg.checkpointing_steps is not None)]}
    if spec.trainer_kwargs is not None:
        kwargs.update(spec.trainer_kwargs(cfg))
    return trainer_class(**kwargs)


def check_taken(cfg: FeedbackConfig, trainer) -> None:
    """Refuse ``trainer_args: {padding_free: true}`` where the TRL trainer turned it off (TRL 1.16's DPOTrainer
    falls back to padding with a warning): an option asked for must take effect."""
    if cfg.trainer_args.get("padding_free") and getattr(trainer, "padding_free", True) is False:
        import trl

        raise ConfigError(f"trainer_args: padding_free: true is turned off by TRL {trl.__version__}'s "
                          f"{type(trainer).__name__} (it falls back to padded batches); leave padding_free unset")


# ----------------------------------------------------------------------------- the run


TUNE_VALIDATION = ("a validation share (eval_size) of the training prompts, split off by prompt; the held-out "
                   "prompts the card reports on were not used")  # what hf-adapt tune's trials are scored on


def tune_objectives(cfg: FeedbackConfig) -> dict[str, str]:
    """What :func:`validate` reports with ``cfg``'s judge, each with its direction; the first (the win rate
    against the parent) is ``hf-adapt tune``'s default objective."""
    found = {"win_rate": "maximize"}
    if resolve_judge(cfg) == "pairs":
        found.update(preference_accuracy="maximize", reward_margin="maximize")
    else:
        found.update(judged_reward="maximize")
    return found


def validate(cfg: FeedbackConfig, callbacks=()):
    """One trial of ``hf-adapt tune``: train a round as :func:`main` does on part of its training prompts and score
    it against the parent on the rest (grouped by prompt, ``eval_size``); the held-out prompts are neither trained
    nor scored, and nothing is written. TRL trains the round in one go, so ``callbacks`` (pruning) see nothing.
    Returns a :class:`hf_adapt.tune.study.Validation` (its metrics on the main process; empty on the others)."""
    from hf_adapt import outputs
    from hf_adapt.adapters import count_parameters
    from hf_adapt.tune.study import Validation

    with outputs.claimed(cfg.output_dir, cfg.overwrite_output_dir):
        started = time.perf_counter()
        state = _start(cfg)
        plan = _plan_round(cfg, validation=True)
        with _trained(cfg, state, plan) as (trainer, args, _, backbone):
            model = _whole_model(cfg, plan, trainer.accelerator, trainer.accelerator.unwrap_model(trainer.model))
            metrics = {}
            if trainer.accelerator.is_main_process:
                metrics, _ = evaluate_round(cfg, model, backbone.preprocessor.tokenizer, plan.held_out,
                                            plan.judge_name, plan.judge, plan.parent, args)
            trainer.accelerator.wait_for_everyone()
        return Validation({k: v for k, v in metrics.items() if isinstance(v, float)}, count_parameters(model)[0],
                          time.perf_counter() - started)


def main(cfg: FeedbackConfig, search: dict[str, Any] | None = None) -> FeedbackResult:
    """Train the next version on ``cfg.feedback``, score it against the parent on held-out feedback, and write it,
    as the only writer of ``cfg.output_dir`` (see :func:`hf_adapt.outputs.claimed`). ``search``: the
    hyperparameter search that chose ``cfg`` (``hf-adapt tune``), for the card."""
    from hf_adapt import outputs

    with outputs.claimed(cfg.output_dir, cfg.overwrite_output_dir):
        started = time.perf_counter()
        state = _start(cfg)
        plan = _plan_round(cfg)  # everything that can fail on bad input happens before a model loads
        result, accelerator = _train_round(cfg, state, plan, started, search)
        if state.is_main_process and result.gate.get("passed") is False:
            raise ReleaseGateError(f"release gate failed, not pushed: win rate {result.metrics['win_rate']:.4f} "
                                   f"against the parent is below min_win_rate {cfg.min_win_rate:g}. The outputs are "
                                   f"in {cfg.output_dir} ({RESULTS_FILE})")
        result.push = cfg.push_after_run(cfg.output_dir, accelerator)
    return result


def _start(cfg: FeedbackConfig):
    """The launch's processes joined (the main one scores the round, generation included, while the others wait
    in a collective), threads and seed set."""
    from accelerate import PartialState
    from accelerate.utils import set_seed

    from hf_adapt.runtime import set_cpu_threads
    from hf_adapt.speed import require_runtime

    require_runtime(cfg)  # tf32 or liger_kernel on a machine that cannot run them: refused before anything loads
    state = PartialState(cpu=_cpu_ranks(), timeout=datetime.timedelta(seconds=cfg.ddp_timeout))
    if state.num_processes != int(os.environ.get("WORLD_SIZE", "1")):
        raise RuntimeError(f"launched {os.environ['WORLD_SIZE']} processes but Accelerate joined {state.num_processes}")
    set_cpu_threads(cfg.torch_num_threads, state)
    set_seed(cfg.seed)
    if not state.is_main_process:
        logging.getLogger("hf_adapt").setLevel(logging.WARNING)
    return state


@dataclass
class _Round:
    """A round's checked inputs: the model to start from, the feedback in its window, split and converted."""

    parent: Any
    model_block: dict[str, Any]
    base_model: str | None
    window: Any
    records: list[dict[str, Any]]
    train_records: list[dict[str, Any]]
    eval_records: list[dict[str, Any]]
    conversion: Any
    held_out: dict[str, Any]
    judge_name: str
    judge: Any
    summary: dict[str, Any]


def _starting_model(cfg: FeedbackConfig):
    """The parent (``init_from``) if any, the ``model`` block to build on, and the base model's Hub id."""
    from hf_adapt import transfer
    from hf_adapt.feedback.model import check_parent_model
    from hf_adapt.sources import hub_id

    parent = None
    model_block = {"name_or_path": cfg.model_name_or_path, "revision": cfg.model_revision,
                   "trust_remote_code": cfg.trust_remote_code, "max_length": cfg.max_length,
                   "base_model_id": cfg.base_model_id, "quantization": cfg.quantization}
    if cfg.init_from:
        parent = transfer.find_parent(cfg.init_from, cfg.init_from_revision, recipes=("feedback",),
                                      what="a served version to improve")
        check_parent_model(parent.info, get_trainer(cfg.trainer).objective, cfg.trainer, cfg.init_from)
        if cfg.model_name_or_path not in (DEFAULT_POLICY, parent.info["model"]["name_or_path"]):
            raise ConfigError(f"init_from {cfg.init_from!r} was trained on {parent.info['model']['name_or_path']!r}, "
                              f"not model_name_or_path {cfg.model_name_or_path!r}; leave model_name_or_path unset")
        if parent.info["model"].get("trust_remote_code") and not cfg.trust_remote_code:
            raise ConfigError(f"init_from {cfg.init_from!r}: its base model runs code from its repo; pass "
                              "--trust_remote_code true only if you trust that code (a parent cannot turn it on)")
        model_block = {**parent.info["model"], "max_length": cfg.max_length, "trust_remote_code": cfg.trust_remote_code,
                       "quantization": cfg.quantization}
    base_model = model_block.get("base_model_id") or hub_id(model_block["name_or_path"])
    return parent, model_block, base_model


def _plan_round(cfg: FeedbackConfig, validation: bool = False) -> _Round:
    """The round's checked inputs; with ``validation`` (a tuning trial) the held-out prompts are set aside and the
    training prompts split again, into those it trains on and those it is scored on."""
    from hf_adapt.feedback.convert import convert
    from hf_adapt.feedback.inspect import summarize
    from hf_adapt.feedback.log import read_feedback

    parent, model_block, base_model = _starting_model(cfg)
    cfg.check_push(base_model)
    served = set(cfg.feedback_models or []) or {
        name for name in (model_block["name_or_path"], base_model, cfg.hub_model_id, cfg.init_from,
                          parent.info.get("hub_repo") if parent else None) if name}
    log = read_feedback(cfg.feedback, cfg.on_bad_record, cfg.feedback_revision)
    if not log.records:
        raise DataError(f"feedback log {cfg.feedback} holds no records" +
                        (f" ({len(log.bad)} bad records skipped)" if log.bad else ""))
    window = select_window(log, cfg, parent, served)
    if not window.log.records:
        raise DataError(f"no feedback records in the window (since {window.since}, revisions {window.revisions}) of "
                        f"{cfg.feedback}: {window.left_out}")
    records = window.log.records
    train_idx, eval_idx = split_prompts(records, cfg.eval_size, cfg.max_eval_prompts, cfg.seed)
    train_records, eval_records = [records[i] for i in train_idx], [records[i] for i in eval_idx]
    if validation:
        train_idx, eval_idx = split_prompts(train_records, cfg.eval_size, cfg.max_eval_prompts, cfg.seed)
        train_records, eval_records = [train_records[i] for i in train_idx], [train_records[i] for i in eval_idx]
    conversion = convert(train_records, cfg.trainer, include_up=cfg.sft_include_up,
                         max_pairs_per_prompt=cfg.max_pairs_per_prompt)
    check_rows(conversion, cfg, cfg.feedback)
    held_out = held_out_sets(eval_records, cfg)
    judge_name = resolve_judge(cfg)
    if judge_name == "pairs" and not held_out["pairs"]:
        raise DataError(f"the {len(eval_records)} held-out records ({len(held_out['prompts'])} prompts) give no "
                        "preference pairs to score the round on; log pairs, up and down answers to one prompt, or "
                        "corrections, raise eval_size, or judge with a rule (judge: rule:module:function)")
    judge = make_judge(judge_name, cfg)  # a bad rule path or reward model fails now, not after training
    summary = summarize(window.log)
    summary["conflict_examples"] = summary["conflict_examples"][:cfg.card_examples]  # users' text, only if asked
    logger.info("feedback: %d records in the window (%s left out), %d train / %d held-out; %s", len(records),
                window.left_out or "none", len(train_records), len(eval_records), conversion.describe())
    return _Round(parent, model_block, base_model, window, records, train_records, eval_records, conversion,
                  held_out, judge_name, judge, summary)


@contextlib.contextmanager
def _trained(cfg: FeedbackConfig, state, plan: _Round):
    """The round's model trained through TRL: yields the trainer, its TRL config, the training output and the
    backbone; its working folder is removed afterwards."""
    from hf_adapt import preemption
    from hf_adapt.checkpoints import trainer_checkpoints
    from hf_adapt.feedback.model import build_model, check_chat_template

    backbone_model, backbone = build_model(plan.model_block, get_trainer(cfg.trainer).objective, cfg.adapter,
                                           plan.parent.directory if plan.parent else None)
    if cfg.liger_kernel:
        from hf_adapt.speed import check_liger_model

        check_liger_model(backbone_model)  # an architecture Liger has no kernels for: refused before training
    tokenizer = backbone.preprocessor.tokenizer
    check_chat_template(tokenizer, plan.summary["conversational"], plan.model_block["name_or_path"])
    checkpoint_dir, resume = trainer_checkpoints(cfg, state, _fingerprint(plan.records))
    workdir = tempfile.mkdtemp(prefix="hf-adapt-trl-")
    try:
        args = trl_config(cfg, str(checkpoint_dir or workdir), plan.conversion.counts, state.num_processes)
        trainer = make_trainer(cfg, backbone_model, tokenizer, plan.conversion.rows, args)
        check_taken(cfg, trainer)
        with preemption.training():
            train_output = trainer.train(resume_from_checkpoint=resume)
            if preemption.requested():
                kept = (f"its checkpoint is in {checkpoint_dir}; continue with --resume_from_checkpoint latest"
                        if cfg.checkpointing_steps else "checkpointing is off, so the round's training is lost")
                raise preemption.Preempted(f"stopped by SIGTERM at step {trainer.state.global_step}: {kept}; the "
                                           "output directory was not written")
        yield trainer, args, train_output, backbone
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _train_round(cfg: FeedbackConfig, state, plan: _Round, started: float, search=None):
    """Build the model, train it through TRL, score it on the main process and write the outputs there (a sharded
    model through its gathered copy, see :func:`_whole_model`)."""
    from hf_adapt import outputs

    with _trained(cfg, state, plan) as (trainer, args, train_output, backbone):
        accelerator, tokenizer = trainer.accelerator, backbone.preprocessor.tokenizer
        model = _whole_model(cfg, plan, accelerator, accelerator.unwrap_model(trainer.model))
        metrics, examples, gate, staging = {}, [], {}, None
        if accelerator.is_main_process:
            metrics, examples = evaluate_round(cfg, model, tokenizer, plan.held_out, plan.judge_name, plan.judge,
                                               plan.parent, args)
            gate = gate_result(metrics, cfg.min_win_rate)
            staging = outputs.staging_path(cfg.output_dir)
        facts = {"window": plan.window, "conversion": plan.conversion, "summary": plan.summary,
                 "train_records": len(plan.train_records), "eval_records": len(plan.eval_records),
                 "held_out": {k: len(v) for k, v in plan.held_out.items()}, "judge": plan.judge_name,
                 "examples": examples, "gate": gate, "args": args, "parent": plan.parent,
                 "model_block": plan.model_block, "base_model": plan.base_model,
                 "log_history": trainer.state.log_history, "train_seconds": train_output.metrics.get("train_runtime"),
                 "steps": trainer.state.global_step, "search": search}
        try:
            if staging is not None:
                staging.mkdir(parents=True)
            outputs.write_on_main(accelerator, staging, cfg.output_dir, lambda directory: _write_outputs(
                directory, cfg, accelerator, model, tokenizer, backbone, metrics, facts,
                time.perf_counter() - started), overwrite=cfg.overwrite_output_dir)
        except BaseException:
            outputs.discard(staging)
            raise
        accelerator.wait_for_everyone()
    return FeedbackResult(Path(cfg.output_dir), metrics, gate, model, tokenizer), accelerator


def _whole_model(cfg: FeedbackConfig, plan: _Round, accelerator, model):
    """The trained policy whole, for the main process to score and write: ``model`` itself where one process holds
    all its weights (one process, DDP, ZeRO-1/2); under FSDP2 or ZeRO-3, on the main process a fresh copy built as
    the round's model was and given its gathered trained weights (the other processes keep ``model``). Collective.

    Scoring generates answers, and a forward pass of a sharded model is a collective that every process must join
    in step, so the main process cannot score it alone. Running the same generation on every process would repeat
    it N times (or need prompts split and answers gathered, with lengths kept in step), and the parent's adapter,
    loaded beside the trained one to compare them, would sit unsharded inside the sharded modules. One unsharded
    copy on the main process costs one gather of the adapter (not the frozen base) and the memory of one model for
    inference, and what it scores is exactly what it writes and what ``load_policy`` loads."""
    from hf_adapt.artifacts import gathered_state
    from hf_adapt.feedback.model import build_model
    from hf_adapt.outputs import on_main
    from hf_adapt.sharding import is_sharded

    if not is_sharded(accelerator, model):
        return model
    state = gathered_state(accelerator, model, trainable_only=True)
    built = {}

    def build() -> None:  # a failure here reaches every process (on_main), which would otherwise wait for it
        whole, _ = build_model(plan.model_block, get_trainer(cfg.trainer).objective, cfg.adapter,
                               plan.parent.directory if plan.parent else None)
        trainable = {name for name, p in whole.named_parameters() if p.requires_grad}
        if trainable - set(state):  # a trainer that renamed or dropped the adapter: never score the untrained one
            raise RuntimeError(f"the gathered weights lack {len(trainable - set(state))} trained tensors of the "
                               f"policy, e.g. {sorted(trainable - set(state))[:3]}")
        whole.load_state_dict({k: v for k, v in state.items() if k in trainable}, strict=False)
        built["model"] = whole.to(accelerator.device)

    on_main(accelerator, build)
    return built.get("model", model)


def _fingerprint(records: list[dict[str, Any]]) -> str:
    """A sha256 over the records a round trains and scores on: a resumed round must see the same feedback."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(records, sort_keys=True, default=str).encode()).hexdigest()


def _has_accelerator() -> bool:
    import torch

    return torch.accelerator.is_available()


def _cpu_ranks() -> bool:
    """Several ranks on a machine without an accelerator: Accelerate must be told to join them on CPU (gloo),
    or each process trains alone (see hf_adapt.runtime.make_accelerator)."""
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available()


def resolve_judge(cfg: FeedbackConfig) -> str:
    if cfg.judge == "auto":
        return f"rule:{cfg.reward_funcs[0]}" if get_trainer(cfg.trainer).reward_funcs else "pairs"
    return cfg.judge


def held_out_sets(records: list[dict[str, Any]], cfg: FeedbackConfig) -> dict[str, list]:
    """What the round is scored on: held-out pairs (every source), prompts, and completions (for KL drift)."""
    from hf_adapt.feedback.convert import key, to_pairs, to_prompts

    pairs = to_pairs(records).rows
    seen, completions = set(), []
    for record in records:
        for completion in ([record["completion"]] if "completion" in record else []) + (
                [record["correction"]] if record.get("correction") is not None else []):
            ident = (key(record["prompt"]), key(completion))
            if ident not in seen:
                seen.add(ident)
                completions.append({"prompt": record["prompt"], "completion": completion})
    return {"pairs": pairs, "prompts": [row["prompt"] for row in to_prompts(records).rows],
            "completions": completions[:4 * cfg.max_eval_prompts]}


def make_judge(judge_name: str, cfg: FeedbackConfig):
    """The judge of greedy answers a judge name asks for, or None for the pairs judge."""
    from hf_adapt.feedback import evaluate as ev

    if judge_name.startswith("rule:"):
        return ev.rule_judge(judge_name[len("rule:"):])
    if judge_name.startswith("reward_model:"):
        return ev.reward_model_judge(judge_name[len("reward_model:"):], cfg.max_length, cfg.per_device_eval_batch_size)
    return None


def evaluate_round(cfg: FeedbackConfig, model, tokenizer, held_out: dict[str, list], judge_name: str, judge, parent,
                   args) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The round's numbers against its parent, on the held-out prompts (main process only)."""
    from hf_adapt.feedback import evaluate as ev

    if parent is not None:
        model.load_adapter(str(parent.directory), adapter_name=ev.PARENT_ADAPTER)
    model.eval()
    spec = get_trainer(cfg.trainer)
    try:
        scored, examples = spec.scorer()(model, tokenizer, held_out, judge,
                                         beta=args.beta if spec.reference_model else None, max_length=cfg.max_length,
                                         max_new_tokens=cfg.max_new_tokens, batch_size=cfg.per_device_eval_batch_size)
    finally:
        if parent is not None:
            model.delete_adapter(ev.PARENT_ADAPTER)
    metrics: dict[str, Any] = {"judge": judge_name, **scored}
    metrics["win_rate"] = metrics.get("pair_win_rate" if judge_name == "pairs" else "judged_win_rate", math.nan)
    logger.info("held-out: win rate %.4f against the parent (%s)%s", metrics["win_rate"], judge_name,
                f"; preference accuracy {metrics['preference_accuracy_before']:.4f} -> "
                f"{metrics['preference_accuracy']:.4f}" if "preference_accuracy" in metrics else "")
    return metrics, examples


def gate_result(metrics: dict[str, Any], min_win_rate: float | None) -> dict[str, Any]:
    """Whether the round may be pushed: no gate, or a win rate at least ``min_win_rate`` (undefined fails)."""
    win = metrics.get("win_rate", math.nan)
    passed = True if min_win_rate is None else bool(win == win and win >= min_win_rate)
    return {"min_win_rate": min_win_rate, "win_rate": win, "passed": passed}


def _write_outputs(directory: Path, cfg: FeedbackConfig, accelerator, model, tokenizer, backbone, metrics, facts,
                   wall_seconds: float) -> None:
    from hf_adapt import cards
    from hf_adapt.config import save_config
    from hf_adapt.feedback.card import feedback_facts
    from hf_adapt.outputs import write_json
    from hf_adapt.run_record import RunRecord, kind_of, write_record

    model.save_pretrained(str(directory), selected_adapters=["default"])
    tokenizer.save_pretrained(str(directory))
    window, parent = facts["window"], facts["parent"]
    summary = facts["summary"]
    info = {
        "family": "transformers",
        "objective": get_trainer(cfg.trainer).objective,
        "regime": "adapter",
        "trainer": cfg.trainer,
        "model": {**{k: v for k, v in facts["model_block"].items() if v is not None},
                  "revision": facts["model_block"].get("revision") or backbone.info.get("commit")},
        "feedback": {"source": str(cfg.feedback), "sha256": window.log.sha256, "first": summary["first"],
                     "last": summary["last"], "since": window.since, "revisions": window.revisions,
                     "records": len(window.log.records)},
        "init_from": ({"source": cfg.init_from, "revision": cfg.init_from_revision or parent.revision, "commit": parent.revision,
                       "trainer": parent.info.get("trainer"), "feedback_last": (parent.info.get("feedback") or {}).get("last")}
                      if parent else None),
        "hub_repo": cfg.hub_model_id,
        "trained_at": _now(),
    }
    write_record(directory, RunRecord(kind_of("feedback", info["objective"]), "feedback", info))
    write_json(directory / "eval_results.json", metrics)
    write_json(directory / RESULTS_FILE, {
        "gate": facts["gate"], "metrics": metrics, "window": {"left_out": window.left_out, **info["feedback"]},
        "bad_records": [str(b) for b in window.log.bad], "conversion": facts["conversion"].report(),
        "train_records": facts["train_records"], "eval_records": facts["eval_records"], "held_out": facts["held_out"],
        "inspection": summary, "examples": facts["examples"][:cfg.card_examples],
    })
    write_json(directory / "train_results.json", {
        "log_history": facts["log_history"], "steps": facts["steps"], "train_seconds": facts["train_seconds"],
        "wall_seconds": wall_seconds, "num_processes": accelerator.num_processes,
        "trainer_args": {k: v for k, v in facts["args"].to_dict().items() if k in _CARD_ARGS},
    })
    save_config(cfg, directory / "config.yaml")
    cards.write_card(directory, cfg, accelerator, "feedback", feedback_facts(cfg, model, metrics, facts, info))


_CARD_ARGS = ("beta", "loss_type", "desirable_weight", "undesirable_weight", "num_generations", "learning_rate",
              "max_length", "num_train_epochs", "max_steps", "per_device_train_batch_size",
              "gradient_accumulation_steps", "center_rewards_coefficient", "max_completion_length", "temperature")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()
