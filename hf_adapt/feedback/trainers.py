"""The TRL trainers a feedback round can run, registered by name; TRL loads only when one runs.

A trainer is one ``register_trainer(TrainerSpec(...))`` line at the end of this file (or such a
call in your own code): where TRL keeps its config and trainer classes, the converter that turns
feedback records into its dataset, what it trains (a policy or a reward model), how a round is
scored against its parent, and the few settings and checks that are its own. The feedback recipe
asks the spec; nothing else branches on a trainer's name.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from hf_adapt.errors import ConfigError, DataError

REWARD = "reward"  # the objective of a reward model; policies are "clm"
CONVERT_OPTIONS = ("include_up", "max_pairs_per_prompt")  # the options a converter may read
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


@dataclass(frozen=True)
class TrainerSpec:
    """One TRL trainer: names of what it needs (``"module:attribute"``, imported when used) and hooks for what
    the recipe does differently for it. Hooks receive the recipe's config (``cfg``)."""

    name: str
    config_class: str  # its TRL config, e.g. "trl:DPOConfig"; trainer_args are checked against its fields
    trainer_class: str  # e.g. "trl:DPOTrainer"
    converter: str  # records -> Conversion, e.g. "hf_adapt.feedback.convert:to_dpo"
    converter_options: tuple[str, ...] = ()  # which of CONVERT_OPTIONS the converter takes
    objective: Literal["clm", "reward"] = "clm"  # a policy (causal LM), or a reward model (one-output classifier)
    reference_model: bool = False  # a frozen reference and a beta (DPO, KTO): held-out reward_margin is beta x change
    reward_funcs: bool = False  # samples and scores its own completions (GRPO): needs reward_funcs, judged by the first
    evaluate: str = "hf_adapt.feedback.evaluate:score_policy"  # how a round is scored against its parent
    defaults: Callable[[Any, dict[str, int], int], dict[str, Any]] | None = None  # (cfg, counts, processes) -> TRL settings; trainer_args win
    trainer_kwargs: Callable[[Any], dict[str, Any]] | None = None  # cfg -> extra arguments of the trainer class
    check_rows: Callable[[Any, Any, str], None] | None = None  # (conversion, cfg, source): refuse what it cannot learn

    def classes(self) -> tuple[type, type]:
        """``(config class, trainer class)``, imported now."""
        return _resolve(self.config_class), _resolve(self.trainer_class)

    def convert(self, records: list[dict[str, Any]], **options: Any):
        """The :class:`~hf_adapt.feedback.convert.Conversion` this trainer trains on; ``options`` it does not take
        are ignored."""
        return _resolve(self.converter)(records, **{k: v for k, v in options.items() if k in self.converter_options})

    def scorer(self) -> Callable:
        """``f(model, tokenizer, held_out, judge, *, beta, max_length, max_new_tokens, batch_size) -> (metrics,
        examples)``: see :mod:`hf_adapt.feedback.evaluate`."""
        return _resolve(self.evaluate)

    def check_config(self, cfg) -> None:
        """The config checks that depend on the trainer (run by the recipe's config, before anything loads)."""
        if self.reward_funcs and not cfg.reward_funcs:
            raise ConfigError(f"trainer {self.name} needs reward_funcs: module:function paths of reward functions")
        if cfg.reward_funcs and not self.reward_funcs:
            raise ConfigError(f"reward_funcs are for trainer {_with_reward_funcs()}, not {self.name}; to score a "
                              "round with a function use judge: rule:module:function")
        if self.objective == REWARD and cfg.judge not in ("auto", "pairs"):
            raise ConfigError("a reward model is scored on held-out pairs: judge must be auto or pairs")


def _resolve(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _with_reward_funcs() -> str:
    return " / ".join(name for name, spec in TRAINERS.items() if spec.reward_funcs) or "none"


TRAINERS: dict[str, TrainerSpec] = {}


def register_trainer(spec: TrainerSpec) -> None:
    """Make ``trainer: spec.name`` available; a malformed spec or a name taken fails here, not mid-run."""
    if not isinstance(spec, TrainerSpec):
        raise TypeError(f"register_trainer takes a TrainerSpec, not {type(spec).__name__}")
    if not _NAME.match(spec.name):
        raise ValueError(f"trainer name {spec.name!r} must match {_NAME.pattern}")
    if spec.name in TRAINERS:
        raise ValueError(f"trainer {spec.name!r} is already registered ({TRAINERS[spec.name].trainer_class})")
    for field in ("config_class", "trainer_class", "converter", "evaluate"):
        if not isinstance(getattr(spec, field), str) or not _PATH.match(getattr(spec, field)):
            raise ValueError(f"trainer {spec.name!r}: {field} {getattr(spec, field)!r} must look like "
                             "'package.module:attribute'")
    if spec.objective not in ("clm", REWARD):
        raise ValueError(f"trainer {spec.name!r}: objective {spec.objective!r} is not 'clm' or {REWARD!r}")
    unknown = sorted(set(spec.converter_options) - set(CONVERT_OPTIONS))
    if unknown:
        raise ValueError(f"trainer {spec.name!r}: converter_options {unknown} are not among {list(CONVERT_OPTIONS)}")
    for hook in ("defaults", "trainer_kwargs", "check_rows"):
        if getattr(spec, hook) is not None and not callable(getattr(spec, hook)):
            raise TypeError(f"trainer {spec.name!r}: {hook} must be callable or None")
    TRAINERS[spec.name] = spec


def trainer_names() -> list[str]:
    return list(TRAINERS)


def get_trainer(name: str) -> TrainerSpec:
    if name not in TRAINERS:
        raise ConfigError(f"trainer {name!r} is not one of {trainer_names()} (add one with "
                          "hf_adapt.feedback.trainers.register_trainer)")
    return TRAINERS[name]


# ----------------------------------------------------------------------------- what single trainers do their own way


def kto_weights(counts: dict[str, int], trainer_args: dict[str, Any]) -> dict[str, float]:
    """KTO's desirable/undesirable weights so that both sides weigh the same in total (TRL asks for a ratio of
    desirable_weight x desirable / (undesirable_weight x undesirable) in [1, 4/3]); the user's win."""
    desirable, undesirable = counts["desirable"], counts["undesirable"]
    if "desirable_weight" in trainer_args or "undesirable_weight" in trainer_args or not desirable or not undesirable:
        return {}
    if desirable >= undesirable:
        return {"desirable_weight": 1.0, "undesirable_weight": round(desirable / undesirable, 4)}
    return {"desirable_weight": round(undesirable / desirable, 4), "undesirable_weight": 1.0}


def _kto_both_sides(conversion, cfg, source: str) -> None:
    """KTO learns nothing useful from thumbs that all point one way, unless the user means it."""
    counts = conversion.counts
    if cfg.allow_single_label or (counts["desirable"] and counts["undesirable"]):
        return
    side = "up" if counts["desirable"] else "down"
    raise DataError(f"feedback {source}: every thumb in the training window is {side} "
                    f"({counts['desirable']} desirable, {counts['undesirable']} undesirable); KTO needs both. "
                    "Pass --allow_single_label true to train on one side anyway")


def _grpo_defaults(cfg, counts: dict[str, int], num_processes: int) -> dict[str, Any]:
    """Completions as long as the judged ones, and a group size that divides the examples of a step."""
    values: dict[str, Any] = {"max_completion_length": cfg.max_new_tokens}
    if "num_generations" not in cfg.trainer_args:
        per_step = cfg.per_device_train_batch_size * num_processes * cfg.gradient_accumulation_steps
        values["num_generations"] = next((g for g in (8, 4, 2) if per_step % g == 0), None)
        if values["num_generations"] is None:
            raise ConfigError(f"grpo compares several completions of each prompt: per_device_train_batch_size x "
                              f"processes x gradient_accumulation_steps ({per_step}) must be even")
    return values


def load_function(path: str, field: str) -> Callable:
    """``module:function`` (or ``module.function``) imported; the module must be importable here."""
    module_name, sep, name = path.partition(":")
    if not sep:
        module_name, _, name = path.rpartition(".")
    try:
        function = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ConfigError(f"{field}: cannot import {path!r} ({type(err).__name__}: {err}); give module:function "
                          "of an importable module") from None
    if not callable(function):
        raise ConfigError(f"{field}: {path!r} is not callable")
    return function


def _grpo_reward_funcs(cfg) -> dict[str, Any]:
    return {"reward_funcs": [load_function(path, "reward_funcs") for path in cfg.reward_funcs]}


_CONVERT = "hf_adapt.feedback.convert"
_PAIRS = ("max_pairs_per_prompt",)
register_trainer(TrainerSpec("sft", "trl:SFTConfig", "trl:SFTTrainer", f"{_CONVERT}:to_sft", ("include_up",)))
register_trainer(TrainerSpec("reward", "trl:RewardConfig", "trl:RewardTrainer", f"{_CONVERT}:to_reward", _PAIRS,
                             objective=REWARD, evaluate="hf_adapt.feedback.evaluate:score_reward_model"))
register_trainer(TrainerSpec("dpo", "trl:DPOConfig", "trl:DPOTrainer", f"{_CONVERT}:to_dpo", _PAIRS,
                             reference_model=True))
register_trainer(TrainerSpec("kto", "trl:KTOConfig", "trl:KTOTrainer", f"{_CONVERT}:to_kto", reference_model=True,
                             defaults=lambda cfg, counts, processes: kto_weights(counts, cfg.trainer_args),
                             check_rows=_kto_both_sides))
register_trainer(TrainerSpec("orpo", "trl.experimental.orpo:ORPOConfig", "trl.experimental.orpo:ORPOTrainer",
                             f"{_CONVERT}:to_dpo", _PAIRS))
register_trainer(TrainerSpec("grpo", "trl:GRPOConfig", "trl:GRPOTrainer", f"{_CONVERT}:to_prompts", reward_funcs=True,
                             defaults=_grpo_defaults, trainer_kwargs=_grpo_reward_funcs))
