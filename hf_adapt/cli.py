"""The ``hf-adapt`` command: one subcommand per recipe, same parser and ``main`` as ``recipes/*.py``."""

from __future__ import annotations

import argparse
import importlib
import sys

from hf_adapt.config import config_from_namespace, make_parser
from hf_adapt.errors import HfAdaptError

# subcommand -> (module with <Name>Config and main, config class name, one-line help)
RECIPES = {
    "finetune": ("hf_adapt.recipes.finetune", "FinetuneConfig", "fine-tune a backbone with an adapter, a linear probe or fully"),
}


def recipe_parser(name: str) -> argparse.ArgumentParser:
    module, cls_name, _ = RECIPES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    return make_parser(cls, prog=f"hf-adapt {name}")


def run_recipe(name: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` for recipe ``name`` and run it; bad input exits 2 with a one-line reason."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    module = importlib.import_module(RECIPES[name][0])
    parser = recipe_parser(name)
    args = parser.parse_args(argv)
    try:
        module.main(config_from_namespace(args))
    except HfAdaptError as err:
        print(f"hf-adapt {name}: error: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hf-adapt", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in RECIPES.items():
        commands.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in RECIPES:
        parser.parse_args(argv or ["--help"])
        return 2
    return run_recipe(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
