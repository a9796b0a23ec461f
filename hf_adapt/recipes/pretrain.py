"""Continued (domain) pretraining: masked or causal LM on unlabelled text, or supervised pretraining on labelled data.

Shared by ``recipes/pretrain.py`` (``accelerate launch``) and ``hf-adapt pretrain``. The output
is what a later ``finetune --init_from`` starts from; :func:`hf_adapt.lm.load_pretrained_lm`
rebuilds the language model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from hf_adapt.checkpoints import CheckpointOptions
from hf_adapt.config import DEFAULT_MODEL, changed_fields, redefault
from hf_adapt.errors import ConfigError
from hf_adapt.hub import PublishOptions
from hf_adapt.options import (
    BackboneOptions,
    CardOptions,
    DataOptions,
    LabelOptions,
    ModelOptions,
    QuantizationOptions,
    RegimeOptions,
    RuntimeOptions,
    SpeedOptions,
    TrainingOptions,
)

logger = logging.getLogger("hf_adapt.pretrain")


@dataclass
class PretrainConfig(ModelOptions, BackboneOptions, DataOptions, LabelOptions, RegimeOptions, QuantizationOptions,
                     TrainingOptions, RuntimeOptions, CardOptions, CheckpointOptions, PublishOptions, SpeedOptions):
    """Continue pretraining a text backbone on unlabelled text (masked LM for encoders, causal LM for
    decoders) and write it with its held-out perplexity before and after, and a model card; or, with
    objective: supervised, pretrain any backbone on a labelled source set (a finetune run, which the backbone
    and label fields configure).
    """

    objective: Literal["auto", "mlm", "clm", "supervised"] = field(default="auto", metadata={"help": "mlm: masked LM (encoders); clm: causal LM (decoders); auto: clm for decoders, mlm otherwise; supervised: classification pretraining on a labelled source set (runs finetune; set label_column)."})
    packing: bool = field(default=True, metadata={"help": "Concatenate tokenised documents and cut them into max_length blocks (false: truncate each document to max_length, pad per batch)."})
    mlm_probability: float = field(default=0.15, metadata={"help": "Masked LM: share of tokens masked (held-out data is masked once, with the seed)."})

    model_name_or_path: str = redefault(ModelOptions, "model_name_or_path", DEFAULT_MODEL, help="Hub id, local folder, or pkg://package/path inside an installed package (supervised: also timm names and hf-hub:/local-dir: ids).")
    max_length: int = redefault(ModelOptions, "max_length", 128, help="Tokens per block (packing) or per document (truncation).")
    data: str | None = redefault(DataOptions, "data", None, help="Text: a .txt file (one document a line), a CSV/JSON/parquet file, a folder of split files (train.txt, test.csv, ...), a Hub dataset id, or pkg://...; supervised: labelled data as for finetune.")
    text_column: str | None = redefault(DataOptions, "text_column", None, help="Column holding the documents (default: text; .txt files always give text). Rows whose text is empty are dropped with a warning.")
    validation_size: float = redefault(DataOptions, "validation_size", 0.1, help="Share of the documents held out to pick the best epoch when the data has no validation split.")
    test_size: float = redefault(DataOptions, "test_size", 0.1, help="Share of the documents held out for the reported before/after perplexity when the data has no test split.")
    label_column: str | None = redefault(LabelOptions, "label_column", None, help="Supervised: column holding the class label.")
    text_template: str | None = redefault(LabelOptions, "text_template", None)
    regime: str = redefault(RegimeOptions, "regime", "adapter", help="adapter: a peft method on the frozen LM (parameters the checkpoint lacks, e.g. a new MLM head, train too); full: all weights.")
    learning_rate: float = redefault(TrainingOptions, "learning_rate", 5e-4, help="Peak learning rate (AdamW); full-weight training usually wants less, e.g. 5e-5.")
    per_device_eval_batch_size: int = redefault(TrainingOptions, "per_device_eval_batch_size", 32)
    output_dir: str = redefault(RuntimeOptions, "output_dir", "outputs/pretrain", help="Where the model, metrics and card go (written atomically).")

    def validate(self) -> None:
        from hf_adapt.backbones import get_builder
        from hf_adapt.regimes import get_regime, regimes_that

        if not self.data and not self.data_files:
            raise ConfigError("data: no training data given; set data (a .txt file, a table file or folder, a Hub "
                              "dataset id, or pkg://...) or data_files")
        if not get_regime(self.regime).pretrains:
            raise ConfigError(f"regime {self.regime!r}: pretraining trains an adapter or the full model; use one of "
                              f"{', '.join(regimes_that('pretrains'))}")
        if self.task != "classification":
            raise ConfigError(f"task: {self.task} does not apply to hf-adapt pretrain (supervised pretraining learns "
                              "classes); train a regression model with hf-adapt finetune")
        if self.objective == "supervised":
            if not self.label_column:
                raise ConfigError("objective: supervised needs label_column (the source set's class labels)")
            finetune_config(self)  # the finetune run it becomes checks the rest now, not after loading
            return
        if self.family != "auto" and not get_builder(self.family).language_modelling:
            raise ConfigError(f"family: {self.family} cannot train objective {self.objective}; language modelling "
                              f"needs a transformers model ({self.family} backbones pretrain with objective: supervised)")
        supervised_only = [name for name in changed_fields(self, BackboneOptions, LabelOptions) if name != "family"]
        if supervised_only:
            raise ConfigError(f"{', '.join(supervised_only)}: set for objective {self.objective}, but only "
                              "objective: supervised (classification pretraining) uses them")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError(f"mlm_probability must be between 0 and 1, got {self.mlm_probability}")


def finetune_config(cfg: PretrainConfig):
    """The finetune run that supervised pretraining is: every field both configs share, tables rendered as
    ``column: value`` pairs, and the best epoch picked by accuracy."""
    from hf_adapt.recipes.finetune import FinetuneConfig

    shared = {f.name for f in fields(FinetuneConfig) if f.init} & {f.name for f in fields(cfg) if f.init}
    values = {name: getattr(cfg, name) for name in shared}
    return FinetuneConfig(**values, metric_for_best_model="accuracy")


def data_spec(cfg: PretrainConfig):
    from hf_adapt.data import DataSpec

    limits = {}
    if cfg.max_train_samples:
        limits["train"] = cfg.max_train_samples
    if cfg.max_eval_samples:
        limits.update(validation=cfg.max_eval_samples, test=cfg.max_eval_samples)
    return DataSpec(source=cfg.data, data_files=cfg.data_files, subset=cfg.data_subset, revision=cfg.data_revision,
                    text_column=cfg.text_column, validation_size=cfg.validation_size, test_size=cfg.test_size,
                    seed=cfg.seed, max_samples=limits, load_kwargs=cfg.data_kwargs or {})


def backbone_spec(cfg: PretrainConfig):
    from hf_adapt.backbones import BackboneSpec

    return BackboneSpec(name_or_path=cfg.model_name_or_path, num_labels=0, family="transformers",
                        revision=cfg.model_revision, trust_remote_code=cfg.trust_remote_code, max_length=cfg.max_length,
                        quantization=cfg.quantization)


@dataclass
class PretrainResult:
    """What a language-modelling run produced; ``model`` is the unwrapped, best-epoch model (peft-wrapped
    under an adapter)."""

    output_dir: Path
    metrics: dict[str, float]  # eval_results.json
    objective: str
    fit: Any
    model: Any
    backbone: Any
    corpus: Any
    push: Any = None  # hf_adapt.hub.PushResult when pushed


def main(cfg: PretrainConfig) -> PretrainResult:
    """Run ``cfg``: a :class:`PretrainResult`, or for ``objective: supervised`` the finetune run's result."""
    if cfg.objective == "supervised":
        from hf_adapt.recipes.finetune import main as finetune_main

        return finetune_main(finetune_config(cfg))
    from hf_adapt import lm
    from hf_adapt.artifacts import gathered_state
    from hf_adapt.loop import fit
    from hf_adapt.run import recipe_run

    with recipe_run(cfg) as run:
        setup = _prepare(cfg, run)  # everything that can fail on bad input happens before training
        accelerator, checkpoints = run.accelerator, run.checkpoints
        with run.writing():
            task = lm.LanguageModelingTask(causal=setup.objective == "clm")
            test_loader = accelerator.prepare(setup.eval_loaders["test"])
            before = lm.ScoreBefore(task, test_loader)
            model, history = fit(accelerator, setup.model, task, setup.train_loader, setup.eval_loaders["validation"],
                                 _loop_settings(cfg), evaluate_fn=lm.evaluate_lm, callbacks=[before],
                                 checkpoints=checkpoints.phase(accelerator, "train") if checkpoints else None)
            loss, tokens = lm.loss_and_tokens(accelerator, model, task, test_loader)
            metrics = {"eval_loss": loss, "perplexity": lm.perplexity(loss), "eval_loss_before": before.loss,
                       "perplexity_before": lm.perplexity(before.loss), "eval_tokens": tokens}
            logger.info("test: perplexity %.2f -> %.2f over %d tokens", metrics["perplexity_before"],
                        metrics["perplexity"], tokens)
            unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
            state = gathered_state(accelerator, unwrapped)  # FSDP2 / ZeRO-3 shards, gathered by every process
            blocks = setup.blocks
            token_counts = {split: sum(len(ids) for ids in blocks[split]["input_ids"]) for split in blocks}
            sizes = {"blocks": {k: len(v) for k, v in blocks.items()}, "tokens": token_counts}
            run.write(lambda directory: _write_outputs(
                directory, cfg, accelerator, unwrapped, setup.backbone, setup.objective, setup.corpus, history,
                metrics, sizes, setup.trainable, setup.total, run.seconds, state))
        pushed = run.push()
    return PretrainResult(Path(cfg.output_dir), metrics, setup.objective, history, unwrapped, setup.backbone,
                          setup.corpus, pushed)


@dataclass
class _Setup:
    """The corpus, tokenized, and the model to train, checked before anything trains."""

    corpus: Any
    backbone: Any
    objective: str
    blocks: dict[str, Any]
    model: Any
    train_loader: Any
    eval_loaders: dict[str, Any]
    trainable: int
    total: int


def _prepare(cfg: PretrainConfig, run) -> _Setup:
    from hf_adapt import lm
    from hf_adapt.adapters import count_parameters
    from hf_adapt.data import load_corpus
    from hf_adapt.regimes import get_regime
    from hf_adapt.speed import apply_liger

    corpus = load_corpus(data_spec(cfg))
    backbone, objective = lm.build_lm(backbone_spec(cfg), cfg.objective)
    tokenizer = backbone.preprocessor.tokenizer
    blocks = {split: lm.tokenize(dataset, tokenizer, corpus.column, objective, cfg.max_length, cfg.packing)
              for split, dataset in corpus.splits.items()}
    held_out = {split: lm.fixed_eval_examples(blocks[split], tokenizer, objective, cfg.mlm_probability, cfg.seed, split)
                for split in ("validation", "test")}
    regime = get_regime(cfg.regime)
    if regime.uses_adapter:
        lm.check_mergeable(cfg.adapter)
    apply_liger(backbone.model, cfg)  # Liger's kernels into the transformers model, when asked
    model = regime.apply(backbone, cfg.adapter)
    if regime.uses_adapter:
        lm.train_new_parameters(model, backbone)
    train_loader = lm.make_lm_loader(blocks["train"], lm.train_collator(tokenizer, objective, cfg.mlm_probability),
                                     cfg.per_device_train_batch_size, True, cfg.seed, cfg.num_workers)
    eval_loaders = {split: lm.make_lm_loader(examples, lm.eval_collator(tokenizer), cfg.per_device_eval_batch_size,
                                             False, cfg.seed, cfg.num_workers) for split, examples in held_out.items()}
    trainable, total = count_parameters(model)
    logger.info("%s objective, %s train blocks, %s trainable of %s parameters", objective, f"{len(blocks['train']):,}",
                f"{trainable:,}", f"{total:,}")
    if run.checkpoints is not None:
        run.checkpoints.open(run.accelerator, cfg, corpus.origin.get("sha256"))
    return _Setup(corpus, backbone, objective, blocks, model, train_loader, eval_loaders, trainable, total)


def _loop_settings(cfg: PretrainConfig):
    from hf_adapt.loop import LoopSettings

    return LoopSettings(
        num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay, lr_scheduler_type=cfg.lr_scheduler_type, warmup_ratio=cfg.warmup_ratio,
        max_grad_norm=cfg.max_grad_norm, metric_for_best_model="loss", logging_steps=cfg.logging_steps,
    )


def _write_outputs(directory: Path, cfg: PretrainConfig, accelerator, model, backbone, objective, corpus, history,
                   metrics, sizes, trainable, total, wall_seconds, state=None) -> None:
    _write_run_files(directory, cfg, accelerator, model, backbone, objective, corpus, history, metrics, sizes,
                     wall_seconds, state)
    _write_card(directory, cfg, accelerator, backbone, objective, corpus, history, metrics, sizes, trainable, total)


def _write_run_files(directory: Path, cfg: PretrainConfig, accelerator, model, backbone, objective, corpus, history,
                     metrics, sizes, wall_seconds, state=None) -> None:
    """The language model, its run record and the result files."""
    from hf_adapt.config import save_config
    from hf_adapt.lm import save_lm
    from hf_adapt.outputs import write_json
    from hf_adapt.run_record import RunRecord, write_record

    save_lm(model, backbone, cfg.regime, directory, state)
    data_info = {"source": corpus.origin["source"], "text_column": corpus.column, "packing": cfg.packing,
                 "mlm_probability": cfg.mlm_probability if objective == "mlm" else None}
    write_record(directory, RunRecord("language_model", "pretrain", {
        "family": "transformers",
        "objective": objective,
        "regime": cfg.regime,
        # pin Hub bases to the commit trained on, so reloads cannot drift
        "model": {"name_or_path": cfg.model_name_or_path, "revision": cfg.model_revision or backbone.info.get("commit"),
                  "trust_remote_code": cfg.trust_remote_code, "base_model_id": cfg.base_model_id,
                  "max_length": cfg.max_length, "quantization": cfg.quantization},
        "data": data_info,
    }))
    write_json(directory / "eval_results.json", metrics)
    write_json(directory / "train_results.json", {
        "best_epoch": history.best_epoch, "best_validation": history.best_metrics, "history": history.history,
        "steps": history.steps, "train_seconds": history.train_seconds, "wall_seconds": wall_seconds,
        "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "data": {**corpus.origin, **sizes},
    })
    save_config(cfg, directory / "config.yaml")


def _write_card(directory: Path, cfg: PretrainConfig, accelerator, backbone, objective, corpus, history, metrics, sizes,
                trainable, total) -> None:
    """The card's facts (``card_facts.json``) and the card rendered from them."""
    from hf_adapt import cards
    from hf_adapt.lm import LM_HEAD_FILE, PIPELINE_TAGS
    from hf_adapt.regimes import get_regime, regime_facts

    base_model = cfg.base_model_id or backbone.info.get("hub_id")
    dataset_name = cfg.dataset_title(cfg.data or next(iter(cfg.data_files.values())))
    new_keys = backbone.info["new_keys"]
    facts = {
        "card_template": "pretrain.md",
        "summary": _summary(cfg, objective, base_model, dataset_name, metrics),
        "base_model": base_model,
        "model_source": cfg.model_name_or_path,
        "family": "transformers",
        "objective": objective,
        "pipeline_tag": PIPELINE_TAGS[objective],
        **regime_facts(cfg.regime, cfg.adapter),
        "new_parameters": {"count": len(new_keys), "names": new_keys[:8],
                           "file": LM_HEAD_FILE if new_keys and get_regime(cfg.regime).uses_adapter else None},
        "dataset_name": dataset_name,
        "data_source": cfg.data_files or cfg.data,
        "data_revision": corpus.origin["revision"],
        "data_sha256": corpus.origin["sha256"],
        "data_kind": "text",
        "input_kind": "text",
        "text_column": corpus.column,
        "dropped_empty_rows": corpus.origin["dropped_empty_rows"],
        "split_sizes": corpus.origin["splits"],
        "split_method": corpus.origin["split_method"],
        "blocks": sizes["blocks"],
        "tokens": sizes["tokens"],
        "packing": cfg.packing,
        "max_length": cfg.max_length,
        "mlm_probability": cfg.mlm_probability,
        "eval_results": metrics,
        "test_metrics": {"perplexity": metrics["perplexity"], "loss": metrics["eval_loss"]},
        "history": history.history,
        "best_epoch": history.best_epoch,
        "metric_for_best_model": "loss",
        "steps": history.steps,
        "train_seconds": history.train_seconds,
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    cards.write_card(directory, cfg, accelerator, "pretrain", facts)


def _summary(cfg: PretrainConfig, objective: str, base_model, dataset_name: str, metrics: dict[str, float]) -> str:
    from hf_adapt.regimes import get_regime

    base = f"`{base_model or cfg.model_name_or_path}`"
    kind = "masked" if objective == "mlm" else "causal"
    regime = get_regime(cfg.regime)
    how = regime.describe(cfg.adapter) if regime.uses_adapter else "full-weight training"
    before, after = metrics["perplexity_before"], metrics["perplexity"]
    return (f"A {kind} language model continued-pretrained from {base} with {how} on {dataset_name} by hf-adapt; "
            f"held-out test perplexity {before:.2f} before and {after:.2f} after.")
