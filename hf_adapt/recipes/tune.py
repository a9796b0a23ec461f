"""``hf-adapt tune``: search a recipe's settings with Optuna, then retrain the best and test it once.

    hf-adapt tune --config base.yaml --search space.yaml --n_trials 20 --output_dir outputs/tune
    hf-adapt tune --recipe continual --config stream.yaml --search space.yaml --n_trials 10
    hf-adapt tune --config base.yaml --storage postgresql://tuner@db/hf_adapt --n_trials 100   # on every worker

Each trial is the recipe's ``validate``: the recipe trained without its test data, scored on validation data
(finetune: its validation split; continual: every experience's validation rows after the whole stream;
feedback: a validation share of the training prompts, the held-out report prompts untouched). The search space
(:mod:`hf_adapt.tune.space`) sets some of its fields over the base config, pruning stops a trial whose
validation metric falls behind, a failed trial records its error and the search goes on. Afterwards the best
trial's config is written as ``best_config.yaml`` (``hf-adapt <recipe> --config`` reruns it), retrained by the
recipe's ``main`` into ``best/`` (its one test evaluation, with the search in its card), and the trials go to
``trials.csv``, ``figures/`` and ``tune_results.json``.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_adapt.errors import ConfigError

logger = logging.getLogger("hf_adapt.tune")

TRIAL_VALUES = {"overwrite_output_dir": True, "push_to_hub": False, "report_to": "none", "card_examples": 0,
                "checkpointing_steps": None}  # a trial writes nothing and publishes nothing (fields its recipe has)
# the recipes a search runs: module (with validate, main and tune_objectives) and config class
RECIPES = {"finetune": ("hf_adapt.recipes.finetune", "FinetuneConfig"),
           "continual": ("hf_adapt.recipes.continual", "ContinualConfig"),
           "feedback": ("hf_adapt.recipes.feedback", "FeedbackConfig")}


@dataclass
class TuneSettings:
    config: str
    recipe: str = "finetune"
    search: str | None = None
    n_trials: int | None = None
    timeout: float | None = None
    storage: str | None = None
    study_name: str = "hf-adapt"
    sampler: str = "tpe"
    pruner: str = "median"
    objectives: str | None = None  # comma list; default the base config's metric_for_best_model
    output_dir: str = "outputs/tune"
    retrain: bool = True
    seed: int | None = None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hf-adapt tune", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="the recipe's config the search starts from (YAML); a search: "
                   "block in it is the search space")
    p.add_argument("--recipe", default="finetune", choices=sorted(RECIPES), help="the recipe each trial runs")
    p.add_argument("--search", help="the search space (YAML), instead of or over the config's search: block")
    p.add_argument("--n_trials", type=int, help="trials the study should hold when done (all workers and earlier "
                   "runs counted; default 20 without --timeout)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///<output_dir>/study.db); a PostgreSQL "
                   "URL shares one study among workers")
    p.add_argument("--study_name", default="hf-adapt", help="the study's name in the storage; workers that share a "
                   "study use the same name")
    p.add_argument("--sampler", default="tpe", help="tpe, random, cmaes, qmc, gp or nsga2")
    p.add_argument("--pruner", default="median", help="median, hyperband or none")
    p.add_argument("--objectives", help="comma list, the first a validation metric (default: finetune: the "
                   "config's metric_for_best_model; continual: continual_average; feedback: win_rate), then e.g. "
                   "trainable_parameters or seconds (multi-objective)")
    p.add_argument("--output_dir", default="outputs/tune", help="where study.db (the default storage), trials.csv, "
                   "figures/, best_config.yaml, best/ and tune_results.json go")
    p.add_argument("--retrain", default="true", choices=["true", "false"],
                   help="retrain the best trial's config and test it (false on all but one of several workers)")
    p.add_argument("--seed", type=int, help="the sampler's seed (default: the config's seed)")
    return p


def run(argv: list[str] | None = None) -> int:
    """The ``hf-adapt tune`` command; bad input exits 2 with a one-line reason."""
    import sys

    from hf_adapt.errors import HfAdaptError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        tune(TuneSettings(**{**vars(args), "retrain": args.retrain == "true"}))
    except HfAdaptError as err:
        print(f"hf-adapt tune: error: {err}", file=sys.stderr)
        return 2
    return 0


@dataclass
class _Plan:
    """A search, checked before any trial: the recipe, the base config values, the space, the objectives, where it
    lives."""

    recipe: str
    base: dict[str, Any]
    space: Any  # hf_adapt.tune.space.SearchSpace
    raw_space: dict[str, Any]
    objectives: list[str]
    directions: list[str]
    output_dir: Path
    storage: str
    prunes: bool = True  # single objective and a pruner: epochs are reported

    @property
    def module(self):
        import importlib

        return importlib.import_module(RECIPES[self.recipe][0])

    @property
    def config_class(self) -> type:
        return getattr(self.module, RECIPES[self.recipe][1])

    def config(self, values: dict[str, Any], source: str, trial: bool = False):
        """The recipe's config from ``values`` (a trial's: writing and publishing nothing)."""
        import dataclasses

        from hf_adapt.config import config_from_dict

        if trial:
            fields = {f.name for f in dataclasses.fields(self.config_class)}
            values = {**values, **{k: v for k, v in TRIAL_VALUES.items() if k in fields}}
        return config_from_dict(self.config_class, values, source=source)


def _read_yaml(path: str, what: str) -> Any:
    """A YAML file's contents; unreadable or invalid YAML is refused, naming the file."""
    import yaml

    from hf_adapt.config import read_config_text

    try:
        return yaml.safe_load(read_config_text(path))
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path}: not valid YAML: {str(err).splitlines()[0]}") from None


def _read_search(settings: TuneSettings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The base config's values and the raw search space (its ``search:`` block, then ``--search`` over it)."""
    base = _read_yaml(settings.config, "--config") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"--config {settings.config}: expected a mapping of finetune fields")
    raw = base.pop("search", None) or {}
    if settings.search:
        extra = _read_yaml(settings.search, "--search") or {}
        extra = extra.get("search", extra) if isinstance(extra, dict) else extra
        if not isinstance(extra, dict) or not isinstance(raw, dict):
            raise ConfigError(f"the search space must be a mapping of fields to distributions "
                              f"({settings.search if not isinstance(extra, dict) else settings.config})")
        raw = {**raw, **extra}
    if not raw:
        raise ConfigError(f"no search space: give --search space.yaml, or a search: block in {settings.config}")
    return base, raw


def plan(settings: TuneSettings) -> _Plan:
    """Read and check the base config and the space: every field, range and edge value, before the first trial."""
    import importlib.util

    from hf_adapt.config import check_values
    from hf_adapt.tune.space import SearchSpace

    if importlib.util.find_spec("optuna") is None:
        raise ConfigError("hf-adapt tune needs Optuna: pip install 'hf-adapt[tune]'")
    if settings.recipe not in RECIPES:
        raise ConfigError(f"recipe must be one of {sorted(RECIPES)}, got {settings.recipe!r}")
    base, raw = _read_search(settings)
    checked = _Plan(settings.recipe, base, None, raw, [], [], Path(settings.output_dir),
                    settings.storage or f"sqlite:///{(Path(settings.output_dir) / 'study.db').absolute()}")
    check_values(checked.config_class, base, source=settings.config)
    cfg = checked.config(base, settings.config)
    checked.space = SearchSpace.parse(raw, checked.config_class)
    for mapping in {name.split(".", 1)[0] for name in checked.space.names if "." in name} - set(base):
        base[mapping] = checked.space.defaults[mapping]
    for name, value, values in checked.space.edge_configs(base):
        try:
            checked.config(values, "search", trial=True)
        except ConfigError as err:
            raise ConfigError(f"search: {name} = {value!r} gives a config the {settings.recipe} recipe refuses: "
                              f"{err}") from None
    _choose_objectives(checked, settings, cfg)
    if settings.n_trials is not None and settings.n_trials < 0 or settings.timeout is not None and settings.timeout <= 0:
        raise ConfigError("n_trials must be >= 0 and timeout > 0")
    return checked


def _choose_objectives(checked: _Plan, settings: TuneSettings, cfg) -> None:
    """The objectives (default: the recipe's first validation metric) and their directions, checked; a finetune
    or continual trial keeps the epoch that is best on the first objective when it is a metric the loop reports."""
    import typing

    from hf_adapt.tune.study import COSTS, check_choices

    metrics = checked.module.tune_objectives(cfg)
    objectives = [o.strip() for o in settings.objectives.split(",")] if settings.objectives else [next(iter(metrics))]
    check_choices(settings.sampler, settings.pruner, objectives, metrics)
    hints = typing.get_type_hints(checked.config_class)
    if objectives[0] in typing.get_args(hints.get("metric_for_best_model")):
        checked.base["metric_for_best_model"] = objectives[0]
    checked.objectives = objectives
    checked.directions = [{**metrics, **COSTS}[o] for o in objectives]
    checked.prunes = len(objectives) == 1 and settings.pruner != "none"


def together(state, work):
    """``work()`` on the main process; every process returns its result, or raises its error, so none is left
    waiting for a broadcast that never comes."""
    box: list[Any] = [None]
    if state.is_main_process:
        try:
            box = [("ok", work())]
        except Exception as err:  # noqa: BLE001 - handed to every process, then raised
            box = [("error", err)]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(box)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def tune(settings: TuneSettings) -> dict[str, Any]:
    """Run the search ``settings`` describe; returns what ``tune_results.json`` holds (on the main process).

    Under ``accelerate launch`` with several processes the main process draws each trial and shares it; every
    process trains it (one process group for all the runs) and the retrain."""
    from hf_adapt.runtime import make_accelerator, one_process_group
    from hf_adapt.tune.study import make_study, storage_label

    checked = plan(settings)
    seed = settings.seed if settings.seed is not None else checked.base.get("seed", 42)

    def open_study():
        checked.output_dir.mkdir(parents=True, exist_ok=True)
        study = make_study(checked.storage, settings.study_name, settings.sampler, settings.pruner,
                           checked.directions, seed)
        _check_same_search(study, checked)
        logger.info("study %r in %s: %d trial(s) so far; objectives %s", settings.study_name,
                    storage_label(checked.storage), len(study.trials), checked.objectives)
        return study

    with one_process_group():
        state = make_accelerator("no", 1, "none").state  # joins the processes (gloo on CPU) before the first trial
        study = together(state, open_study)  # the main process's study; the others need none
        started = time.monotonic()
        if state.is_main_process:
            _optimize(study, checked, settings, state)
        else:
            _follow(checked)
        if not settings.retrain:
            return {}
        return _finish(study, checked, settings, time.monotonic() - started, state)


def _check_same_search(study, checked: _Plan) -> None:
    """A study resumed (or shared) must be the same search: the same base config, space and objectives."""
    import json

    search = {"base": checked.base, "space": checked.raw_space, "objectives": checked.objectives}
    if checked.recipe != "finetune":  # studies made before --recipe existed stay resumable
        search["recipe"] = checked.recipe
    fingerprint = json.dumps(search, sort_keys=True, default=str)
    recorded = study.user_attrs.get("search")
    if recorded is None:
        study.set_user_attr("search", fingerprint)
    elif recorded != fingerprint:
        raise ConfigError(f"study {study.study_name!r} holds another search (recipe, base config, space or "
                          "objectives differ); resume it with the same --recipe, --config, --search and --objectives, "
                          "or give a new --study_name or --output_dir")


def _trial(values: dict[str, Any], checked: _Plan, number: int, trial=None) -> list[float]:
    """One trial: the recipe's ``validate`` with ``values`` (no test data); the objectives' values."""
    import shutil

    from hf_adapt.tune.study import Pruning

    directory = checked.output_dir / "trials" / f"trial-{number}"
    cfg = checked.config({**values, "output_dir": str(directory)}, "trial", trial=True)
    try:
        result = checked.module.validate(cfg, [Pruning(trial, checked.objectives[0], checked.prunes)])
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # a trial leaves its numbers in the study, no files
    return result.values(checked.objectives)


def _optimize(study, checked: _Plan, settings: TuneSettings, state) -> None:
    """Trials until the study holds ``n_trials`` finished ones or ``timeout`` passes (main process)."""
    import optuna
    from optuna.study import MaxTrialsCallback

    from hf_adapt.tune.study import Progress

    progress = Progress(settings.n_trials, settings.timeout, checked.objectives[0])

    def objective(trial):
        values = checked.space.sample(trial, checked.base)
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            broadcast_object_list([(values, trial.number)])
        try:
            return _trial(values, checked, trial.number, trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:  # the trial failed; the study goes on
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            logger.warning("trial %d failed: %s: %s", trial.number, type(err).__name__, err)
            raise

    n_trials = settings.n_trials if settings.n_trials is not None else (None if settings.timeout else 20)
    callbacks = [lambda s, t: logger.info("%s", progress.line(s, t))]
    if n_trials is not None:
        callbacks.insert(0, MaxTrialsCallback(n_trials, states=None))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    finished = sum(t.state.is_finished() for t in study.trials)
    if n_trials is None or finished < n_trials:
        study.optimize(objective, timeout=settings.timeout, callbacks=callbacks, catch=(Exception,),
                       gc_after_trial=True)
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list([None])  # the other processes stop following


def _follow(checked: _Plan) -> None:
    """The other processes of a multi-process trial: train each trial the main process draws, until it stops."""
    from accelerate.utils import broadcast_object_list

    while True:
        box = [None]
        broadcast_object_list(box)
        if box[0] is None:
            return
        values, number = box[0]
        try:
            _trial(values, checked, number)
        except Exception:  # noqa: BLE001 - the main process records the trial's fate
            pass


def _finish(study, checked: _Plan, settings: TuneSettings, seconds: float, state) -> dict[str, Any]:
    """The study's files and the best config (main process), that config retrained by every process and tested
    once, then tune_results.json."""
    from hf_adapt.outputs import write_json

    best_config, search = together(state, lambda: _write_study_files(study, checked, settings, seconds))
    cfg = checked.config({**best_config, "overwrite_output_dir": True}, "best_config.yaml")
    result = checked.module.main(cfg, search=search)
    if not state.is_main_process:
        return {}
    facts = {**search, "best_config": str(checked.output_dir / "best_config.yaml"), "test_metrics": result.test_metrics,
             "output_dir": str(result.output_dir)}
    write_json(checked.output_dir / "tune_results.json", facts)
    logger.info("best trial %d: %s; retrained and tested once in %s: %s", search["best_trial"],
                dict(zip(checked.objectives, search["best_values"])), result.output_dir,
                " ".join(f"{k}={v:.4f}" for k, v in result.test_metrics.items() if isinstance(v, float)))
    return facts


def _write_study_files(study, checked: _Plan, settings: TuneSettings, seconds: float):
    """trials.csv, the figures and best_config.yaml, once every trial of the study has finished (other workers'
    included); the best config's values and the search's facts for the card."""
    import optuna
    import yaml

    from hf_adapt.outputs import write_text
    from hf_adapt.tune.study import storage_label, summary, wait_for_running

    out = checked.output_dir
    wait_for_running(study)
    write_text(out / "trials.csv", study.trials_dataframe().to_csv(index=False))
    figures = _figures(study, out / "figures")
    counts = summary(study)
    if not counts.get("complete"):
        raise ConfigError(f"no trial completed ({counts}); see trials.csv for each trial's error")
    best = _best(study)
    values = checked.space.sample(optuna.trial.FixedTrial(best.params), checked.base)
    best_config = {**values, "output_dir": str(out / "best")}
    write_text(out / "best_config.yaml", yaml.safe_dump(best_config, sort_keys=False))
    search = {"recipe": checked.recipe, "validation": checked.module.TUNE_VALIDATION,
              "optuna_version": optuna.__version__, "sampler": settings.sampler, "pruner": settings.pruner,
              "objectives": checked.objectives, "trials": counts, "best_trial": best.number,
              "best_values": best.values, "best_params": best.params, "wall_seconds": seconds,
              "seconds": sum(t.duration.total_seconds() for t in study.trials if t.duration is not None),
              "storage": storage_label(checked.storage), "figures": figures,
              "space": [{"name": p.name, "description": _describe(p), "best": best.params.get(p.name, "(not sampled)")}
                        for p in checked.space.parameters]}
    return best_config, search


def _best(study):
    """The best trial: on one objective Optuna's; on several the Pareto trial best on the first."""
    if len(study.directions) == 1:
        return study.best_trial
    sign = 1 if study.directions[0].name == "MAXIMIZE" else -1
    return max(study.best_trials, key=lambda t: sign * t.values[0])


def _describe(parameter) -> str:
    if parameter.distribution == "categorical":
        text = f"categorical {list(parameter.choices)}"
    else:
        text = f"{parameter.distribution} [{parameter.low}, {parameter.high}]" + (
            f" step {parameter.step}" if parameter.step else "")
    conditions = ", ".join(f"{k} in {list(v)}" for k, v in parameter.when.items())
    return text + (f" when {conditions}" if conditions else "")


def _figures(study, directory: Path) -> list[str]:
    """Optuna's optimization history, parameter importances and parallel coordinates, as PNG; a figure that
    needs more completed trials than the study has is left out."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    target = (lambda t: t.values[0]) if len(study.directions) > 1 else None
    for name, draw in (("optimization_history", plots.plot_optimization_history),
                       ("param_importances", plots.plot_param_importances),
                       ("parallel_coordinate", plots.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = draw(study, target=target) if target else draw(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            logger.info("no %s figure: %s", name, err)
            continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.savefig(directory / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        written.append(f"figures/{name}.png")
    return written
