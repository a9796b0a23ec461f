"""A search space over a recipe's config fields, checked before the first trial.

Written as YAML (a ``search:`` block of the base config, or its own file)::

    learning_rate: {distribution: log_uniform, low: 1.0e-4, high: 1.0e-2}
    head_learning_rate: {distribution: log_uniform, low: 1.0e-3, high: 5.0e-2}
    regime: {distribution: categorical, choices: [adapter, linear_probe]}
    adapter.r: {distribution: int, low: 4, high: 32, step: 4, when: {regime: adapter}}
    adapter.lora_dropout: {distribution: uniform, low: 0.0, high: 0.3, when: {regime: adapter}}
    num_train_epochs: {distribution: int, low: 1, high: 5}

Every key is a field of the recipe's config, or ``<field>.<key>`` for a key of one of its mapping fields:
``adapter.r`` (the peft adapter dict, ``adapter.peft_type`` included), ``trainer_args.beta`` (feedback's TRL
config), ``strategy_options.buffer_size`` (a continual strategy's options). Distributions: ``log_uniform``, ``uniform``, ``int`` (``step``,
``log``) and ``categorical`` (``choices``). ``when: {field: value or [values]}`` samples the
field only where the other fields (sampled, or the base config's) have those values: LoRA fields only
when the regime is ``adapter``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

from hf_adapt.errors import ConfigError

DISTRIBUTIONS = ("log_uniform", "uniform", "int", "categorical")
KEYS = {"distribution", "low", "high", "step", "log", "choices", "when"}


@dataclass(frozen=True)
class Parameter:
    """One searched field."""

    name: str  # a config field, or <mapping field>.<key>
    distribution: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple = ()
    when: dict[str, tuple] = field(default_factory=dict)

    def edges(self) -> list[Any]:
        """The values at the space's edges: what is checked before the first trial."""
        return list(self.choices) if self.distribution == "categorical" else [self.low, self.high]

    def suggest(self, trial) -> Any:
        """The trial's value (an optuna ``Trial``)."""
        if self.distribution == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.distribution == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.distribution == "log_uniform",
                                   step=self.step)

    def applies(self, values: dict[str, Any]) -> bool:
        """Whether the ``when`` condition holds for ``values`` (the sampled values over the base config over the
        config's defaults)."""
        return all(_lookup(values, name) in allowed for name, allowed in self.when.items())


def _lookup(values: dict[str, Any], name: str) -> Any:
    if "." in name:
        mapping, key = name.split(".", 1)
        return (values.get(mapping) or {}).get(key)
    return values.get(name)


def _is_dict(hint) -> bool:
    """Whether a field's type is a mapping (``dict``, ``dict[str, Any]``, ``dict | None``)."""
    return any(h is dict or typing.get_origin(h) is dict for h in (hint, *typing.get_args(hint)))


def _known(name: str, fields: set[str], mappings: set[str]) -> bool:
    """A config field, or ``<mapping field>.<key>``."""
    mapping, _, key = name.partition(".")
    return name in fields or (mapping in mappings and bool(key))


def _parameter(name: str, spec: Any, fields: set[str], mappings: set[str]) -> Parameter:
    where = f"search: {name}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping such as {{distribution: log_uniform, low: 1e-4, high: 1e-2}}, "
                          f"got {spec!r}")
    if not _known(name, fields, mappings):
        raise ConfigError(f"{where}: not a field of the recipe's config (nor <field>.<key> of its mapping fields "
                          f"{sorted(mappings)}); known fields: {sorted(fields)}")
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; a parameter has {sorted(KEYS)}")
    distribution = spec.get("distribution")
    if distribution not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: distribution must be one of {list(DISTRIBUTIONS)}, got {distribution!r}")
    when = spec.get("when") or {}
    if not isinstance(when, dict) or any(not _known(k, fields, mappings) for k in when):
        raise ConfigError(f"{where}: when must map config fields to a value or a list of values, got {when!r}")
    when = {k: tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}
    if distribution == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: categorical needs a non-empty list of choices, got {choices!r}")
        if set(spec) & {"low", "high", "step", "log"}:
            raise ConfigError(f"{where}: categorical takes choices, not low/high/step/log")
        return Parameter(name, distribution, choices=tuple(choices), when=when)
    low, high, step = spec.get("low"), spec.get("high"), spec.get("step")
    if "choices" in spec:
        raise ConfigError(f"{where}: {distribution} takes low and high, not choices")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (low, high)):
        raise ConfigError(f"{where}: {distribution} needs finite numbers low and high, got low={low!r}, high={high!r}")
    if not low < high:
        raise ConfigError(f"{where}: the range is empty (low {low} must be below high {high})")
    if distribution == "log_uniform" and low <= 0:
        raise ConfigError(f"{where}: log_uniform needs low > 0, got {low}")
    if distribution == "int" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"{where}: int needs whole low and high, got {low} and {high}")
    if step is not None and (not isinstance(step, (int, float)) or step <= 0 or step > high - low):
        raise ConfigError(f"{where}: step must be a positive number no larger than high - low, got {step!r}")
    if step is not None and distribution == "log_uniform":
        raise ConfigError(f"{where}: log_uniform takes no step")
    log = spec.get("log", False)
    if not isinstance(log, bool) or (log and distribution != "int"):
        raise ConfigError(f"{where}: log applies to int (true/false); use log_uniform for floats")
    return Parameter(name, distribution, low, high, step, log, when=when)


@dataclass
class SearchSpace:
    """The searched fields, those without a condition first (a condition reads what is sampled before it)."""

    parameters: list[Parameter]
    defaults: dict[str, Any] = field(default_factory=dict)  # the config's defaults, which conditions also read

    @classmethod
    def parse(cls, raw: Any, config_class: type) -> SearchSpace:
        """Check ``raw`` (the YAML mapping) against ``config_class``'s fields: every name, distribution and range."""
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(f"search: expected a non-empty mapping of fields to distributions, got {raw!r}")
        fields = {f.name for f in dataclasses.fields(config_class) if f.init} - {"output_dir"}
        defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                    for f in dataclasses.fields(config_class) if f.init
                    and (f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING)}
        mappings = {name for name, hint in typing.get_type_hints(config_class).items() if name in fields and _is_dict(hint)}
        parameters = [_parameter(str(name), spec, fields, mappings) for name, spec in raw.items()]
        names = {p.name for p in parameters}
        for p in parameters:
            if p.name in p.when:
                raise ConfigError(f"search: {p.name}: a condition on itself")
            if any(other in names and next(q for q in parameters if q.name == other).when for other in p.when):
                raise ConfigError(f"search: {p.name}: conditions may name base fields or unconditioned parameters, "
                                  f"not other conditioned ones ({sorted(p.when)})")
        return cls(sorted(parameters, key=lambda p: bool(p.when)), defaults)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parameters]

    def sample(self, trial, base: dict[str, Any]) -> dict[str, Any]:
        """The trial's config values: ``base`` with each applicable parameter's value (``adapter.r`` into the
        adapter dict)."""
        values = dict(base)
        for parameter in self.parameters:
            if parameter.applies({**self.defaults, **values}):
                values = with_value(values, parameter.name, parameter.suggest(trial))
        return values

    def edge_configs(self, base: dict[str, Any]) -> list[tuple[str, Any, dict[str, Any]]]:
        """``(name, value, values)`` for every edge value of every parameter, each alone over ``base`` (and over the
        values its condition needs): the configs checked before the first trial."""
        out = []
        for parameter in self.parameters:
            start = dict(base)
            for name, allowed in parameter.when.items():
                start = with_value(start, name, allowed[0])
            out += [(parameter.name, value, with_value(start, parameter.name, value)) for value in parameter.edges()]
        return out


def with_value(values: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    """``values`` with field ``name`` (or ``<mapping field>.<key>``) set to ``value``."""
    if "." in name:
        mapping, key = name.split(".", 1)
        return {**values, mapping: {**(values.get(mapping) or {}), key: value}}
    return {**values, name: value}
