"""Save a trained model as its smallest faithful artifact, and restore it onto a fresh backbone.

- ``adapter``: peft's ``adapter_config.json`` + ``adapter_model.safetensors`` (head included
  through ``modules_to_save``);
- ``linear_probe``: ``head.safetensors``;
- ``full``: ``model.safetensors``;

each written and read by its regime (:mod:`hf_adapt.regimes`).

Next to it: ``label_map.json``, the preprocessor files and ``hf_adapt.json``, which says
how to rebuild the base model. Everything loads with safetensors; nothing executes code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hf_adapt.backbones import Backbone, weights_fingerprint
from hf_adapt.errors import ConfigError, ModelError
from hf_adapt.outputs import RUN_FILE, write_json
from hf_adapt.run_record import RunRecord, kind_of, read_object, read_record, write_record
from hf_adapt.weights import check_safetensors, check_weights_file  # noqa: F401 - where loaders look for them

LABEL_FILE = "label_map.json"


def check_artifacts(directory: Path, info: dict[str, Any]) -> None:
    """The weight files ``info``'s regime (and a continual model's per-experience adapters) needs are present and
    whole: checked before the base model is built, so a damaged output fails at once, naming the file."""
    from hf_adapt.regimes import get_regime

    try:
        regime = get_regime(info["regime"])
    except ConfigError:
        raise ModelError(f"{directory / RUN_FILE}: unknown regime {info['regime']!r}") from None
    regime.check(directory)
    adapters = (info.get("continual") or {}).get("adapters") or {}
    for name in sorted(set(adapters.values()) - {"default"}):  # one adapter per experience
        check_safetensors(directory / name)


def check_base(backbone: Backbone, model_info: dict[str, Any], where: str) -> None:
    """Refuse to put an adapter on a base other than the one it was trained on (outputs that recorded one)."""
    recorded = model_info.get("weights_fingerprint")
    now = weights_fingerprint(backbone) if recorded else None
    if recorded and recorded != now:
        raise ModelError(
            f"{where}: the adapter was trained on other base weights than {model_info.get('name_or_path')!r} "
            f"(revision {model_info.get('revision')}) holds now (weights fingerprint {recorded} when trained, "
            f"{now} now); load the base it was trained on")


def base_model_info(cfg: Any, backbone: Backbone) -> dict[str, Any]:
    """The ``model`` block of ``hf_adapt.json``: how to rebuild the base a classification run (finetune, or
    continual from scratch) started from, read off its config's model fields and the backbone as built."""
    from hf_adapt.regimes import get_regime

    return {"name_or_path": cfg.model_name_or_path, "weights_file": cfg.weights_file,
            # pin Hub bases to the commit trained on, so reloads cannot drift
            "pretrained": cfg.pretrained, "revision": cfg.model_revision or backbone.info.get("commit"),
            "trust_remote_code": cfg.trust_remote_code, "image_size": cfg.image_size,
            "max_length": cfg.max_length, "pooling": backbone.info.get("pooling"), "base_model_id": cfg.base_model_id,
            "quantization": getattr(cfg, "quantization", None),  # how training loaded it; reloads use full precision
            # the base weights an adapter or probe sits on; a full fine-tune, a scratch model or a transfer
            # chain (its merged init weights) restores or rebuilds them, so there is nothing to check
            "weights_fingerprint": backbone.info.get("weights_fingerprint") if cfg.pretrained and not cfg.init_from
            and get_regime(cfg.regime).keeps_base else None}


def save_model(model: nn.Module, backbone: Backbone, regime: str, directory: Path,
               state: dict[str, Any] | None = None) -> None:
    """The smallest files that restore ``model``: what ``regime`` trains (see :mod:`hf_adapt.regimes`); ``state``:
    its :func:`gathered_state` where its parameters are sharded."""
    from hf_adapt.regimes import get_regime

    if state is None:  # a registered regime written before sharded saving keeps working unsharded
        get_regime(regime).save(model, backbone, directory)
    else:
        get_regime(regime).save(model, backbone, directory, state)


def gathered_state(accelerator, model: nn.Module, trainable_only: bool = False) -> dict[str, Any] | None:
    """The full state dict of a model whose parameters are sharded across processes, gathered to the main process
    (in CPU memory), for :func:`save_model` to write what one process would; None where nothing is sharded (one
    process, DDP, ZeRO-1/2: the model holds its full weights) and on the other processes. ``trainable_only``: only
    the parameters that train (and the buffers), e.g. an adapter, not the frozen base.

    A collective: every process must call it. FSDP2 (``fully_shard``, which Accelerate's ``fsdp_version: 2``
    applies) is read through ``torch.distributed.checkpoint``'s full state dict; DeepSpeed ZeRO-3 through
    ``accelerator.get_state_dict``, which consolidates its partitions."""
    from hf_adapt.sharding import is_fsdp2, zero3_engine

    if is_fsdp2(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=trainable_only)
        state = get_model_state_dict(model, options=options)
        return state if accelerator.is_main_process else None
    engine = zero3_engine(accelerator, model)
    if engine is not None:  # consolidated by the DeepSpeed engine that wraps ``model``
        state = accelerator.get_state_dict(engine)  # needs zero3_save_16bit_model (recipes/accelerate sets it)
        if not accelerator.is_main_process:
            return None
        frozen = {n for n, p in model.named_parameters() if not p.requires_grad} if trainable_only else set()
        return {k: v for k, v in state.items() if k not in frozen}
    return None


def restore_model(backbone: Backbone, regime: str, directory: Path) -> nn.Module:
    """Apply the saved adapter, head or full weights in ``directory`` to a fresh backbone."""
    from hf_adapt.regimes import get_regime

    try:
        restorer = get_regime(regime)
    except ConfigError:
        raise ModelError(f"{directory / RUN_FILE}: unknown regime {regime!r}") from None
    return restorer.restore(backbone, directory)


def column_kinds(data) -> dict[str, str] | None:
    """How training read each feature column of a table (``LabelledData``): "number", "text", "bool" or
    "other" (dates, all-empty columns ...). Recorded in ``hf_adapt.json``'s data block, so a served model can
    refuse a row whose values are of another kind; None for texts and images."""
    if data.kind != "table":
        return None
    from hf_adapt.table_features import column_kinds as kinds_of

    return kinds_of(data.splits["train"], data.feature_columns)


def write_run_info(directory: Path, info: dict[str, Any], labels: list[str]) -> None:
    """A classifier's record (``info`` holds its ``recipe``: finetune or continual) and its label map."""
    fields = {k: v for k, v in info.items() if k != "recipe"}
    write_record(directory, RunRecord(kind_of(info["recipe"]), info["recipe"], fields))
    write_json(directory / LABEL_FILE, {
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    })


CLASSIFIER_KEYS = {"family": str, "regime": str, "model": dict, "data": dict}


def read_run_info(directory: Path) -> tuple[dict[str, Any], list[str]]:
    """A classifier output's ``hf_adapt.json`` and its labels in logit order (``label_map.json``).

    Refused, naming the file: what :func:`~hf_adapt.run_record.read_record` refuses; another kind of output
    (with the loader that fits it); a record that lacks a key loading needs; a label map that is not
    ``id2label`` over ``"0".."n-1"``.
    """
    record = read_record(directory).expect(("classifier", "continual_classifier"), directory, "a classifier")
    info = record.as_dict()
    for key, kind in CLASSIFIER_KEYS.items():
        if not isinstance(info.get(key), kind):
            raise ModelError(f"{directory / RUN_FILE}: {key!r} is missing or not {'an object' if kind is dict else 'a string'}")
    return info, _read_labels(directory / LABEL_FILE)


def _read_labels(path: Path) -> list[str]:
    id2label = read_object(path).get("id2label")
    n = len(id2label) if isinstance(id2label, dict) else 0
    if not n or set(id2label) != {str(i) for i in range(n)} or not all(
            isinstance(v, str) and v for v in id2label.values()):
        raise ModelError(f"{path}: id2label must map '0'..'{max(n - 1, 0)}' to label names, got {id2label!r}"[:400])
    return [id2label[str(i)] for i in range(n)]
