"""Does ``hf-adapt tune`` find better settings than the shipped ones, and what does pruning save? Prints markdown
tables; always exits 0.

What runs
---------
Everything goes through the real commands' code: ``hf_adapt.recipes.tune.tune`` (Optuna, sqlite study in the work
dir) and ``hf_adapt.recipes.finetune.main``, in-process, offline, one torch thread.

- **credit**: the shipped quickstart (``recipes/configs/credit_minilm_lora.yaml``: MiniLM-L6 + LoRA on German
  Credit) trained as shipped, against ``hf-adapt tune`` over ``recipes/configs/tune_credit.yaml`` (learning
  rates, epochs 1-4, LoRA r and dropout, ``table_features: none | auto``) with a wall-time budget
  (``--budget_minutes``, TPE, median pruning, seed 42), whose best config is retrained and tested once. Both
  are scored on the same validation and test splits (same seed), with 95 % bootstrap intervals on test.
  Targets: tuned at or above shipped on validation, and not worse on test beyond the interval.
- **pruning**: the same search run twice with the random sampler and the same seed (so both draw the same
  configs in the same order, whatever is pruned): median pruning against none, ``--pruning_trials`` trials
  of 4 epochs each. Reported: the summed trial time and the best validation value of each. Target: pruning
  saves at least 30 % of the trial time at the same best value.
- **mnist**: ``recipes/configs/mnist_efficientnet_lora.yaml`` as shipped against tune over its learning rates
  and epochs at the same budget (``--mnist_budget_minutes``).

Files: the studies, trial outputs and retrained models go to ``--work_dir`` (default
``outputs/benchmarks/tune``, git-ignored); ``summary_<part>.md`` and ``.json`` to ``--results_dir`` (default
``benchmarks/results/tune``).

Usage::

    python benchmarks/tune.py --part credit --budget_minutes 15
    python benchmarks/tune.py --part pruning --pruning_trials 8
    python benchmarks/tune.py --part mnist --mnist_budget_minutes 20
    python benchmarks/tune.py --quick                  # smoke run: every part on a few rows, ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, code_version, offline_checkout  # noqa: E402

offline_checkout()

CREDIT = REPO / "recipes" / "configs" / "credit_minilm_lora.yaml"
CREDIT_SPACE = REPO / "recipes" / "configs" / "tune_credit.yaml"
MNIST = REPO / "recipes" / "configs" / "mnist_efficientnet_lora.yaml"
MNIST_SPACE = {"learning_rate": {"distribution": "log_uniform", "low": 1.0e-3, "high": 1.0e-2},
               "head_learning_rate": {"distribution": "log_uniform", "low": 3.0e-3, "high": 3.0e-2},
               "num_train_epochs": {"distribution": "int", "low": 2, "high": 4}}
PRUNING_SPACE = {"learning_rate": {"distribution": "log_uniform", "low": 1.0e-4, "high": 1.0e-2},
                 "head_learning_rate": {"distribution": "log_uniform", "low": 1.0e-4, "high": 5.0e-2}}
QUICK = {"max_train_samples": 120, "max_eval_samples": 60}


def base_config(path: Path, work: Path, name: str, quick: bool, threads: int, **values) -> Path:
    """The shipped config with the benchmark's runtime settings, as a YAML file tune and finetune both read."""
    import yaml

    config = yaml.safe_load(path.read_text())
    config.update(torch_num_threads=threads, report_to="none", overwrite_output_dir=True, seed=42,
                  output_dir=str(work / name / "shipped"), **(QUICK if quick else {}), **values)
    out = work / name / "base.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def shipped_run(config: Path) -> dict:
    """The shipped config trained as is: best-epoch validation metric, test metrics and intervals, wall time."""
    import yaml

    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.finetune import FinetuneConfig, main

    started = time.perf_counter()
    result = main(config_from_dict(FinetuneConfig, yaml.safe_load(config.read_text())))
    out = result.output_dir
    return {"validation": result.fit.best_metrics, "test": result.test_metrics,
            "intervals": json.loads((out / "eval_intervals.json").read_text())["intervals"],
            "seconds": time.perf_counter() - started}


def tuned_run(config: Path, space, out: Path, budget_s: float | None, **settings) -> dict:
    """``hf-adapt tune`` on ``config`` over ``space`` (a file, or a dict written to one)."""
    import yaml

    from hf_adapt.recipes.tune import TuneSettings, tune

    if isinstance(space, dict):
        path = out.parent / f"{out.name}_space.yaml"
        path.write_text(yaml.safe_dump(space))
        space = path
    started = time.perf_counter()
    facts = tune(TuneSettings(config=str(config), search=str(space), timeout=budget_s, output_dir=str(out),
                              seed=42, **settings))
    facts["seconds_total"] = time.perf_counter() - started
    if facts.get("output_dir"):
        facts["intervals"] = json.loads((Path(facts["output_dir"]) / "eval_intervals.json").read_text())["intervals"]
    return facts


def ci(value: float, interval) -> str:
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def compare(name: str, shipped: dict, tuned: dict, metric: str) -> str:
    val_shipped, val_tuned = shipped["validation"][metric], tuned["best_values"][0]
    test_shipped, test_tuned = shipped["test"][metric], tuned["test_metrics"][metric]
    low = shipped["intervals"][metric][0]
    lines = [f"## {name}: tuned against shipped", "",
             f"Search: {tuned['trials']}, sampler {tuned['sampler']}, pruner {tuned['pruner']}, "
             f"{tuned['seconds'] / 60:.1f} min of trials (budget), {tuned['seconds_total'] / 60:.1f} min with the "
             f"retrain; best trial {tuned['best_trial']}: {tuned['best_params']}.", "",
             f"| config | validation {metric} | test {metric} [95 % CI] | wall time |", "|---|---|---|---|",
             f"| shipped | {val_shipped:.4f} | {ci(test_shipped, shipped['intervals'].get(metric))} | "
             f"{shipped['seconds'] / 60:.1f} min |",
             f"| tuned (best trial, retrained) | {val_tuned:.4f} | {ci(test_tuned, tuned['intervals'].get(metric))} | "
             f"{tuned['seconds_total'] / 60:.1f} min (search + retrain) |", "",
             f"Tuned at or above shipped on validation: **{'yes' if val_tuned >= val_shipped else 'no'}**; "
             f"tuned test {metric} not below the shipped interval's lower end ({low:.3f}): "
             f"**{'yes' if test_tuned >= low else 'no'}**.", ""]
    return "\n".join(lines)


def run_credit(args, work: Path) -> tuple[str, dict]:
    config = base_config(CREDIT, work, "credit", args.quick, args.torch_num_threads)
    shipped = shipped_run(config)
    tuned = tuned_run(config, CREDIT_SPACE, work / "credit" / "tuned", args.budget_minutes * 60)
    facts = {"shipped": shipped, "tuned": tuned}
    return compare("German Credit (the quickstart)", shipped, tuned, "auroc"), facts


def run_mnist(args, work: Path) -> tuple[str, dict]:
    config = base_config(MNIST, work, "mnist", args.quick, args.torch_num_threads)
    shipped = shipped_run(config)
    tuned = tuned_run(config, MNIST_SPACE, work / "mnist" / "tuned", args.mnist_budget_minutes * 60)
    metric = shipped["validation"].get("metric", "accuracy")
    return compare("MNIST-5k (EfficientNet-Lite0 + LoRA)", shipped, tuned, "accuracy"), {
        "shipped": shipped, "tuned": tuned, "metric": metric}


def run_pruning(args, work: Path) -> tuple[str, dict]:
    import optuna

    config = base_config(CREDIT, work, "pruning", args.quick, args.torch_num_threads, num_train_epochs=4)
    runs = {}
    for pruner in ("none", "median"):
        out = work / "pruning" / pruner
        facts = tuned_run(config, PRUNING_SPACE, out, None, n_trials=args.pruning_trials, sampler="random",
                          pruner=pruner, retrain=False)
        study = optuna.load_study(study_name="hf-adapt", storage=f"sqlite:///{(out / 'study.db').absolute()}")
        trials = [t for t in study.trials if t.state.is_finished()]
        runs[pruner] = {"trial_seconds": sum(t.duration.total_seconds() for t in trials),
                        "best": max(t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
                        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
                        "epochs": [len(t.intermediate_values) for t in trials],
                        "params": [t.params for t in trials], "wall": facts.get("seconds_total")}
    saved = 1 - runs["median"]["trial_seconds"] / runs["none"]["trial_seconds"]
    same = abs(runs["median"]["best"] - runs["none"]["best"]) < 1e-9
    lines = ["## Pruning: the same trials with and without the median pruner", "",
             f"{args.pruning_trials} trials of the quickstart at 4 epochs, learning rates drawn by the random sampler "
             "(seed 42: the same configs in the same order in both runs).", "",
             "| pruner | trials pruned | epochs run per trial | summed trial time | best validation AUROC |",
             "|---|---|---|---|---|"]
    for pruner, run in runs.items():
        lines.append(f"| {pruner} | {run['pruned']} | {run['epochs']} | {run['trial_seconds'] / 60:.1f} min | "
                     f"{run['best']:.4f} |")
    lines += ["", f"Pruning saved **{100 * saved:.0f} %** of the trial time; the best value is "
              f"{'the same' if same else 'different'} (target: >= 30 % saved at the same best value: "
              f"**{'met' if saved >= 0.3 and same else 'not met'}**).", ""]
    return "\n".join(lines), {"runs": runs, "saved": saved, "same_best": same}


PARTS = {"credit": run_credit, "pruning": run_pruning, "mnist": run_mnist}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("all", *PARTS), default="all")
    parser.add_argument("--quick", action="store_true", help="smoke run: few rows, short budgets")
    parser.add_argument("--budget_minutes", type=float, default=15.0, help="credit: the search's wall-time budget")
    parser.add_argument("--mnist_budget_minutes", type=float, default=20.0)
    parser.add_argument("--pruning_trials", type=int, default=8)
    parser.add_argument("--torch_num_threads", type=int, default=1)
    parser.add_argument("--work_dir", default=str(REPO / "outputs" / "benchmarks" / "tune"))
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results" / "tune"))
    args = parser.parse_args(argv)
    if args.quick:
        args.budget_minutes, args.mnist_budget_minutes, args.pruning_trials = 1.0, 1.0, 4
    import logging

    import transformers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    work, results = Path(args.work_dir) / ("quick" if args.quick else "full"), Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    version, machine = code_version(), {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                                        "load_average": list(os.getloadavg())}
    for name, part in PARTS.items():
        if args.part not in ("all", name):
            continue
        started = time.perf_counter()
        try:
            report, facts = part(args, work)
        except Exception as err:  # a benchmark reports; it does not fail a build
            traceback.print_exc()
            report, facts = f"## {name}\n\nfailed: {type(err).__name__}: {err}\n", {"error": str(err)}
        header = (f"# hf-adapt tune benchmark: {name}{' (quick)' if args.quick else ''}\n\n- {version}\n- Python "
                  f"{machine['python']}, {machine['cpu_count']} CPU cores, load average at start "
                  f"{machine['load_average'][0]:.2f}; torch threads {args.torch_num_threads}\n- part wall time "
                  f"{(time.perf_counter() - started) / 60:.1f} min\n\n")
        print(header + report)
        stem = f"summary_{name}{'_quick' if args.quick else ''}"
        (results / f"{stem}.md").write_text(header + report)
        (results / f"{stem}.json").write_text(json.dumps({"code": version, "machine": machine, "args": vars(args),
                                                          **facts}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
