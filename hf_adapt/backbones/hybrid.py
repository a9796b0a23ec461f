"""A text backbone with table features beside it (see :mod:`hf_adapt.table_features`): what it reads, how its
logits are summed, and the backbone that wraps it for training, saving and serving.

The hybrid is a :class:`~hf_adapt.backbones.Backbone` like any other: its head modules (the text head, the
wide and the deep path) are what peft saves beside the adapter and what a linear probe trains; its
preprocessor takes a row (a dict) and gives the tokenised text plus ``table_features``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hf_adapt.backbones.base import Backbone
from hf_adapt.table_features import DEEP_WIDTH, TableEncoder, TableInputs
from hf_adapt.tasks import fit_linear

logger = logging.getLogger("hf_adapt.table_features")

WIDE, DEEP = "table_wide", "table_deep"


class RowText:
    """The text of a row: a free-text column, or the row rendered as training rendered it."""

    def __init__(self, text_column: str | None, feature_columns: list[str], template: str | None):
        self.text_column, self.feature_columns, self.template = text_column, list(feature_columns), template

    @classmethod
    def from_data_info(cls, info: dict[str, Any]) -> RowText:
        """From ``hf_adapt.json``'s ``data`` block."""
        text = info.get("input_column") if info.get("kind") == "text" else None
        return cls(text, info.get("feature_columns") or [], info.get("text_template"))

    @property
    def columns(self) -> list[str]:
        """The columns the text is made of."""
        return [self.text_column] if self.text_column else self.feature_columns

    def __call__(self, row: dict[str, Any]) -> str:
        from hf_adapt.data import render_row

        return row[self.text_column] if self.text_column else render_row(row, self.feature_columns, self.template)


class HybridModel(nn.Module):
    """Logits of a text classifier plus a wide (linear) and a deep (MLP) read of encoded table features."""

    def __init__(self, text: nn.Module, text_logits: Callable, width: int, num_labels: int, hidden: int = DEEP_WIDTH,
                 dropout: float = 0.1):
        super().__init__()
        self.text = text
        self.text_logits = text_logits  # the text backbone's forward: (model, inputs) -> logits
        self.table_wide = nn.Linear(width, num_labels)
        self.table_deep = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout),
                                        nn.Linear(hidden, num_labels))
        nn.init.zeros_(self.table_deep[-1].weight)
        nn.init.zeros_(self.table_deep[-1].bias)

    def forward(self, table_features: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        table_features = table_features.to(self.table_wide.weight.dtype)
        return (self.text_logits(self.text, inputs) + self.table_wide(table_features)
                + self.table_deep(table_features))


def hybrid_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits of a :class:`HybridModel` (possibly wrapped by peft or DDP)."""
    return model(**inputs)


class HybridPreprocessor:
    """Rows (dicts) to the text backbone's inputs plus ``table_features``."""

    input_kind = "text"

    def __init__(self, text_preprocessor: Any, encoder: TableEncoder, text: RowText):
        self.text_preprocessor, self.encoder, self.text = text_preprocessor, encoder, text

    @property
    def tokenizer(self):
        return self.text_preprocessor.tokenizer

    @property
    def max_length(self) -> int:
        return self.text_preprocessor.max_length

    def collate(self, rows: list[dict[str, Any]], train: bool) -> dict[str, torch.Tensor]:
        batch = self.text_preprocessor.collate([self.text(row) for row in rows], train)
        batch["table_features"] = torch.from_numpy(self.encoder.encode(rows))
        return batch

    def check_inputs(self, inputs: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
        return self.text_preprocessor.check_inputs({split: [self.text(r) for r in rows] for split, rows in inputs.items()})

    def lengths(self, rows: list[dict[str, Any]]) -> list[int]:
        """Each row's text length in tokens, as the text backbone reads it."""
        return self.text_preprocessor.lengths([self.text(row) for row in rows])

    def save(self, directory: str) -> None:
        self.text_preprocessor.save(directory)
        self.encoder.save(directory)


def _zero_text_head(backbone: Backbone, num_labels: int) -> None:
    """Zero the text head's output layer, so the text path adds nothing until it has learnt something."""
    modules = dict(backbone.model.named_modules())
    for name in backbone.head_names:
        layers = [m for m in modules[name].modules() if isinstance(m, nn.Linear) and m.out_features == num_labels]
        if layers:
            nn.init.zeros_(layers[-1].weight)
            if layers[-1].bias is not None:
                nn.init.zeros_(layers[-1].bias)


def hybrid_backbone(backbone: Backbone, encoder: TableEncoder, text: RowText, num_labels: int,
                    wide: tuple[Any, Any] | None = None) -> Backbone:
    """``backbone`` (a text one) with table features beside it. ``wide``: the fitted logistic regression's
    weights and bias (training), which the wide path starts from; the text head and the deep path then
    start at zero. Without it (loading) the saved weights follow."""
    if backbone.preprocessor.input_kind != "text":
        from hf_adapt.errors import ConfigError

        raise ConfigError(f"table_features needs a text backbone; {backbone.family} models read "
                          f"{backbone.preprocessor.input_kind}")
    if wide is not None:
        _zero_text_head(backbone, num_labels)
    model = HybridModel(backbone.model, backbone.forward, encoder.width, num_labels)
    if wide is not None:
        with torch.no_grad():
            model.table_wide.weight.copy_(torch.as_tensor(wide[0], dtype=model.table_wide.weight.dtype))
            model.table_wide.bias.copy_(torch.as_tensor(wide[1], dtype=model.table_wide.bias.dtype))
    return Backbone(
        family=backbone.family, model=model, head_names=[f"text.{h}" for h in backbone.head_names] + [WIDE, DEEP],
        target_modules=backbone.target_modules, preprocessor=HybridPreprocessor(backbone.preprocessor, encoder, text),
        forward=hybrid_logits, peft_task_type=None,
        num_parameters=sum(p.numel() for p in model.parameters()),
        info={**backbone.info, "table_features": encoder.columns},
    )


def fit_hybrid(backbone: Backbone, table: TableInputs, rows: tuple[list, list], num_labels: int, seed: int,
               task=None) -> Backbone:
    """``backbone`` with ``table``'s encoding fitted on ``rows`` (inputs, labels) and the wide path initialised from
    the linear model of ``task`` (default classification: logistic regression) fitted on that encoding of them."""
    encoder = TableEncoder.fit(rows[0], table.kinds)
    features = encoder.encode(rows[0])
    wide = fit_linear(features, rows[1], num_labels, seed) if task is None else task.fit_wide(features, rows[1], seed)
    logger.info("table features: %d columns as %d features beside the text; the wide path starts from "
                "%s on %d rows", len(table.columns), encoder.width,
                getattr(task, "wide_model", "logistic regression"), len(rows[0]))
    hybrid = hybrid_backbone(backbone, encoder, RowText(table.text_column, table.feature_columns, table.template),
                             num_labels, wide)
    hybrid.info.update(table.data_info())  # recorded in hf_adapt.json's data block
    return hybrid


def freeze_wide(model: nn.Module) -> nn.Module:
    """Keep the wide path at the fitted logistic regression (after a regime made the head trainable): the text and
    deep paths then learn what it leaves. It is still saved with the head."""
    for name, parameter in model.named_parameters():
        if f"{WIDE}." in f"{name}.":
            parameter.requires_grad_(False)
    return model
