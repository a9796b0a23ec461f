"""Continual learning: teach one model a stream of experiences, measure what it forgets, gate the release on it.

Shared by ``recipes/continual.py`` (``accelerate launch``) and ``hf-adapt continual``. Every
experience trains through the one loop (:func:`hf_adapt.loop.fit`); the strategy
(:mod:`hf_adapt.continual`) only chooses rows, adds loss terms and changes adapters. After each
experience the model is tested on every experience, which fills the accuracy matrix.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from hf_adapt.checkpoints import CheckpointOptions
from hf_adapt.config import redefault
from hf_adapt.errors import ConfigError, DataError, ReleaseGateError
from hf_adapt.hub import PublishOptions
from hf_adapt.options import (
    BackboneOptions,
    CardOptions,
    ClassifierOptions,
    DataOptions,
    LabelOptions,
    ModelOptions,
    ParentOptions,
    RegimeOptions,
    RuntimeOptions,
    TrainingOptions,
)

logger = logging.getLogger("hf_adapt.continual")

RESULTS_FILE = "continual_results.json"
STATE_FILE = "continual_state.json"
STATE_TENSORS = "continual_state.safetensors"
MATRIX_FIGURE = "continual_matrix.png"
CARD_METRICS = ("accuracy", "macro_f1", "auroc")
SINGLE_LABEL_METRICS = ("accuracy", "macro_f1", "auroc", "log_loss", "ece")
MULTI_LABEL_METRICS = ("map", "auroc", "macro_f1", "micro_f1")  # micro/macro-F1 at each label's threshold


@dataclass
class ContinualConfig(ModelOptions, BackboneOptions, DataOptions, LabelOptions, ParentOptions, RegimeOptions,
                      TrainingOptions, ClassifierOptions, RuntimeOptions, CardOptions, CheckpointOptions,
                      PublishOptions):
    """Learn an ordered list of experiences with one model (class-, domain- or task-incremental), test every
    experience after each one, and write the accuracy matrix, forgetting, a heat map and a model card.

    The model, adapter and optimisation fields are those of `hf-adapt finetune` and apply to each experience;
    the data fields are the defaults each experience may override.
    """

    refused_keys: ClassVar[dict[str, str]] = {
        "table_features": "hybrid table models train with hf-adapt finetune; a continual stream would need each "
                          "experience's table encoding and fitted linear path carried and reconciled, which hf-adapt "
                          "does not do yet (rows rendered as text work here)"}
    experiences: list | None = field(default=None, metadata={"help": "The stream, in order: a list of dicts, each with a name and a class subset ({name: a, classes: [0, 1]}), a row filter ({name: b, where: {product: [X, Y]}}) and/or its own data fields (data, data_files, label_column, text_column, ...). Each keeps its own validation and test rows."})
    scenario: Literal["class", "domain", "task"] = field(default="class", metadata={"help": "class: new labels extend the head; domain: every experience has the same labels; task: the task id (the experience) is known at test time and picks its classes."})
    strategy: str = field(default="naive", metadata={"help": "naive, replay, ewc, lwf, adapter_per_experience or joint (the upper bound), or one added with hf_adapt.continual.register_strategy."})
    strategy_options: dict | None = field(default=None, metadata={"help": "The strategy's settings, e.g. replay {buffer_size: 200, selection: class_balanced|reservoir}; ewc {ewc_lambda: 1000, fisher_samples: 256, decay: 1.0}; lwf {alpha: 1.0, temperature: 2.0}; adapter_per_experience {routing: auto|task_id|confidence|label}."})
    continual_metric: Literal["accuracy", "macro_f1", "auroc", "log_loss", "ece", "map", "micro_f1"] | None = field(default=None, metadata={"resumable": True, "help": "Test metric of the accuracy matrix, forgetting and the release gate. Default: accuracy; task: multi_label: map (it takes map, auroc, macro_f1 or micro_f1, the F1s at each label's threshold)."})
    max_forgetting: float | None = field(default=None, metadata={"resumable": True, "help": "Release gate: when any earlier experience loses more than this much of continual_metric (from its best to the end), the run writes its outputs, refuses to push and exits non-zero."})
    keep_best_epoch: bool = field(default=False, metadata={"help": "Keep each experience's best epoch on its validation rows (default: the last epoch; choosing on new data alone favours forgetting)."})

    init_from: str | None = redefault(ParentOptions, "init_from", None, help="Update a served version: an earlier finetune or continual output (folder or Hub repo) whose adapter, head and label map go on learning the new experiences. Its test data is scored before and after (old vs new in the card), and a continual parent's strategy state (replay buffer, Fisher) carries over.")
    metric_for_best_model: Literal["accuracy", "macro_f1", "auroc", "log_loss", "ece", "map", "micro_f1"] | None = redefault(ClassifierOptions, "metric_for_best_model", None, help="Validation metric logged each epoch (and used with keep_best_epoch). Default: continual_metric.")
    output_dir: str = redefault(RuntimeOptions, "output_dir", "outputs/continual", help="Where the model, the matrix, its heat map and the card go (written atomically).")

    def validate(self) -> None:
        from hf_adapt.continual import make_strategy
        from hf_adapt.continual.experiences import check_entries
        from hf_adapt.regimes import get_regime, regimes_that

        if self.experiences is None:
            raise ConfigError("experiences: not set; give the stream as a list, e.g. "
                              "[{name: a, classes: [0, 1]}, {name: b, classes: [2, 3]}] (see recipes/configs/continual_*.yaml)")
        check_entries(self.experiences)
        if self.task not in ("classification", "multi_label"):
            learning = {"class": "class-incremental learning adds classes to a head",
                        "domain": "domain-incremental learning keeps one set of classes",
                        "task": "task-incremental learning picks a task's classes"}[self.scenario]
            raise ConfigError(f"task: {self.task} does not apply to hf-adapt continual: {learning}, and a "
                              f"{self.task} target has no classes; train a {self.task} model with hf-adapt finetune")
        metrics = MULTI_LABEL_METRICS if self.task == "multi_label" else SINGLE_LABEL_METRICS
        for name in ("continual_metric", "metric_for_best_model"):
            if getattr(self, name) not in (None, *metrics):
                raise ConfigError(f"{name}: {getattr(self, name)} is not a {self.task.replace('_', '-')} metric; "
                                  f"task: {self.task} takes one of {list(metrics)}, e.g. {name}: {metrics[0]}")
        if self.task == "multi_label":
            from hf_adapt.config import refuse_set
            from hf_adapt.multilabel import SINGLE_LABEL_ONLY

            # what only means something for one class per row; init_from here continues a multi-label version
            refuse_set(self, {k: v for k, v in SINGLE_LABEL_ONLY.items() if k != "init_from"}, "task: multi_label")
        self.continual_metric = self.continual_metric or metrics[0]
        self.metric_for_best_model = self.metric_for_best_model or self.continual_metric
        if not get_regime(self.regime).continual:
            raise ConfigError(f"regime {self.regime} is not a continual regime; use one of "
                              f"{', '.join(regimes_that('continual'))}")
        if self.max_forgetting is not None and self.max_forgetting < 0:
            raise ConfigError(f"max_forgetting must be >= 0, got {self.max_forgetting}")
        make_strategy(self.strategy, self.strategy_options)  # unknown strategies and options fail here


@dataclass
class ContinualResult:
    output_dir: Path
    results: dict[str, Any]
    model: Any
    backbone: Any
    strategy: Any
    push: Any = None

    @property
    def test_metrics(self) -> dict[str, float]:
        """The final model on every experience's test rows together."""
        return self.results["test_metrics"]


TUNE_VALIDATION = "every experience's validation rows, scored after the whole stream"  # hf-adapt tune's trials


def tune_objectives(cfg: ContinualConfig) -> dict[str, str]:
    """What :func:`validate` reports, each with its direction; the first is ``hf-adapt tune``'s default objective:
    the final model's mean ``continual_metric`` over the experiences (forgetting included), then forgetting."""
    from hf_adapt.metrics import LOWER_IS_BETTER

    return {"continual_average": "minimize" if cfg.continual_metric in LOWER_IS_BETTER else "maximize",
            "average_forgetting": "minimize", "max_forgetting": "minimize"}


def validate(cfg: ContinualConfig, callbacks=()):
    """Learn the stream as :func:`main` does, scoring every experience on its validation rows instead of its test
    rows: one trial of ``hf-adapt tune``. Nothing is written; after each experience ``callbacks`` see the running
    ``continual_average`` (pruning). Returns a :class:`hf_adapt.tune.study.Validation`."""
    from hf_adapt.adapters import count_parameters
    from hf_adapt.run import recipe_run
    from hf_adapt.tune.study import Validation

    with recipe_run(cfg) as job:
        setup = _prepare(cfg, job)
        model, results = _learn_stream(cfg, job, setup, split="validation", callbacks=callbacks)
        summary = results["summary"]
        metrics = {"continual_average": summary["average"],
                   "average_forgetting": summary["average_forgetting"] or 0.0,  # none: one experience, nothing lost
                   "max_forgetting": summary["max_forgetting"] or 0.0}
        return Validation(metrics, count_parameters(model)[0], job.seconds, results["training"])


def main(cfg: ContinualConfig, search: dict[str, Any] | None = None) -> ContinualResult:
    """Learn ``cfg``'s stream of experiences; write the model, the forgetting matrix and the release gate.
    ``search``: the hyperparameter search that chose ``cfg`` (``hf-adapt tune``), for the card."""
    from hf_adapt.adapters import count_parameters
    from hf_adapt.artifacts import gathered_state
    from hf_adapt.run import recipe_run

    with recipe_run(cfg) as job:
        setup = _prepare(cfg, job)  # everything that can fail on bad input happens before training
        with job.writing(trackers=False):
            model, results = _learn_stream(cfg, job, setup)
            trainable, total = count_parameters(model)
            state = gathered_state(job.accelerator, model)  # FSDP2 / ZeRO-3 shards, gathered by every process
            job.write(lambda directory: _write_outputs(
                directory, cfg, job.accelerator, model, setup.backbone, setup.stream, setup.strategy, results,
                setup.parent, trainable, total, job.seconds, search, state))
        result = ContinualResult(Path(cfg.output_dir), results, model, setup.backbone, setup.strategy)
        gate = results["gate"]
        if not gate["passed"]:
            from hf_adapt.continual.metrics import describe_regressions

            raise ReleaseGateError(
                f"release gate failed, not pushed: forgetting above max_forgetting {gate['max_forgetting']:g} "
                f"({cfg.continual_metric}): {describe_regressions(gate, cfg.continual_metric)}. The outputs are in "
                f"{cfg.output_dir} ({RESULTS_FILE})")
        result.push = job.push()
    return result


@dataclass
class _Setup:
    """The checked stream and the model to teach it, before anything trains."""

    strategy: Any
    parent: Any
    new: list  # the experiences this run trains, in order
    stream: Any  # ContinualRun
    backbone: Any
    model: Any
    head: int
    settings: Any


def _prepare(cfg: ContinualConfig, job) -> _Setup:
    from hf_adapt import transfer
    from hf_adapt.continual import make_strategy
    from hf_adapt.continual.base import ContinualRun
    from hf_adapt.continual.experiences import check_scenario, check_splits, load_experiences
    from hf_adapt.loop import LoopSettings

    strategy = make_strategy(cfg.strategy, cfg.strategy_options)
    parent, label_names, experiences = None, [], []
    state = None
    if cfg.init_from:
        parent = transfer.find_parent(cfg.init_from, cfg.init_from_revision, recipes=("finetune", "continual"),
                                      what="a classifier to continue")
        _check_parent(parent, cfg)
        label_names = parent.labels()
        experiences = _parent_experiences(parent, list(label_names), cfg.task)
        state = _parent_state(parent, cfg)
    parent_labels = list(label_names) if parent else None
    names = {e.name for e in experiences}
    clash = [entry["name"] for entry in cfg.experiences if entry["name"] in names]
    if clash:
        raise ConfigError(f"experience name(s) {clash} are already used by the parent's experiences {sorted(names)}")
    experiences += load_experiences(cfg, cfg.experiences, label_names, first_task=len(experiences), trained_at=1)
    check_scenario(cfg.scenario, experiences, label_names, parent_labels)
    new = [e for e in experiences if e.trained_at > 0]
    check_splits(experiences)
    if state is not None:
        strategy.load_state(*state)
    stream = ContinualRun(cfg.scenario, experiences, label_names, None, job.accelerator, cfg.seed,
                          multi_label=cfg.task == "multi_label")
    if parent is not None and stream.multi_label:  # the parent's thresholds, until its labels are annotated again
        from hf_adapt.tasks import task_from_info

        saved = task_from_info(parent.info, parent_labels, f"init_from {cfg.init_from!r}: hf_adapt.json")
        stream.thresholds = list(saved.thresholds)
        stream.chosen = {j for j, name in enumerate(parent_labels) if name not in saved.defaulted}
    strategy.check(stream, cfg.regime)
    head = stream.head_size = _head_size(parent_labels, cfg.scenario, label_names, new[0])
    backbone, model = _first_model(cfg, parent, parent_labels, head, new)
    stream.backbone = backbone
    settings = LoopSettings.from_config(cfg, backbone, restore_best=cfg.keep_best_epoch)
    if job.checkpoints is not None:  # a resumed run replays finished experiences from their final checkpoints
        job.checkpoints.open(job.accelerator, cfg, [e.data.origin.get("sha256") for e in new])
    return _Setup(strategy, parent, new, stream, backbone, model, head, settings)


def _first_model(cfg: ContinualConfig, parent, parent_labels, head: int, new: list):
    """The backbone and model the first new experience trains: built fresh, or the parent's as it was trained."""
    from hf_adapt import transfer
    from hf_adapt.backbones import BackboneSpec, build_backbone
    from hf_adapt.config import DEFAULT_MODEL
    from hf_adapt.dicom import check_volume_channels
    from hf_adapt.regimes import apply_regime

    kind = "image" if new[0].data.kind == "image" else "text"
    if parent is None:
        backbone = build_backbone(BackboneSpec.from_config(cfg, head))
        model = apply_regime(backbone, cfg.regime, cfg.adapter)
    else:
        transfer.check_parent(parent, cfg.family, cfg.model_name_or_path, DEFAULT_MODEL, kind)
        backbone, model = _resume(parent, parent_labels, cfg)
        logger.info("continuing %s (%s, %d labels)", cfg.init_from, parent.recipe, len(parent_labels))
    if backbone.preprocessor.input_kind != kind:
        raise ConfigError(f"the model reads {backbone.preprocessor.input_kind} inputs but the experiences hold {kind} data")
    for experience in new:
        check_volume_channels(experience.data, backbone)
    backbone.preprocessor.check_inputs({f"{e.name}/{split}": e.inputs(split, kind) for e in new
                                        for split in ("train", "validation", "test")})
    return backbone, model


def _learn_stream(cfg: ContinualConfig, job, setup: _Setup, split: str = "test", callbacks=()):
    """Train each new experience in turn, scoring every experience's ``split`` rows after each; the model and the
    results. ``callbacks`` see the mean of the experiences learnt so far after each (``continual_average``)."""
    from hf_adapt.continual.heads import grow_head
    from hf_adapt.loop import fit, predict

    accelerator, run, strategy, backbone, head = job.accelerator, setup.stream, setup.strategy, setup.backbone, setup.head
    model = accelerator.prepare_model(setup.model, evaluation_mode=True)  # on the device for row 0; fit wraps it later
    rows = [_evaluate_all(run, strategy, model, head, cfg, split)]
    row_names, histories = ["before"], []
    for experience in setup.new:
        run.step = experience.trained_at
        needed = max(run.seen_classes()) + 1
        if needed > head:
            grow_head(model, backbone.head_names, head, needed)
            logger.info("head grown from %d to %d classes", head, needed)
            head = run.head_size = needed
        model = strategy.before_experience(run, experience, model)
        task = strategy.training_task(run, run.base_task(head), model)
        train = strategy.train_rows(run, experience)
        logger.info("experience %d/%d %r: %d training rows (%d of its own), classes %s", experience.trained_at,
                    len(setup.new), experience.name, len(train), len(experience.labels["train"]),
                    [run.label_names[c] for c in experience.classes])
        phase = job.checkpoints.phase(accelerator, f"experience-{run.step}") if job.checkpoints else None
        prepared, history = fit(accelerator, model, task, *_loaders(cfg, run, strategy, experience, train),
                                setup.settings, checkpoints=phase,
                                evaluate_fn=lambda acc, m, t, loader: run.metrics(*predict(acc, m, t, loader)))
        model = accelerator.unwrap_model(prepared)
        model.eval()
        if run.multi_label:  # the thresholds of the labels it annotates, on its validation rows
            _choose_thresholds(cfg, run, strategy, experience, model, head)
        strategy.after_experience(run, experience, model)
        histories.append({"experience": experience.name, "rows": len(train), "best_epoch": history.best_epoch,
                          "steps": history.steps, "train_seconds": history.train_seconds, "history": history.history})
        rows.append(_evaluate_all(run, strategy, model, head, cfg, split))
        row_names.append(experience.name)
        _report_step(callbacks, run, rows[-1], cfg.continual_metric)
        accelerator.free_memory()  # drop the prepared copies of this experience before the next
    return model, _results(cfg, run, strategy, rows, row_names, histories)


def _choose_thresholds(cfg: ContinualConfig, run, strategy, experience, model, head: int) -> None:
    from hf_adapt.loop import make_loader, predict

    rows = strategy.validation_rows(run, experience)
    task = strategy.evaluation_task(run, run.base_task(head), model)
    loader = run.accelerator.prepare(make_loader(run.dataset(rows, "validation"), run.backbone.preprocessor.collate,
                                                 cfg.per_device_eval_batch_size, train=False, seed=cfg.seed))
    chosen = run.choose_thresholds(*predict(run.accelerator, model, task, loader))
    logger.info("thresholds chosen on %s's validation rows for %s", experience.name,
                [run.label_names[j] for j in chosen])


def _loaders(cfg: ContinualConfig, run, strategy, experience, train) -> list:
    from hf_adapt.loop import make_loader
    from hf_adapt.speed import row_lengths

    preprocessor = run.backbone.preprocessor
    collate = preprocessor.collate
    train_rows = run.dataset(train)
    return [make_loader(train_rows, collate, cfg.per_device_train_batch_size, train=True,
                        seed=cfg.seed + run.step, num_workers=cfg.num_workers,
                        lengths=row_lengths(preprocessor, train_rows.inputs, cfg.group_by_length)),
            make_loader(run.dataset(strategy.validation_rows(run, experience), "validation"), collate,
                        cfg.per_device_eval_batch_size, train=False, seed=cfg.seed, num_workers=cfg.num_workers)]


def _head_size(parent_labels, scenario: str, label_names: list[str], first) -> int:
    """Outputs of the head before the first new experience: the parent's, every label (domain), or the first's."""
    if parent_labels is not None:
        return len(parent_labels)
    return len(label_names) if scenario == "domain" else max(first.classes) + 1


def _report_step(callbacks, run, row, metric: str) -> None:
    """The mean ``metric`` over the experiences learnt so far, to each callback, as the step's ``continual_average``."""
    learnt = [cell[metric] for e, cell in zip(run.experiences, row)
              if e.trained_at <= run.step and cell is not None and cell[metric] == cell[metric]]
    if learnt:
        for callback in callbacks:
            callback.on_epoch_end(run.step, {"continual_average": sum(learnt) / len(learnt)})


def _evaluate_all(run, strategy, model, head: int, cfg, split: str = "test") -> list[dict[str, Any] | None]:
    """Metrics on the ``split`` rows of every experience whose classes the head knows (None for the others)."""
    from hf_adapt.loop import make_loader, predict

    task = strategy.evaluation_task(run, run.base_task(head), model)
    row = []
    for experience in run.experiences:
        if max(experience.classes) >= head:
            row.append(None)
            continue
        loader = run.accelerator.prepare(make_loader(run.dataset(experience.rows(split), split),
                                                     run.backbone.preprocessor.collate,
                                                     cfg.per_device_eval_batch_size, train=False, seed=cfg.seed))
        logits, y = predict(run.accelerator, model, task, loader)
        row.append({**run.metrics(logits, y), "_logits": logits, "_labels": y})
    return row


def _results(cfg, run, strategy, rows, row_names, histories) -> dict[str, Any]:
    import numpy as np

    from hf_adapt.continual.metrics import gate, summarize

    names = [e.name for e in run.experiences]
    trained_at = [e.trained_at for e in run.experiences]
    metrics = [k for k in rows[-1][0] if not k.startswith("_")]
    # None: undefined (classes the head did not know yet, or e.g. AUROC over a single class)
    matrices = {m: [[None if cell is None or cell[m] != cell[m] else cell[m] for cell in row] for row in rows]
                for m in metrics}
    matrix = matrices[cfg.continual_metric]
    summary = summarize(matrix, trained_at, names, cfg.continual_metric)
    last = rows[-1]
    logits, labels = np.concatenate([c["_logits"] for c in last]), np.concatenate([c["_labels"] for c in last])
    overall = run.metrics(logits, labels)
    return {
        "scenario": cfg.scenario,
        "strategy": {"name": strategy.name, "description": strategy.description, "options": strategy.card_facts()},
        "metric": cfg.continual_metric,
        "experiences": [{"name": e.name, "task": e.task, "trained_at": e.trained_at, "learnt_in_this_run": e.trained_at > 0,
                         "classes": [run.label_names[c] for c in e.classes], **e.description,
                         "data_sha256": e.data.origin.get("sha256")} for e in run.experiences],
        "rows": row_names,
        "matrix": matrix,
        "matrices": matrices,
        "summary": summary,
        "gate": gate(summary, cfg.max_forgetting, names, matrix, row_names),
        "test_metrics": overall,  # the final model on the union of every experience's test rows
        "training": histories,
        "labels": run.label_names,
        "task": _task(run).info(),
        "per_label": _per_label(run, logits, labels) if run.multi_label else None,
    }


def _per_label(run, logits, labels) -> list[dict[str, Any]]:
    """Multi-label: each label's test support, AUROC, AP and decisions at its threshold, on the rows that annotate
    it (None where undefined)."""
    from hf_adapt.multilabel import per_label_metrics

    rows = per_label_metrics(logits, labels, run.thresholds_for(logits.shape[1]), run.label_names[:logits.shape[1]])
    return [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()} for row in rows]


def _task(run):
    """What the outputs mean (``hf_adapt.json``'s task block): classes, or multi-label with each label's threshold."""
    from hf_adapt.tasks import Classification

    if not run.multi_label:
        return Classification(len(run.label_names))
    from hf_adapt.multilabel import MultiLabel

    names = tuple(run.label_names)
    return MultiLabel(names, tuple(float(t) for t in run.thresholds_for(len(names))),
                      "the validation rows of the experience that annotates each label, after learning it",
                      tuple(name for j, name in enumerate(names) if j not in run.chosen))


def _parent_experiences(parent, label_names: list[str], task: str):
    """The parent's experiences (a finetune parent: its whole data set) re-read from their data sources, with
    the rows it was tested on: what "old versus new" is measured on, and what replay may draw from."""
    from hf_adapt.config import config_from_dict
    from hf_adapt.continual.experiences import SPEC_FIELDS, load_experiences
    from hf_adapt.outputs import read_json
    from hf_adapt.recipes.finetune import FinetuneConfig

    if parent.recipe == "continual":  # each experience was recorded with every data field it was read with
        entries = [{"name": e["name"], **e["data_config"]} for e in read_json(parent.directory / RESULTS_FILE)["experiences"]]
    else:
        import yaml

        path = parent.directory / "config.yaml"
        if not path.is_file():
            raise ConfigError(f"init_from {parent.source!r} has no config.yaml; its test data cannot be found")
        values = yaml.safe_load(path.read_text()) or {}
        entries = [{"name": Path(parent.source).name, **{k: values[k] for k in SPEC_FIELDS if k in values}}]
    before = list(label_names)
    try:
        experiences = load_experiences(config_from_dict(FinetuneConfig, {"task": task}), entries, label_names,
                                       first_task=0, trained_at=None)
    except (DataError, ConfigError) as err:
        raise DataError(f"init_from {parent.source!r}: its data could not be re-read for the old-versus-new "
                        f"comparison and replay: {err}") from err
    if label_names != before:
        raise DataError(f"init_from {parent.source!r}: its data now holds labels {label_names[len(before):]} that its "
                        f"label map {before} lacks; the data changed since the parent was trained")
    return experiences


def _check_parent(parent, cfg) -> None:
    """Refuse an update that cannot continue the parent as it was trained."""
    info = parent.info.get("continual") or {}
    task = (parent.info.get("task") or {}).get("name", "classification")
    if "multi_label" in (task, cfg.task) and task != cfg.task:
        raise ConfigError(f"init_from {cfg.init_from!r} is a {task.replace('_', '-')} model and this run is "
                          f"task: {cfg.task}; an update keeps its parent's task, so set task: {task}")
    if task not in ("classification", "multi_label"):
        raise ConfigError(f"init_from {cfg.init_from!r} is a {task} model; continual learning (here "
                          f"{cfg.scenario}-incremental) continues a classifier's classes, and a {task} target has none")
    if parent.info.get("regime") != cfg.regime:
        raise ConfigError(f"init_from {cfg.init_from!r} was trained with regime {parent.info.get('regime')!r}; an "
                          f"update continues its weights, so set regime: {parent.info.get('regime')}")
    if info and info["scenario"] != cfg.scenario:
        raise ConfigError(f"init_from {cfg.init_from!r} is {info['scenario']}-incremental; an update keeps its "
                          f"scenario, so set scenario: {info['scenario']}")
    if len(set((info.get("adapters") or {}).values())) > 1 and cfg.strategy != info["strategy"]:
        raise ConfigError(f"init_from {cfg.init_from!r} has one adapter per experience; continue it with strategy: "
                          f"{info['strategy']}, or its routing would be lost")


def _parent_state(parent, cfg) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The parent's strategy state, when it was trained with the same strategy."""
    from hf_adapt.outputs import read_json

    info = parent.info.get("continual") or {}
    if info.get("strategy") != cfg.strategy or not (parent.directory / STATE_FILE).is_file():
        if info.get("strategy") and info["strategy"] != cfg.strategy:
            logger.warning("the parent was trained with strategy %s; its state does not carry over to %s",
                           info["strategy"], cfg.strategy)
        return None
    tensors = {}
    if (parent.directory / STATE_TENSORS).is_file():
        from safetensors.torch import load_file

        tensors = load_file(str(parent.directory / STATE_TENSORS))
    return read_json(parent.directory / STATE_FILE)["state"], tensors


def _resume(parent, labels: list[str], cfg):
    """The parent rebuilt as it was trained: its starting backbone, its adapter(s) trainable again, its head."""
    from hf_adapt import transfer
    from hf_adapt.backbones import build_backbone
    from hf_adapt.regimes import get_regime

    model_info = parent.info["model"]
    with tempfile.TemporaryDirectory(prefix="hf-adapt-continue-") as workdir:
        spec = transfer.backbone_spec(parent.directory, model_info, len(labels), Path(workdir), cfg.trust_remote_code,
                                      image_size=model_info.get("image_size"), max_length=model_info.get("max_length", 256),
                                      pooling=model_info.get("pooling") or "model")
        backbone = build_backbone(spec)
    # the parent's weights, trainable as it trained them
    model = get_regime(parent.info["regime"]).restore(backbone, parent.directory, trainable=True)
    adapters = set(((parent.info.get("continual") or {}).get("adapters") or {}).values()) - {"default"}
    if adapters:  # adapter_per_experience: the old experiences' adapters, frozen
        from hf_adapt.weights import check_safetensors

        for name in sorted(adapters):
            check_safetensors(parent.directory / name)
            model.load_adapter(str(parent.directory / name), adapter_name=name, is_trainable=False)
        model.set_adapter("default")
    return backbone, model


def _write_outputs(directory: Path, cfg, accelerator, model, backbone, run, strategy, results, parent, trainable, total,
                   wall_seconds, search=None, state=None) -> None:
    model_info = _write_run_files(directory, cfg, accelerator, model, backbone, run, strategy, results, parent,
                                  wall_seconds, state)
    _write_card(directory, cfg, accelerator, backbone, run, strategy, results, parent, model_info, trainable, total,
                wall_seconds, search)


def _write_run_files(directory: Path, cfg, accelerator, model, backbone, run, strategy, results, parent,
                     wall_seconds, state=None) -> dict[str, Any]:
    """The model, the strategy's state, the run record and the result files; returns the record's model block."""
    from hf_adapt import transfer
    from hf_adapt.artifacts import base_model_info, column_kinds, save_model, write_run_info
    from hf_adapt.config import save_config
    from hf_adapt.outputs import write_json

    save_model(model, backbone, cfg.regime, directory, state)
    backbone.preprocessor.save(str(directory))
    new = [e for e in run.experiences if e.trained_at > 0]
    data = new[0].data
    if parent is None:
        model_info = base_model_info(cfg, backbone)
        chain = None
    else:  # the same starting backbone as the parent: its base, and its own init/ chain if it has one
        model_info, chain = parent.info["model"], parent.info.get("init_from")
        if (parent.directory / transfer.INIT_DIR).is_dir():
            import shutil

            shutil.copytree(parent.directory / transfer.INIT_DIR, directory / transfer.INIT_DIR)
    state_facts, state_tensors = strategy.state()
    write_json(directory / STATE_FILE, {"strategy": strategy.name, "state": state_facts})
    if state_tensors:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_tensors.items()}, str(directory / STATE_TENSORS))
    adapters = state_facts.get("adapters") if strategy.name == "adapter_per_experience" else None
    write_run_info(directory, {
        "recipe": "continual",
        "family": backbone.family,
        "regime": cfg.regime,
        "model": model_info,
        "init_from": chain,
        "continues": {"source": parent.source, "revision": parent.revision} if parent else None,
        "head_names": backbone.head_names,
        "task": results["task"],
        "data": {"kind": data.kind, "feature_columns": data.feature_columns, "text_template": data.text_template,
                 "pixel_shape": cfg.pixel_shape, "input_column": data.input_column, "column_kinds": column_kinds(data),
                 "dicom_window": cfg.dicom_window, **data.volume.info()},  # images reload as they were read
        "continual": {"scenario": cfg.scenario, "strategy": strategy.name, "adapters": adapters,
                      "routing": state_facts.get("routing"),
                      "tasks": {e.name: {"task": e.task, "classes": e.classes} for e in run.experiences}},
    }, run.label_names)
    write_json(directory / RESULTS_FILE, results)
    summary = results["summary"]
    metric = cfg.continual_metric
    write_json(directory / "eval_results.json", {
        **results["test_metrics"], f"continual_average_{metric}": summary["average"],
        "continual_average_forgetting": summary["average_forgetting"], "continual_max_forgetting": summary["max_forgetting"],
        "continual_backward_transfer": summary["backward_transfer"], "continual_forward_transfer": summary["forward_transfer"],
    })
    write_json(directory / "train_results.json", {
        "experiences": results["training"], "wall_seconds": wall_seconds, "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision, "data": data.origin,
    })
    save_config(cfg, directory / "config.yaml")
    return model_info


def _write_card(directory: Path, cfg, accelerator, backbone, run, strategy, results, parent, model_info, trainable,
                total, wall_seconds, search=None) -> None:
    """The forgetting-matrix figure, the card's facts (``card_facts.json``) and the card rendered from them."""
    from hf_adapt import cards, figures, transfer
    from hf_adapt.continual.metrics import markdown_table
    from hf_adapt.regimes import regime_facts

    new = [e for e in run.experiences if e.trained_at > 0]
    data, summary, metric = new[0].data, results["summary"], cfg.continual_metric
    figure = figures.accuracy_matrix(results["matrix"], results["rows"], [e.name for e in run.experiences], metric,
                                     directory / MATRIX_FIGURE)
    base_model = cfg.base_model_id or (transfer.base_model(parent) if parent else backbone.info.get("hub_id"))
    history = [dict(epoch=i + 1, **{k: v for k, v in h["history"][-1].items() if k != "epoch"})
               for i, h in enumerate(results["training"])]
    facts = {
        "card_template": "continual.md",
        "summary": (f"{_task(run).model_noun(run.label_names)} on `{base_model or cfg.model_name_or_path}`, "
                    f"taught {len(new)} experience(s) in turn ({cfg.scenario}-incremental, strategy `{strategy.name}`) with hf-adapt."),
        "base_model": base_model,
        "model_source": model_info["name_or_path"],
        "family": backbone.family,
        **regime_facts(cfg.regime, cfg.adapter),
        "dataset_name": cfg.dataset_title(cfg.data),
        "data_source": cfg.data_files or cfg.data,
        "data_kind": data.kind,
        "input_kind": backbone.preprocessor.input_kind,
        "labels": run.label_names,
        "task": results["task"],
        "multi_label": results["task"] if run.multi_label else None,
        "per_label": results["per_label"],
        "test_metrics": results["test_metrics"],
        "history": history,
        "scenario": cfg.scenario,
        "strategy": results["strategy"],
        "metric": metric,
        "experiences": results["experiences"],
        "matrix_table": markdown_table(results["matrix"], results["rows"], [e.name for e in run.experiences]),
        "matrix_figure": figure.name,
        "continual_summary": summary,
        "gate": results["gate"],
        "old_vs_new": _old_vs_new(results, run) if parent else None,
        "lineage": _lineage(parent, results) if parent else None,
        "trainable_parameters": trainable,
        "total_parameters": total,
        "wall_seconds": wall_seconds,
        "search": search,
    }
    cards.write_card(directory, cfg, accelerator, "continual", facts)


def _old_vs_new(results, run) -> list[dict[str, Any]]:
    """Each parent experience's test metrics under the parent (row 0) and under this version (last row)."""
    rows = []
    for j, e in enumerate(run.experiences):
        if e.trained_at == 0:
            for m in MULTI_LABEL_METRICS if run.multi_label else CARD_METRICS:
                before, after = results["matrices"][m][0][j], results["matrices"][m][-1][j]
                rows.append({"experience": e.name, "metric": m, "before": before, "after": after,
                             "change": None if before is None or after is None else after - before})
    return rows


def _lineage(parent, results) -> dict[str, Any]:
    from hf_adapt.outputs import read_json
    from hf_adapt.sources import is_disk_path

    on_hub = not is_disk_path(parent.source)
    path = parent.directory / "eval_results.json"
    return {
        "parent": parent.source if on_hub else Path(parent.source).name,
        "hub": on_hub,
        "revision": parent.revision,
        "relation": "continued (incremental update)",
        "parent_recipe": parent.recipe,
        "parent_regime": parent.info.get("regime"),
        "parent_metrics": {k: v for k, v in read_json(path).items() if isinstance(v, (int, float))} if path.is_file() else {},
        "kept": "the parent's weights, adapter, head and label map, trained further",
        "new": ", ".join(e["name"] for e in results["experiences"] if e["learnt_in_this_run"]),
    }
