"""Transfer study: a grid of arms (regimes, backbones, starting points) x label budgets on one dataset.

Every cell is one ``hf_adapt.recipes.finetune.main`` run in this process, written to
``output_dir/runs/<arm>/<budget>/seed<s>``. The study then writes ``results.csv``,
``results.md``, ``results.json`` and ``transfer_curve.png`` (test metric against the number
of training labels, one line per arm). Shared by ``recipes/transfer_study.py`` and
``hf-adapt transfer_study``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from hf_adapt.config import check_values, config_from_dict, config_to_dict, load_yaml_config
from hf_adapt.errors import ConfigError, DataError, OutputError
from hf_adapt.recipes.finetune import FinetuneConfig

logger = logging.getLogger("hf_adapt.transfer_study")

METRICS = ("accuracy", "macro_f1", "auroc", "log_loss", "ece")
REACH = 0.95  # an arm "reaches" its full-data score at 95 % of it
RECIPE = "transfer_study"
# what the study sets in every cell; an arm or the shared finetune dict may not set them
STUDY_FIELDS = ("output_dir", "overwrite_output_dir", "seed", "train_fraction", "train_samples_per_class")
# what a cell keeps without keep_models: its scores, its config, and the run file that marks it as hf-adapt's
KEEP_FILES = ("eval_results.json", "train_results.json", "config.yaml", "hf_adapt.json")
_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _default_arms() -> list[Any]:
    return ["linear_probe", "adapter", "full"]


def _default_budgets() -> list[Any]:
    return [5, 20, 1.0]


def _default_seeds() -> list[int]:
    return [42]


@dataclass
class TransferStudyConfig:
    """Fine-tune every arm at every label budget on one dataset and compare them: a table, a JSON/CSV of
    every run, and a transfer curve (test metric against training labels).

    With no arguments: linear probe, LoRA and full fine-tuning of the quickstart (MiniLM-L6 on German
    Credit) at 5 and 20 labels per class and on all training rows.
    """

    finetune: dict = field(default_factory=dict, metadata={"help": "FinetuneConfig fields shared by every cell (model, data, epochs, ...); overrides finetune_config. The study sets output_dir, seed and the label budget itself."})
    finetune_config: str | None = field(default=None, metadata={"help": "A finetune YAML config the cells start from (its output_dir and seed are replaced by the study's); the finetune dict overrides it."})
    arms: list = field(default_factory=_default_arms, metadata={"help": "Arms to compare: a regime name (adapter, linear_probe, full, gradual_unfreeze), or a dict with a name plus FinetuneConfig overrides, e.g. {name: scratch_full, regime: full, pretrained: false} or {name: dapt_lora, init_from: outputs/pretrain}."})
    budgets: list = field(default_factory=_default_budgets, metadata={"help": "Label budgets: an int is training rows per class (train_samples_per_class), a float in (0, 1] a share of each class's rows (train_fraction); 1.0 is all the training data. Budgets are nested: smaller ones are subsets of larger ones."})
    metric: Literal["accuracy", "macro_f1", "auroc", "log_loss", "ece"] = field(default="accuracy", metadata={"help": "Test metric for the table, the curve and the labels needed to reach 95 percent of each arm's full-data score."})
    budget_overrides: dict | None = field(default=None, metadata={"help": "FinetuneConfig overrides for the cells of one budget, keyed by budget, e.g. {5: {num_train_epochs: 30}, 1.0: {num_train_epochs: 3}}: few labels usually need more epochs. A field an arm sets may not be set here too."})
    seeds: list = field(default_factory=_default_seeds, metadata={"help": "Seeds; each cell runs once per seed (split, budget draw, init and shuffling) and the table shows mean +- std."})
    output_dir: str = field(default="outputs/transfer_study", metadata={"help": "Where the runs (runs/<arm>/<budget>/seed<s>) and the study's results go."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Rerun into an output_dir that already holds a transfer study (its runs are replaced one by one)."})
    keep_models: bool = field(default=False, metadata={"help": "Keep every cell's model files; by default a cell keeps only eval_results.json, train_results.json, config.yaml and hf_adapt.json once scored."})

    def __post_init__(self):
        if self.finetune_config is not None:  # missing, not a regular file, binary, not YAML, unknown keys: now
            try:
                load_yaml_config(FinetuneConfig, self.finetune_config)
            except ConfigError as err:
                raise ConfigError(f"finetune_config: {err}") from None
        _check_study_fields(check_values(FinetuneConfig, self.finetune, source="finetune"), "finetune")
        self.arms = [_arm(item, i) for i, item in enumerate(self.arms)]
        if not self.arms:
            raise ConfigError("arms: give at least one arm")
        names = [arm["name"] for arm in self.arms]
        if len(set(names)) != len(names):
            raise ConfigError(f"arms: names must be unique, got {names}")
        if not self.budgets:
            raise ConfigError("budgets: give at least one label budget")
        for budget in self.budgets:
            if isinstance(budget, bool) or not isinstance(budget, (int, float)):
                raise ConfigError(f"budgets: {budget!r} is neither rows per class (int) nor a share of the rows (float)")
            if isinstance(budget, int) and budget < 1:
                raise ConfigError(f"budgets: {budget} rows per class; need at least 1")
            if isinstance(budget, float) and not 0 < budget <= 1:
                raise ConfigError(f"budgets: share {budget} must be in (0, 1]; use an int for rows per class")
        if len({budget_name(b) for b in self.budgets}) != len(self.budgets):
            raise ConfigError(f"budgets: each budget once, got {self.budgets}")
        for key, values in (self.budget_overrides or {}).items():
            if str(key) not in {budget_name(b) for b in self.budgets}:
                raise ConfigError(f"budget_overrides: {key!r} is not one of the budgets {self.budgets}")
            source = f"budget_overrides[{key!r}]"
            _check_study_fields(check_values(FinetuneConfig, values, source=source), source)
            for arm in self.arms:
                both = sorted(set(values) & set(arm) - {"name"})
                if both:
                    raise ConfigError(f"{source}: {both} set by arm {arm['name']!r} too; set them in one place")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in self.seeds):
            raise ConfigError(f"seeds: a non-empty list of ints, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: each seed once, got {self.seeds}")
        if self.metric not in METRICS:
            raise ConfigError(f"metric must be one of {list(METRICS)}, got {self.metric!r}")
        plan(self)  # every cell's FinetuneConfig is built now, so a bad override fails before any training


def _arm(item: Any, index: int) -> dict[str, Any]:
    """An arm as ``{name, **FinetuneConfig overrides}``; a bare regime name is ``{name: r, regime: r}``."""
    if isinstance(item, str):
        from hf_adapt.regimes import registered_regimes

        if item not in registered_regimes():
            raise ConfigError(f"arms[{index}]: {item!r} is not a regime ({', '.join(registered_regimes())}); "
                              "for other arms give a dict with a name and FinetuneConfig overrides")
        return {"name": item, "regime": item}
    if not isinstance(item, dict):
        raise ConfigError(f"arms[{index}]: expected a regime name or a dict with a name, got {item!r}")
    name = item.get("name")
    if not isinstance(name, str) or not _ARM_NAME.match(name):
        raise ConfigError(f"arms[{index}]: needs a name of letters, digits, '_', '.' or '-' (it names a folder), "
                          f"got {name!r}")
    overrides = {k: v for k, v in item.items() if k != "name"}
    _check_study_fields(check_values(FinetuneConfig, overrides, source=f"arm {name!r}"), f"arm {name!r}")
    return dict(item)


def _check_study_fields(values: dict[str, Any], source: str) -> None:
    taken = sorted(set(values) & set(STUDY_FIELDS))
    if taken:
        raise ConfigError(f"{source}: {taken} are set by the study for every cell (output_dir, seeds, budgets, "
                          "overwrite_output_dir); remove them here")
    if values.get("push_to_hub"):
        raise ConfigError(f"{source}: push_to_hub would push every cell of the study to one repo; push a run "
                          "you choose afterwards with `hf-adapt push`")


def budget_name(budget: int | float) -> str:
    """The folder and column key of a budget: ``5`` rows per class, ``0.25`` / ``1.0`` a share of the rows."""
    return str(budget)


def budget_label(budget: int | float) -> str:
    """How a budget reads in a table: ``5/class`` or ``25%``."""
    return f"{budget}/class" if isinstance(budget, int) else f"{budget * 100:g}%"


@dataclass
class Cell:
    arm: str
    budget: int | float
    seed: int
    config: FinetuneConfig


def plan(cfg: TransferStudyConfig) -> list[Cell]:
    """Every cell's FinetuneConfig, arms outermost; raises ConfigError naming the arm and budget at fault."""
    base: dict[str, Any] = {}
    if cfg.finetune_config is not None:
        base = load_yaml_config(FinetuneConfig, cfg.finetune_config)
        for name in STUDY_FIELDS:
            base.pop(name, None)  # a shipped finetune config names its own output_dir and seed: the study's win
    base.update(cfg.finetune)
    per_budget = {str(key): values for key, values in (cfg.budget_overrides or {}).items()}
    cells = []
    for arm in cfg.arms:
        overrides = {k: v for k, v in arm.items() if k != "name"}
        for budget in cfg.budgets:
            for seed in cfg.seeds:
                values = {
                    **base, **overrides, **per_budget.get(budget_name(budget), {}), "seed": seed,
                    "output_dir": str(Path(cfg.output_dir) / "runs" / arm["name"] / budget_name(budget) / f"seed{seed}"),
                    "overwrite_output_dir": cfg.overwrite_output_dir,
                    "train_samples_per_class": budget if isinstance(budget, int) else None,
                    "train_fraction": budget if isinstance(budget, float) else None,
                }
                where = f"arm {arm['name']!r}, budget {budget_label(budget)}, seed {seed}"
                try:
                    config = config_from_dict(FinetuneConfig, values, source=where)
                except ConfigError as err:
                    raise ConfigError(err if str(err).startswith(where) else f"{where}: {err}") from None
                cells.append(Cell(arm["name"], budget, seed, config))
    return cells


@dataclass
class TransferStudyResult:
    """What a study produced: one row per cell, the per-arm summary, and where the files are."""

    output_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any]


def main(cfg: TransferStudyConfig) -> TransferStudyResult:
    """Run the study as the only writer of ``cfg.output_dir`` (see :func:`hf_adapt.outputs.claimed`)."""
    from hf_adapt import outputs

    with outputs.claimed(cfg.output_dir, cfg.overwrite_output_dir, check=check_study_dir):
        return _run(cfg)


def _run(cfg: TransferStudyConfig) -> TransferStudyResult:
    from accelerate.state import PartialState

    from hf_adapt.recipes import finetune
    from hf_adapt.runtime import one_process_group

    cells = plan(cfg)
    check_budgets(cells)
    logger.info("transfer study: %d arms x %d budgets x %d seeds = %d runs", len(cfg.arms), len(cfg.budgets),
                len(cfg.seeds), len(cells))
    rows = []
    with one_process_group():  # every process runs every cell, in one process group
        for i, cell in enumerate(cells, 1):
            logger.info("run %d/%d: arm %s, budget %s, seed %d", i, len(cells), cell.arm,
                        budget_label(cell.budget), cell.seed)
            started = time.perf_counter()
            result = finetune.main(cell.config)
            rows.append({
                "arm": cell.arm, "budget": cell.budget, "labels": result.data.origin["splits"]["train"],
                "seed": cell.seed, "metric": cfg.metric, "score": result.test_metrics[cfg.metric],
                **{name: result.test_metrics.get(name) for name in METRICS},
                "train_seconds": result.fit.train_seconds, "wall_seconds": time.perf_counter() - started,
                "output_dir": cell.config.output_dir,
            })
            if not cfg.keep_models and PartialState().is_main_process:
                prune_run(Path(cell.config.output_dir))
        summary = summarise(rows, cfg.metric)
        if PartialState().is_main_process:  # the state the cells' Accelerators joined
            write_results(cfg, cells, rows, summary)
            logger.info("wrote %s", cfg.output_dir)
    return TransferStudyResult(Path(cfg.output_dir), rows, summary)


# ----------------------------------------------------------------------------- checks before any training


def check_study_dir(path: str | Path, overwrite: bool) -> None:
    """Refuse an output_dir holding anything but an earlier transfer study; that one only with ``overwrite``.

    A study that stopped before its results holds only ``runs/`` (finished runs, each an
    hf-adapt output); it counts as an earlier study.
    """
    from hf_adapt.outputs import RUN_FILE, check_output_dir, read_json

    path = Path(path)
    marker = path / RUN_FILE
    if marker.is_file() and read_json(marker).get("recipe") != RECIPE:
        raise OutputError(f"output_dir {path} holds an hf-adapt {read_json(marker).get('recipe')} run, not a "
                          "transfer study; pick another directory")
    if path.is_dir() and not marker.is_file() and [p.name for p in path.iterdir()] == ["runs"]:
        if not overwrite:
            raise OutputError(f"output_dir {path} holds an unfinished transfer study (runs/ without results); "
                              "pick another or pass --overwrite_output_dir")
        return
    check_output_dir(path, overwrite)


def check_budgets(cells: list[Cell]) -> None:
    """Load each distinct data set once with the largest rows-per-class budget: too few rows fail now."""
    from hf_adapt.data import DataSpec, load_labelled

    largest: dict[str, Cell] = {}
    for cell in cells:
        if not isinstance(cell.budget, int):
            continue
        key = repr(DataSpec.from_config(replace(cell.config, train_samples_per_class=None)))
        if key not in largest or cell.budget > largest[key].budget:
            largest[key] = cell
    for cell in largest.values():
        try:
            load_labelled(DataSpec.from_config(cell.config))
        except DataError as err:
            raise DataError(f"budgets: {budget_label(cell.budget)} (arm {cell.arm!r}, seed {cell.seed}): {err}") from err


# ----------------------------------------------------------------------------- results


def reach(points: list[tuple[float, float]], target: float, higher_is_better: bool = True) -> float | None:
    """The fewest labels among ``(labels, score)`` points whose score meets ``target``; None if none does."""
    met = [labels for labels, score in points
           if not math.isnan(score) and (score >= target if higher_is_better else score <= target)]
    return min(met) if met else None


def summarise(rows: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """Mean and std over seeds per arm and budget, and each arm's labels to reach 95 % of its full-data score.

    ``rows`` need ``arm``, ``budget`` (int or float), ``labels``, ``seed``, ``score`` and
    ``train_seconds``; arms and budgets keep the order they first appear in. 95 % of a score is
    ``0.95 x score`` where higher is better and ``score / 0.95`` for log loss and ECE; "full
    data" is the arm's budget with the most training labels.
    """
    from hf_adapt.metrics import LOWER_IS_BETTER

    higher = metric not in LOWER_IS_BETTER
    arms: dict[str, Any] = {}
    for name in dict.fromkeys(r["arm"] for r in rows):
        cells = {}
        for key in dict.fromkeys(budget_name(r["budget"]) for r in rows if r["arm"] == name):
            picked = [r for r in rows if r["arm"] == name and budget_name(r["budget"]) == key]  # 1 is not 1.0
            budget, scores = picked[0]["budget"], [r["score"] for r in picked]
            cells[key] = {
                "budget": budget, "label": budget_label(budget),
                "labels": statistics.mean(r["labels"] for r in picked),
                "mean": statistics.mean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else None,
                "seeds": len(scores), "train_seconds": statistics.mean(r["train_seconds"] for r in picked),
            }
        full = max(cells.values(), key=lambda c: c["labels"])
        target = full["mean"] * REACH if higher else full["mean"] / REACH
        labels = reach([(c["labels"], c["mean"]) for c in cells.values()], target, higher)
        at = next((c for c in cells.values() if c["labels"] == labels), None)
        arms[name] = {"cells": cells, "full_data_score": full["mean"], "target": target,
                      "reach_budget": at["budget"] if at else None, "reach_labels": labels}
    return {"metric": metric, "higher_is_better": higher, "reach_share": REACH,
            "seeds": sorted({r["seed"] for r in rows}), "arms": arms}


def prune_run(directory: Path) -> None:
    """Drop a scored run's model files, keeping ``KEEP_FILES``."""
    for path in directory.iterdir():
        if path.name in KEEP_FILES:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def write_results(cfg: TransferStudyConfig, cells: list[Cell], rows: list[dict[str, Any]],
                  summary: dict[str, Any]) -> None:
    """Write the study's files into a staging folder, then move them into ``output_dir``, the run file last.

    Each file replaces its predecessor atomically (``os.replace``); ``hf_adapt.json`` marks the study
    complete. With overwrite, runs of an earlier grid that this one lacks are removed.
    """
    import os

    from hf_adapt.config import redact, save_config
    from hf_adapt.outputs import RUN_FILE, discard, staging_path, write_json
    from hf_adapt.run_record import RunRecord, write_record

    out = Path(cfg.output_dir)
    staging = staging_path(out / "results")
    staging.mkdir(parents=True)
    try:
        (staging / "results.csv").write_text(results_csv(rows))
        (staging / "results.md").write_text(results_markdown(summary))
        write_json(staging / "results.json", {"summary": summary, "runs": rows,
                                               "config": redact(config_to_dict(cfg))})
        transfer_curve(summary, staging / "transfer_curve.png")
        save_config(cfg, staging / "config.yaml")
        write_record(staging, RunRecord("transfer_study", RECIPE, {
            "metric": cfg.metric, "arms": [a["name"] for a in cfg.arms], "budgets": cfg.budgets, "seeds": cfg.seeds}))
        for name in ("results.csv", "results.md", "results.json", "transfer_curve.png", "config.yaml", RUN_FILE):
            os.replace(staging / name, out / name)
    finally:
        discard(staging)
    _remove_stale_runs(out / "runs", {Path(c.config.output_dir).resolve() for c in cells})


def _remove_stale_runs(runs: Path, current: set[Path]) -> None:
    """Remove hf-adapt runs under ``runs`` that are not cells of this study (an earlier, different grid)."""
    from hf_adapt.outputs import RUN_FILE

    for marker in sorted(runs.glob(f"*/*/*/{RUN_FILE}")):
        if marker.parent.resolve() not in current:
            shutil.rmtree(marker.parent)
    for folder in sorted(runs.glob("*/*"), reverse=True) + sorted(runs.glob("*")):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def results_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _score(cell: dict[str, Any]) -> str:
    if cell["std"] is None:
        return f"{cell['mean']:.3f}"
    return f"{cell['mean']:.3f} ± {cell['std']:.3f}"


def results_markdown(summary: dict[str, Any]) -> str:
    """Rows = arms, columns = label budgets (with the labels they hold), cells = mean (± std over seeds)."""
    metric, arms, seeds = summary["metric"], summary["arms"], summary["seeds"]
    first = next(iter(arms.values()))["cells"]
    columns = sorted(first, key=lambda b: first[b]["labels"])
    header = [f"{first[b]['label']} ({first[b]['labels']:g} labels)" for b in columns]
    share = f"{summary['reach_share']:.0%}"
    lines = [
        f"# Transfer study: test {metric} by label budget", "",
        f"Mean over {len(seeds)} seed(s) {seeds}" + (" ± standard deviation" if len(seeds) > 1 else "")
        + f"; {'higher' if summary['higher_is_better'] else 'lower'} is better. The last column is the smallest budget "
        f"whose mean reaches {share} of the arm's score on the largest budget.", "",
        "| arm | " + " | ".join(header) + f" | labels to reach {share} of full data |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name, arm in arms.items():
        reached = (f"{arm['reach_labels']:g} ({budget_label(arm['reach_budget'])})"
                   if arm["reach_labels"] is not None else "not reached")
        lines.append(f"| {name} | " + " | ".join(_score(arm["cells"][b]) for b in columns) + f" | {reached} |")
    lines += ["", "Mean training seconds per run:", "",
              "| arm | " + " | ".join(first[b]["label"] for b in columns) + " |", "|---|" + "---|" * len(columns)]
    for name, arm in arms.items():
        lines.append(f"| {name} | " + " | ".join(f"{arm['cells'][b]['train_seconds']:.1f}" for b in columns) + " |")
    return "\n".join(lines) + "\n"


def transfer_curve(summary: dict[str, Any], path: str | Path) -> Path:
    """Test metric against training labels (log x axis), one line with markers per arm; error bars = std."""
    from matplotlib.ticker import NullFormatter

    from hf_adapt.figures import new_figure, save_figure

    metric = summary["metric"]
    fig = new_figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    markers = "osD^vP*Xhp"
    for i, (name, arm) in enumerate(summary["arms"].items()):
        cells = sorted(arm["cells"].values(), key=lambda c: c["labels"])
        ax.errorbar([c["labels"] for c in cells], [c["mean"] for c in cells],
                    yerr=[c["std"] or 0.0 for c in cells], marker=markers[i % len(markers)], capsize=3, label=name)
    ax.set_xscale("log")
    ticks = sorted({c["labels"] for arm in summary["arms"].values() for c in arm["cells"].values()})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])  # the budgets' label counts, not powers of ten
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="training labels (log scale)", ylabel=f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    title = f"Transfer curve: test {metric} by number of training labels"
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path, title)
