"""peft adapters from plain dicts, and the parameter bookkeeping every regime shares.

The regimes themselves (adapter, linear probe, full, gradual unfreezing) live in
:mod:`hf_adapt.regimes`. Adapter settings are a plain dict handed to peft (``peft_type: LORA, r: 8, ...``), so
every peft method and every one of its fields is available without re-declaring them.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from torch import nn

from hf_adapt.backbones import Backbone
from hf_adapt.errors import ConfigError


def _target_mapping(peft_type: str) -> dict[str, Any]:
    from peft.utils import constants

    return getattr(constants, f"TRANSFORMERS_MODELS_TO_{peft_type}_TARGET_MODULES_MAPPING", {})


def _peft_class(adapter: dict[str, Any]) -> tuple[str, type, dict[str, Any]]:
    """The peft type and config class an adapter dict names, and its other settings checked against the class's
    fields: known names, and values of the annotated types (``r: abc`` fails here, not deep in a model build)."""
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftType

    values = dict(adapter)
    peft_type = str(values.pop("peft_type", "")).upper()
    if peft_type not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise ConfigError(
            f"adapter.peft_type {peft_type or None!r} is not a peft method; "
            f"known: {sorted(str(t.value) for t in PeftType)}"
        )
    if peft_type == "ADALORA":  # needs update_and_allocate() each step, which this loop does not call
        raise ConfigError("adapter.peft_type ADALORA is not supported yet; use LORA, DORA (use_dora: true), "
                          "IA3, LOHA or LOKR")
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[peft_type]
    unknown = sorted(set(values) - set(config_cls.__dataclass_fields__))
    if unknown:
        raise ConfigError(f"adapter: {config_cls.__name__} has no field(s) {unknown}")
    hints = typing.get_type_hints(config_cls)
    for key, value in values.items():
        if key in hints and not _matches(value, hints[key]):
            raise ConfigError(f"adapter.{key} must be {_describe(hints[key])}, got {value!r} "
                              f"(peft {config_cls.__name__})")
    return peft_type, config_cls, values


def _matches(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as YAML gives it) fits annotation ``tp``; peft's own classes and enums are left to peft,
    and a Literal only fixes the type (peft documents patterns such as ``pissa_niter_[number of iters]`` in it)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(type(value) is type(choice) for choice in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if (origin or tp) in (list, tuple, set):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if (origin or tp) is dict:
        return isinstance(value, dict) and (not args or all(_matches(k, args[0]) and _matches(v, args[1])
                                                            for k, v in value.items()))
    return True


def _describe(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is typing.Literal:
        return f"one of {list(typing.get_args(tp))}"
    return getattr(tp, "__name__", str(tp)) if typing.get_origin(tp) is None else str(tp).replace("typing.", "")


def check_adapter(adapter: dict[str, Any]) -> None:
    """Check an adapter dict as far as no model is needed: peft type, field names and types, and peft's own
    checks of the config class (run by building it once). Configs call this, so a bad adapter fails at parse time."""
    _, config_cls, values = _peft_class(adapter)
    try:
        config_cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"adapter: invalid {config_cls.__name__} settings: {err}") from err


def make_peft_config(adapter: dict[str, Any], backbone: Backbone):
    """A peft config from a dict, with the head saved beside the adapter and default targets."""
    from peft import PromptLearningConfig

    peft_type, config_cls, values = _peft_class(adapter)
    fields = config_cls.__dataclass_fields__
    is_prompt = issubclass(config_cls, PromptLearningConfig)
    if backbone.peft_task_type and "task_type" not in values:
        values["task_type"] = backbone.peft_task_type
    elif is_prompt:
        raise ConfigError(f"adapter: prompt method {peft_type} needs a transformers backbone"
                          + (" without table_features (use LoRA or another method that adapts layers)"
                             if backbone.info.get("table_features") else ""))
    if "target_modules" in fields and values.get("target_modules") is None and not is_prompt:
        model_type = getattr(getattr(backbone.model, "config", None), "model_type", None)
        if model_type not in _target_mapping(peft_type):
            values["target_modules"] = backbone.target_modules
            if "feedforward_modules" in fields and values.get("feedforward_modules") is None:
                values["feedforward_modules"] = []
    if "modules_to_save" in fields:
        values["modules_to_save"] = sorted(set(values.get("modules_to_save") or []) | set(backbone.head_names))
    try:
        return config_cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"adapter: invalid {config_cls.__name__} settings: {err}") from err


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def freeze_frozen_norm_statistics(model: nn.Module) -> None:
    """Keep running statistics of norm layers whose weights are frozen fixed (eval mode).

    With LoRA or a linear probe on a conv net, BatchNorm would otherwise keep updating
    its running mean and variance: the base weights would silently drift and the saved
    adapter would no longer reproduce the trained model.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            if not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.eval()
