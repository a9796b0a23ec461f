"""What to load: ``DataSpec``, the recipe config's data fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hf_adapt.dicom import VolumeReading


@dataclass
class DataSpec:
    """What to load and how to read it; the recipe config's data fields."""

    source: str
    label_column: str = "label"
    data_files: dict[str, str] | None = None
    subset: str | None = None
    revision: str | None = None
    text_column: str | None = None
    image_column: str | None = None
    feature_columns: list[str] | None = None
    text_template: str | None = None
    pixel_shape: list[int] | None = None
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    validation_size: float = 0.15
    test_size: float = 0.3
    seed: int = 42
    max_samples: dict[str, int] = field(default_factory=dict)
    train_fraction: float | None = None  # label budget: this share of each class's training rows
    train_samples_per_class: int | None = None  # label budget: this many training rows per class
    group_column: str | None = None  # e.g. patient_id: no group in two splits
    dicom_window: list[float] | None = None  # DICOM [center, width] after rescale; None: the file's window
    volume: VolumeReading = field(default_factory=VolumeReading)  # which slice(s) of a DICOM volume become the input
    on_bad_image: str = "error"  # "error": stop at the first unreadable image; "skip": drop it, counted
    image_root: str | None = None  # a folder manifest image paths may point into, besides the manifest's own
    class_names: list[str] | None = None  # set by load_labelled, for messages
    task: str = "classification"  # hf_adapt.tasks: what the label column holds (regression: a number)
    label_columns: list[str] | None = None  # multi_label: one 0/1 column per label, instead of label_column
    label_separator: str = "|"  # multi_label: what joins a row's labels in a text label_column
    streamed: bool = False  # the train split is a stream's first rows (hf_adapt.data.stream): later rows may add classes

    @classmethod
    def from_config(cls, cfg: Any) -> DataSpec:
        """The spec of a classification config's data fields (``data``, ``label_column``, ``max_train_samples``
        ...): finetune's, and each continual experience's once its own fields are filled in."""
        limits = {}
        if cfg.max_train_samples:
            limits["train"] = cfg.max_train_samples
        if cfg.max_eval_samples:
            limits.update(validation=cfg.max_eval_samples, test=cfg.max_eval_samples)
        return cls(
            source=cfg.data, label_column=cfg.label_column, data_files=cfg.data_files, subset=cfg.data_subset,
            revision=cfg.data_revision, text_column=cfg.text_column, image_column=cfg.image_column,
            feature_columns=cfg.feature_columns, text_template=cfg.text_template, pixel_shape=cfg.pixel_shape,
            validation_size=cfg.validation_size, test_size=cfg.test_size, seed=cfg.seed, max_samples=limits,
            load_kwargs=cfg.data_kwargs or {}, train_fraction=cfg.train_fraction,
            train_samples_per_class=cfg.train_samples_per_class, group_column=cfg.group_column,
            dicom_window=cfg.dicom_window, on_bad_image=cfg.on_bad_image, image_root=cfg.image_root,
            volume=VolumeReading.from_info(cfg),
            task=getattr(cfg, "task", "classification"),
            label_columns=getattr(cfg, "label_columns", None), label_separator=getattr(cfg, "label_separator", "|"),
        )
