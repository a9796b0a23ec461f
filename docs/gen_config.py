"""Write docs/reference/config.md from the config dataclasses' own fields, types, defaults and help, and from
the argparse flags of the commands that have no config dataclass (tune, push, export, explain, feedback inspect/convert).

Run ``python docs/gen_config.py`` after changing a config field; ``tests/docs/test_config_reference.py`` fails
while the page differs from what this writes. ``hf-adapt <recipe> --help`` reads the same help strings
(:func:`hf_adapt.config.make_parser`), so the page, ``--help`` and the code cannot disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reference" / "config.md"
# command -> (module, config class); the order of the page
RECIPES = {
    "hf-adapt finetune": ("hf_adapt.recipes.finetune", "FinetuneConfig"),
    "hf-adapt pretrain": ("hf_adapt.recipes.pretrain", "PretrainConfig"),
    "hf-adapt continual": ("hf_adapt.recipes.continual", "ContinualConfig"),
    "hf-adapt transfer_study": ("hf_adapt.recipes.transfer_study", "TransferStudyConfig"),
    "hf-adapt feedback train": ("hf_adapt.recipes.feedback", "FeedbackConfig"),
    "hf-adapt serve": ("hf_adapt.serve.config", "ServeConfig"),
}


def _default(field: dataclasses.Field) -> object:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _line(field: dataclasses.Field) -> str:
    default = _default(field)
    shown = "required" if default is dataclasses.MISSING else f"default `{default!r}`"
    resume = " *May change on resume.*" if field.metadata.get("resumable") else ""
    return f"- **`{field.name}`** (`{field.type}`, {shown}): {field.metadata.get('help', '')}{resume}"


def _anchor(title: str) -> str:
    return "component-" + title.replace(" ", "-").lower()


def _recipe_section(command: str, cls: type, components: dict[type, None]) -> list[str]:
    from hf_adapt.config import ordered_fields, owner

    doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    out = [f"## `{command}`", "", f"`{cls.__module__}.{cls.__name__}`: {doc}", ""]
    fields = ordered_fields(cls)
    own = [f for f in fields if owner(cls, f.name) is cls]
    used = list(dict.fromkeys(owner(cls, f.name) for f in fields if owner(cls, f.name) is not cls))
    if own:
        out += ["Its own fields:", "", *(_line(f) for f in own), ""]
    if used:
        links = ", ".join(f"[{_title(k)}](#{_anchor(_title(k))})" for k in used)
        out += [f"Components: {links}.", ""]
    changed = []
    for f in fields:
        klass = owner(cls, f.name)
        if klass is not cls:
            original = klass.__dataclass_fields__[f.name]
            if _default(original) != _default(f) or original.metadata.get("help") != f.metadata.get("help"):
                changed.append(_line(f))
    if changed:
        out += ["Component fields this recipe declares again, with its own default or help:", "", *changed, ""]
    components.update(dict.fromkeys(used))
    return out


def _title(klass: type) -> str:
    return vars(klass).get("title") or klass.__name__


def _component_section(klass: type) -> list[str]:
    doc = " ".join((klass.__doc__ or "").strip().split("\n\n")[0].split())
    fields = [f for f in dataclasses.fields(klass) if f.init and f.name in vars(klass).get("__annotations__", {})]
    return [f"### {_title(klass)} {{#{_anchor(_title(klass))}}}", "", f"`{klass.__module__}.{klass.__name__}`: {doc}", "",
            *(_line(f) for f in fields), ""]


def _flags_section(command: str, where: str, parser: argparse.ArgumentParser) -> list[str]:
    """A command whose flags are declared with argparse (not a config dataclass): each flag with its help."""
    out = [f"## `{command}`", "", f"`{where}`: {parser.description or ''}".rstrip(), ""]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        default = "required" if action.required or not action.option_strings else f"default `{action.default!r}`"
        choices = f", one of {list(action.choices)}" if action.choices else ""
        out.append(f"- **`{name}`** ({default}{choices}): {' '.join((action.help or '').split())}")
    return out + [""]


def _command_sections() -> list[str]:
    from hf_adapt import cli
    from hf_adapt.recipes.tune import parser as tune_parser

    feedback = {a.dest: a for a in cli.feedback_parser()._actions if isinstance(a, argparse._SubParsersAction)}
    groups = next(iter(feedback.values())).choices
    return [*_flags_section("hf-adapt tune", "hf_adapt.recipes.tune.parser", tune_parser()),
            *_flags_section("hf-adapt push", "hf_adapt.cli.push_parser", cli.push_parser()),
            *_flags_section("hf-adapt export", "hf_adapt.cli.export_parser", cli.export_parser()),
            *_flags_section("hf-adapt explain", "hf_adapt.cli.explain_parser", cli.explain_parser()),
            *_flags_section("hf-adapt feedback inspect", "hf_adapt.cli.feedback_parser", groups["inspect"]),
            *_flags_section("hf-adapt feedback convert", "hf_adapt.cli.feedback_parser", groups["convert"])]


def render() -> str:
    """The page's text."""
    lines = ["# Configuration reference", "",
             "<!-- generated by `python docs/gen_config.py` from the config dataclasses; do not edit by hand -->", "",
             "Every field of every recipe and of the components they are composed of, with its type, default and "
             "help, as `hf-adapt <recipe> --help` prints them. Values come from the defaults, then `--config "
             "file.yaml`, then flags; keys stay flat (`learning_rate`, never `training.learning_rate`), and an "
             "unknown key is an error. A field marked *May change on resume* may differ when a run resumes from "
             "its checkpoint; any other change is refused. See [Fine-tune](../finetune.md#configure) for how the "
             "parts fit together.", ""]
    components: dict[type, None] = {}
    for command, (module, name) in RECIPES.items():
        lines += _recipe_section(command, getattr(importlib.import_module(module), name), components)
    lines += _command_sections()
    lines += ["## Components", "", "Each component owns its fields, their help and their checks, once; a recipe "
              "lists the components it uses.", ""]
    for klass in components:
        lines += _component_section(klass)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    PAGE.write_text(render())
    print(f"wrote {PAGE.relative_to(ROOT)}")
