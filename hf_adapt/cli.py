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


# recipes reached through a command group: ``hf-adapt feedback train``
GROUPED_RECIPES = {"feedback train": ("hf_adapt.recipes.feedback", "FeedbackConfig", "train a new version on a feedback log")}


def _recipe(name: str) -> tuple[str, str, str]:
    return RECIPES.get(name) or GROUPED_RECIPES[name]


def recipe_parser(name: str) -> argparse.ArgumentParser:
    module, cls_name, _ = _recipe(name)
    cls = getattr(importlib.import_module(module), cls_name)
    return make_parser(cls, prog=f"hf-adapt {name}")


def run_recipe(name: str, argv: list[str] | None = None) -> int:
    """Parse ``argv`` for recipe ``name`` and run it; bad input exits 2 with a one-line reason, SIGTERM
    exits 143 (see :mod:`hf_adapt.preemption`)."""
    import logging

    from hf_adapt.preemption import Preempted, handle_sigterm

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    module = importlib.import_module(_recipe(name)[0])
    parser = recipe_parser(name)
    args = parser.parse_args(argv)
    try:
        with handle_sigterm():
            module.main(config_from_namespace(args))
    except HfAdaptError as err:
        print(f"hf-adapt {name}: error: {err}", file=sys.stderr)
        return 2
    except Preempted as stop:
        print(f"hf-adapt {name}: {stop}", file=sys.stderr)
        return stop.code
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
    parser.add_argument("--commit-message", "--commit_message", dest="commit_message",
                        help="the Hub commit's message (default: the recipe, the regime and the test metric)")
    parser.add_argument("--parent", help="org/name[@revision] of the hf-adapt model this version succeeds (card lineage)")
    parser.add_argument("--update-parent", "--update_parent", dest="update_parent", action="store_true",
                        help="point the parent's card at this version (new_version)")
    parser.add_argument("--hub-timeout", "--hub_timeout", dest="hub_timeout", type=float, metavar="SECONDS",
                        help="how long one request waits for the Hub's next bytes before it is retried "
                        "(default: $HF_ADAPT_HUB_TIMEOUT, else 30)")
    parser.add_argument("--hub-deadline", "--hub_deadline", dest="hub_deadline", type=float, metavar="SECONDS",
                        help="give up the whole push after this long, 0 = no limit; raise it for a large upload "
                        "on a slow link (default: $HF_ADAPT_HUB_DEADLINE, else 1800)")
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
        update_parent=args.update_parent, timeout=args.hub_timeout, deadline=args.hub_deadline,
    )
    try:
        result = push_output(args.output_dir, settings)
    except HfAdaptError as err:
        print(f"hf-adapt push: error: {err}", file=sys.stderr)
        return 2
    print(result.pr_url or result.commit_url)
    return 0


def feedback_parser() -> argparse.ArgumentParser:
    from hf_adapt.feedback.trainers import trainer_names

    parser = argparse.ArgumentParser(prog="hf-adapt feedback", description="Learn from user feedback logs.")
    commands = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = commands.add_parser("inspect", help="counts, label balance, duplicates, conflicts and revisions of a log")
    inspect.add_argument("log", help="a .jsonl/.json/.parquet file, a folder of them, or a Hub dataset repo")
    inspect.add_argument("--json", action="store_true", help="print the full summary as JSON")
    convert = commands.add_parser("convert", help="a log as the dataset one TRL trainer reads (or, with --dry_run, "
                                  "only the report of what it would hold)")
    convert.add_argument("log", help="a .jsonl/.json/.parquet file, a folder of them, or a Hub dataset repo")
    convert.add_argument("--to", required=True, choices=[*trainer_names(), "experience"],
                         help="the trainer to convert for; experience: corrected labels as a CSV for hf-adapt continual")
    convert.add_argument("--output", help="where to write the rows (.jsonl; .csv for experience)")
    convert.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true", help="report only, write nothing")
    convert.add_argument("--on_bad_record", "--on-bad-record", dest="on_bad_record", choices=["error", "skip"],
                         default="error")
    convert.add_argument("--include_up", action="store_true", help="sft: also completions voted up")
    convert.add_argument("--max_pairs_per_prompt", type=int)
    commands.add_parser("train", help=GROUPED_RECIPES["feedback train"][2], add_help=False)
    return parser


def feedback(argv: list[str] | None = None) -> int:
    """``hf-adapt feedback inspect|convert|train``."""
    argv = list(argv or [])
    if argv and argv[0] == "train":
        return run_recipe("feedback train", argv[1:])
    args = feedback_parser().parse_args(argv)
    from hf_adapt.feedback.log import read_feedback

    try:
        log = read_feedback(args.log, getattr(args, "on_bad_record", "skip"))
        if args.action == "inspect":
            from hf_adapt.config import to_json
            from hf_adapt.feedback.inspect import format_summary, summarize

            summary = summarize(log)
            print(to_json(summary) if args.json else format_summary(summary))
            return 0
        return _convert(args, log)
    except HfAdaptError as err:
        print(f"hf-adapt feedback {args.action}: error: {err}", file=sys.stderr)
        return 2


def _convert(args: argparse.Namespace, log) -> int:
    from hf_adapt.errors import ConfigError
    from hf_adapt.feedback import convert

    if not args.dry_run and not args.output:
        raise ConfigError("--output is needed to write the rows (or pass --dry_run for the report only)")
    if args.to == "experience":
        if args.dry_run:
            raise ConfigError("--to experience writes a CSV; give --output instead of --dry_run")
        conversion = convert.corrections_to_experience(log.records, args.output)
    else:
        conversion = convert.convert(log.records, args.to, include_up=args.include_up,
                                     max_pairs_per_prompt=args.max_pairs_per_prompt)
        if not args.dry_run:
            convert.write_rows(conversion.rows, args.output)
    print(conversion.describe())
    if args.output and not args.dry_run:
        print(f"wrote {args.output}")
    return 0


def explain_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-adapt explain", description="Explain one prediction of an hf-adapt output: Grad-CAM over an image, "
        "integrated gradients over a text's tokens, summed per column for a table row. Writes a PNG and a JSON.")
    parser.add_argument("output_dir", help="an output directory written by an hf-adapt recipe (or its Hub repo)")
    parser.add_argument("input", help="image models: an image file; table models: a .json file holding one row "
                        "object, or a .csv file (pick the row with --row); text models: a .txt file or the text itself")
    parser.add_argument("--out", help="folder for explanation.png and explanation.json (default: ./explanations/<input stem>/)")
    parser.add_argument("--row", type=int, default=0, help="which row of a CSV (or JSON list) file, from 0 (default 0)")
    parser.add_argument("--target", help="the label to explain (default: the predicted one)")
    parser.add_argument("--steps", type=int, default=50, help="integrated-gradients steps for texts and rows (default 50)")
    return parser


def explain(argv: list[str] | None = None) -> int:
    """``hf-adapt explain OUTPUT_DIR INPUT``: one prediction explained, as a PNG and a JSON."""
    import logging

    from hf_adapt.explain import explain as explain_one

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = explain_parser().parse_args(argv)
    try:
        png, json_path = explain_one(args.output_dir, args.input, out=args.out, row=args.row, target=args.target,
                                     steps=args.steps)
    except HfAdaptError as err:
        print(f"hf-adapt explain: error: {err}", file=sys.stderr)
        return 2
    print(png)
    print(json_path)
    return 0


def serve_parser() -> argparse.ArgumentParser:
    from hf_adapt.serve.config import ServeConfig

    parser = make_parser(ServeConfig, prog="hf-adapt serve")
    parser.add_argument("source", nargs="?", metavar="OUTPUT_DIR | REPO_ID[@revision]",
                        help="the output to serve (the same as --model)")
    return parser


def serve(argv: list[str] | None = None) -> int:
    """``hf-adapt serve OUTPUT_DIR | REPO_ID[@revision]``: predictions or completions, feedback, metrics."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = serve_parser().parse_args(argv)
    source = vars(args).pop("source", None)
    if source is not None:
        if getattr(args, "model", source) != source:
            print(f"hf-adapt serve: error: {source!r} and --model {args.model!r} name two outputs; give one",
                  file=sys.stderr)
            return 2
        args.model = source
    try:
        from hf_adapt.serve.main import check_extra
        from hf_adapt.serve.main import main as serve_main

        check_extra()
        serve_main(config_from_namespace(args))
    except HfAdaptError as err:
        print(f"hf-adapt serve: error: {err}", file=sys.stderr)
        return 2
    return 0


def export_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-adapt export", description="Write a classifier output in a layout other serving stacks load: merged "
        "(the adapter merged into its base, in transformers, sentence-transformers or timm layout) or onnx (checked "
        "against the PyTorch logits with onnxruntime). The folder's README shows how to use it.")
    parser.add_argument("output_dir", help="an output directory written by an hf-adapt recipe (or its Hub repo)")
    parser.add_argument("--format", choices=["merged", "onnx"], default="merged", help="default: merged")
    parser.add_argument("--out", required=True, help="a new (or empty) folder for the export")
    parser.add_argument("--revision", help="branch, tag or commit, for Hub repos")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow a base model whose code lives in its repo")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="onnx: the largest logit difference allowed")
    return parser


def export(argv: list[str] | None = None) -> int:
    """``hf-adapt export OUTPUT_DIR --format merged|onnx --out DIR``."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = export_parser().parse_args(argv)
    try:
        from hf_adapt.export import export as export_output

        out = export_output(args.output_dir, args.out, args.format, revision=args.revision,
                            trust_remote_code=args.trust_remote_code, tolerance=args.tolerance)
    except HfAdaptError as err:
        print(f"hf-adapt export: error: {err}", file=sys.stderr)
        return 2
    print(out)
    return 0


def tune(argv: list[str] | None = None) -> int:
    """``hf-adapt tune --config base.yaml --search space.yaml --n_trials N`` (a recipe of recipes, with its own
    parser: its ``--config`` is the config of the recipe (``--recipe``) the search starts from)."""
    return importlib.import_module("hf_adapt.recipes.tune").run(argv)


# commands that are not recipes: name -> (entry point, one-line help)
COMMANDS = {"push": (push, "publish an output directory to the Hugging Face Hub"),
            "feedback": (feedback, "inspect feedback logs, convert them for TRL, train the next version on them"),
            "explain": (explain, "explain one prediction (Grad-CAM, integrated gradients per token or column)"),
            "export": (export, "write a classifier for other serving stacks: merged (transformers, timm) or onnx"),
            "serve": (serve, "serve an output over HTTP: predictions or OpenAI-style completions, feedback, metrics"),
            "tune": (tune, "search a recipe's settings (finetune, continual, feedback) with Optuna, then retrain the best and test it once")}


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
