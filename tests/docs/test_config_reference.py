"""The configuration reference (docs/reference/config.md) is generated from the config dataclasses: it must be what
``python docs/gen_config.py`` writes now, so a field added, renamed or re-documented cannot leave the page behind."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config", ROOT / "docs" / "gen_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_config_reference_is_what_the_code_says():
    gen = _generator()
    assert gen.PAGE.read_text() == gen.render(), "docs/reference/config.md is stale: run python docs/gen_config.py"


def test_every_field_of_every_recipe_is_on_the_page():
    gen = _generator()
    page = gen.PAGE.read_text()
    for module, name in gen.RECIPES.values():
        cls = getattr(importlib.import_module(module), name)
        for field in dataclasses.fields(cls):
            if field.init:
                assert f"**`{field.name}`**" in page, f"{name}.{field.name} is missing from the reference"
                assert field.metadata.get("help"), f"{name}.{field.name} has no help: --help and the docs need one"

