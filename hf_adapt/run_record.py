"""``hf_adapt.json``: what an output folder is and how to rebuild its base model. One type, one writer, one reader.

Every loader of an hf-adapt output starts here. The record's ``kind`` says what the folder holds,
and so which loader reads it:

==================== ============================ ==========================================
kind                 written by                   loaded with
==================== ============================ ==========================================
classifier           finetune                     ``hf_adapt.load_adapted``
continual_classifier continual                    ``hf_adapt.load_adapted``
language_model       pretrain (mlm, clm)          ``hf_adapt.lm.load_pretrained_lm``
policy               feedback (sft, dpo, kto ...) ``hf_adapt.feedback.load_policy``
reward_model         feedback (reward)            ``hf_adapt.feedback.load_reward_model``
transfer_study       transfer_study               ``hf_adapt.load_adapted`` on one of its runs
==================== ============================ ==========================================

Format version 2 added ``kind``. A version-1 file (written before) has none; its kind follows from
its ``recipe`` and ``objective``, so every output written by earlier hf-adapt still loads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hf_adapt.errors import ModelError
from hf_adapt.outputs import RUN_FILE, write_json

FORMAT_VERSION = 2

# kind -> (the recipe that writes it, what it is, the loader that reads it)
KINDS: dict[str, tuple[str, str, str]] = {
    "classifier": ("finetune", "a classifier", "hf_adapt.load_adapted"),
    "continual_classifier": ("continual", "a classifier trained on a stream of experiences", "hf_adapt.load_adapted"),
    "language_model": ("pretrain", "a language model",
                       "hf_adapt.lm.load_pretrained_lm (or start a classifier from it with finetune --init_from)"),
    "policy": ("feedback", "a policy", "hf_adapt.feedback.load_policy"),
    "reward_model": ("feedback", "a reward model", "hf_adapt.feedback.load_reward_model"),
    "transfer_study": ("transfer_study", "a study of several runs", "hf_adapt.load_adapted on one of its runs: each "
                       "runs/<arm>/<budget>/<seed>/ folder holds a finetune output"),
}
_HEADER = ("format_version", "kind", "recipe")


@dataclass(frozen=True)
class RunRecord:
    """One output's ``hf_adapt.json``: its ``kind`` and ``recipe``, and the recipe's own ``fields`` (``model``,
    ``regime``, ``data``, ...), written flat beside them."""

    kind: str
    recipe: str
    fields: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown run record kind {self.kind!r}; one of {sorted(KINDS)}")
        clash = set(_HEADER) & set(self.fields)
        if clash:
            raise ValueError(f"run record fields {sorted(clash)} belong to the header")

    @property
    def model(self) -> dict[str, Any]:
        """How to rebuild the base model (``name_or_path``, ``revision``, ...); empty for a study."""
        return self.fields.get("model") or {}

    @property
    def description(self) -> str:
        """What the folder holds, in words ("a dpo policy", "a mlm language model")."""
        detail = {"language_model": self.fields.get("objective"), "policy": self.fields.get("trainer")}.get(self.kind)
        what = KINDS[self.kind][1]
        return f"a {detail} {what.removeprefix('a ')}" if detail else what

    @property
    def loader(self) -> str:
        return KINDS[self.kind][2]

    def as_dict(self) -> dict[str, Any]:
        """The JSON object, header first, in the current format (a record read from an older file gains its kind)."""
        return {"format_version": FORMAT_VERSION, "kind": self.kind, "recipe": self.recipe, **self.fields}

    def expect(self, kinds: tuple[str, ...], directory: Path, wanted: str) -> RunRecord:
        """This record, if its kind is one of ``kinds``; else a ``ModelError`` saying what the folder is, that it is
        not ``wanted`` ("a classifier"), and which loader fits it."""
        if self.kind not in kinds:
            raise ModelError(f"{directory} is a {self.recipe} output ({directory / RUN_FILE} says kind "
                             f"{self.kind!r}): {self.description}, not {wanted}; load it with {self.loader}")
        return self


def kind_of(recipe: str | None, objective: str | None = None) -> str:
    """The kind of what ``recipe`` writes (``objective``: pretrain's or feedback's); for records without one."""
    kinds = {"finetune": "classifier", "continual": "continual_classifier", "pretrain": "language_model",
             "transfer_study": "transfer_study", None: "classifier"}  # the earliest records named no recipe
    if recipe == "feedback":
        return "reward_model" if objective == "reward" else "policy"
    if recipe not in kinds:
        raise ValueError(f"unknown recipe {recipe!r}")
    return kinds[recipe]


def write_record(directory: Path, record: RunRecord) -> None:
    """Write ``record`` as ``directory/hf_adapt.json`` (atomically)."""
    write_json(Path(directory) / RUN_FILE, record.as_dict())


def read_record(directory: str | Path) -> RunRecord:
    """``directory``'s record. Refused, naming the file: a folder without one; a file that is not a JSON object;
    one from a newer hf-adapt; an unknown kind or recipe."""
    directory = Path(directory)
    path = directory / RUN_FILE
    if not path.is_file():
        raise ModelError(f"{directory} is not an hf-adapt output: {RUN_FILE} is missing")
    return parse(read_object(path), path)


def parse(obj: dict[str, Any], path: Path) -> RunRecord:
    """A record from its JSON object (as read from ``path``, named in errors)."""
    version = obj.get("format_version", 1)
    if not isinstance(version, int) or version < 1:
        raise ModelError(f"{path}: format_version must be a whole number >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {version} is newer than this hf-adapt reads ({FORMAT_VERSION}); "
                         "upgrade hf-adapt to load it")
    recipe = obj.get("recipe")
    try:
        kind = obj.get("kind") or kind_of(recipe, obj.get("objective"))
        return RunRecord(kind, recipe or "finetune", {k: v for k, v in obj.items() if k not in _HEADER}, version)
    except ValueError as err:
        raise ModelError(f"{path}: {err}; this hf-adapt cannot load it") from None


def read_object(path: Path) -> dict[str, Any]:
    """A JSON file holding one object; a missing, empty, broken or non-object file is refused, naming it."""
    if not path.is_file():
        raise ModelError(f"{path} is missing: the output is incomplete; copy or download it again")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ModelError(f"{path}: not valid JSON (not utf-8 text: {err})") from err
    except ValueError as err:
        raise ModelError(f"{path}: not valid JSON ({'the file is empty' if not path.stat().st_size else err})") from err
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object, got a JSON {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
