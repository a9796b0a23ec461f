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
    "pretrain": ("hf_adapt.recipes.pretrain", "PretrainConfig", "continue pretraining a text backbone (masked or causal LM), or pretrain on a labelled source set"),
    "continual": ("hf_adapt.recipes.continual", "ContinualConfig", "learn a stream of experiences, measure forgetting, gate the release on it"),
    "transfer_study": ("hf_adapt.recipes.transfer_study", "TransferStudyConfig", "compare arms across label budgets: a table and a transfer curve"),
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


def push_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-adapt push", description="Publish an hf-adapt output directory to the Hub in one commit "
        "(token from HF_TOKEN or `hf auth login`). Rerun the same command to resume a failed push.")
    parser.add_argument("output_dir", help="an output directory written by an hf-adapt recipe")
    parser.add_argument("--repo-id", "--repo_id", dest="repo_id", required=True, help="Hub repo, org/name")
    parser.add_argument("--public", action="store_true", help="create the repo public (default: private)")
    parser.add_argument("--revision", help="branch to push to (created from main if missing)")
    parser.add_argument("--tag", default="auto", help="tag for this version: auto = next free vN (default), none = no tag")
    parser.add_argument("--create-pr", "--create_pr", dest="create_pr", action="store_true",
                        help="open a pull request against main instead of committing to it")
    parser.add_argument("--overwrite-card", "--overwrite_card", dest="overwrite_card", action="store_true",
                        help="replace a README.md that someone edited on the Hub")
    parser.add_argument("--commit-message", "--commit_message", dest="commit_message")
    parser.add_argument("--parent", help="org/name[@revision] of the hf-adapt model this version succeeds (card lineage)")
    parser.add_argument("--update-parent", "--update_parent", dest="update_parent", action="store_true",
                        help="point the parent's card at this version (new_version)")
    return parser


def push(argv: list[str] | None = None) -> int:
    import logging

    from hf_adapt.hub import PushSettings, push_output

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = push_parser().parse_args(argv)
    settings = PushSettings(
        repo_id=args.repo_id, private=not args.public, revision=args.revision,
        tag=None if args.tag.lower() in ("none", "null") else args.tag, create_pr=args.create_pr,
        overwrite_card=args.overwrite_card, commit_message=args.commit_message, parent=args.parent,
        update_parent=args.update_parent,
    )
    try:
        result = push_output(args.output_dir, settings)
    except HfAdaptError as err:
        print(f"hf-adapt push: error: {err}", file=sys.stderr)
        return 2
    print(result.pr_url or result.commit_url)
    return 0


# commands that are not recipes: name -> (entry point, one-line help)
COMMANDS = {"push": (push, "publish an output directory to the Hugging Face Hub")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="hf-adapt", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in RECIPES.items():
        commands.add_parser(name, help=help_text, add_help=False)
    for name, (_, help_text) in COMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]][0](argv[1:])
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in RECIPES:
        parser.parse_args(argv or ["--help"])
        return 2
    return run_recipe(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
