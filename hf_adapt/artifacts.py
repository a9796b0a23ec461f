"""Save a trained model as its smallest faithful artifact, and restore it onto a fresh backbone.

- ``adapter``: peft's ``adapter_config.json`` + ``adapter_model.safetensors`` (head included
  through ``modules_to_save``);
- ``linear_probe``: ``head.safetensors``;
- ``full``: ``model.safetensors``.

Next to it: ``label_map.json``, the preprocessor files and ``hf_adapt.json``, which says
how to rebuild the base model. Everything loads with safetensors; nothing executes code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from hf_adapt.backbones import Backbone
from hf_adapt.errors import ModelError
from hf_adapt.outputs import RUN_FILE, write_json

HEAD_FILE = "head.safetensors"
MODEL_FILE = "model.safetensors"
LABEL_FILE = "label_map.json"
FORMAT_VERSION = 1
# what each regime saves: gradual unfreezing ends with every weight trained
ARTIFACT_KIND = {"adapter": "adapter", "linear_probe": "linear_probe", "full": "full", "gradual_unfreeze": "full"}


def check_safetensors(directory: Path) -> None:
    """Adapters load from safetensors only: peft would fall back to a pickled ``adapter_model.bin``
    (``torch.load`` of an untrusted file), so a folder without ``adapter_model.safetensors`` is refused.
    The file must be whole and ``adapter_config.json`` a JSON object: both are checked before any model loads."""
    if not (Path(directory) / "adapter_model.safetensors").is_file():
        raise ModelError(f"{directory} has no adapter_model.safetensors; hf-adapt loads adapters only from "
                         "safetensors (a pickled adapter_model.bin could run code)")
    check_weights_file(Path(directory) / "adapter_model.safetensors")
    read_object(Path(directory) / "adapter_config.json")


def check_weights_file(path: Path) -> None:
    """``path`` is a whole safetensors file (its header parses and its tensors fit in the file); reads no tensor."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelError(f"{path} is missing: the output is incomplete; copy or download it again")
    try:
        with safe_open(str(path), framework="pt") as weights:
            weights.keys()
    except (SafetensorError, OSError) as err:
        raise ModelError(f"{path}: not a whole safetensors file ({err}); the output is damaged (an interrupted "
                         "copy or download?): copy or download it again") from err


def check_artifacts(directory: Path, info: dict[str, Any]) -> None:
    """The weight files ``info``'s regime (and a continual model's per-experience adapters) needs are present and
    whole: checked before the base model is built, so a damaged output fails at once, naming the file."""
    regime = ARTIFACT_KIND.get(info["regime"], info["regime"])
    if regime == "adapter":
        check_safetensors(directory)
    elif regime in ("linear_probe", "full"):
        check_weights_file(directory / (HEAD_FILE if regime == "linear_probe" else MODEL_FILE))
    else:
        raise ModelError(f"{directory / RUN_FILE}: unknown regime {info['regime']!r}")
    adapters = (info.get("continual") or {}).get("adapters") or {}
    for name in sorted(set(adapters.values()) - {"default"}):  # one adapter per experience
        check_safetensors(directory / name)


def weights_fingerprint(backbone: Backbone) -> str:
    """A short hash of a freshly built backbone's weights (the head excluded: it is new or replaced): every
    tensor's name, shape, dtype and first 64 values. Recorded at training and checked on load, it tells a base
    that merely has the right shapes (another checkpoint, a different revision) from the one trained on."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in backbone.model.state_dict().items():
        if any(f".{head}." in f".{name}" for head in backbone.head_names):
            continue
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}\0".encode())
        digest.update(tensor.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def check_base(backbone: Backbone, model_info: dict[str, Any], where: str) -> None:
    """Refuse to put an adapter on a base other than the one it was trained on (outputs that recorded one)."""
    recorded = model_info.get("weights_fingerprint")
    now = weights_fingerprint(backbone) if recorded else None
    if recorded and recorded != now:
        raise ModelError(
            f"{where}: the adapter was trained on other base weights than {model_info.get('name_or_path')!r} "
            f"(revision {model_info.get('revision')}) holds now (weights fingerprint {recorded} when trained, "
            f"{now} now); load the base it was trained on")


def save_model(model: nn.Module, backbone: Backbone, regime: str, directory: Path) -> None:
    from safetensors.torch import save_file
    from safetensors.torch import save_model as save_full

    regime = ARTIFACT_KIND.get(regime, regime)
    if regime == "adapter":
        model.save_pretrained(str(directory))
    elif regime == "linear_probe":
        state = model.state_dict()
        prefixes = tuple(f"{name}." for name in backbone.head_names)
        save_file({k: v.contiguous() for k, v in state.items() if k.startswith(prefixes)}, str(directory / HEAD_FILE))
    elif regime == "full":
        save_full(model, str(directory / MODEL_FILE))
    else:
        raise ValueError(f"unknown regime {regime!r}")


def restore_model(backbone: Backbone, regime: str, directory: Path) -> nn.Module:
    """Apply the saved adapter, head or full weights in ``directory`` to a fresh backbone."""
    from safetensors.torch import load_file, load_model

    model = backbone.model
    regime = ARTIFACT_KIND.get(regime, regime)
    if regime == "adapter":
        from peft import PeftModel

        check_safetensors(directory)
        try:
            return PeftModel.from_pretrained(model, str(directory))
        except RuntimeError as err:  # e.g. a head of another size than label_map.json's labels
            if "size mismatch" not in str(err):
                raise
            raise ModelError(f"{directory}: the adapter does not fit the model its hf_adapt.json and label_map.json "
                             f"describe (base model or number of labels differ): {str(err).splitlines()[-1].strip()}") from err
    if regime == "linear_probe":
        missing = set(load_file(str(directory / HEAD_FILE))) - set(model.state_dict())
        if missing:
            raise ModelError(f"{directory / HEAD_FILE} holds tensors the model lacks: {sorted(missing)[:5]}")
        model.load_state_dict(load_file(str(directory / HEAD_FILE)), strict=False)
        return model
    if regime == "full":
        load_model(model, str(directory / MODEL_FILE))
        return model
    raise ModelError(f"{directory / RUN_FILE}: unknown regime {regime!r}")


def column_kinds(data) -> dict[str, str] | None:
    """How training read each feature column of a table (``LabelledData``): "number", "text", "bool" or
    "other" (dates, all-empty columns ...). Recorded in ``hf_adapt.json``'s data block, so a served model can
    refuse a row whose values are of another kind; None for texts and images."""
    if data.kind != "table":
        return None
    features = data.splits["train"].features
    kinds = {}
    for column in data.feature_columns:
        dtype = str(getattr(features[column], "dtype", ""))
        kinds[column] = ("bool" if dtype == "bool" else "number" if dtype.startswith(("int", "uint", "float"))
                         else "text" if dtype in ("string", "large_string") else "other")
    return kinds


def write_run_info(directory: Path, info: dict[str, Any], labels: list[str]) -> None:
    write_json(directory / RUN_FILE, {"format_version": FORMAT_VERSION, **info})
    write_json(directory / LABEL_FILE, {
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    })


def read_object(path: Path) -> dict[str, Any]:
    """A JSON file holding one object; a missing, empty, broken or non-object file is refused, naming it."""
    import json

    if not path.is_file():
        raise ModelError(f"{path} is missing: the output is incomplete; copy or download it again")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ModelError(f"{path}: not valid JSON (not utf-8 text: {err})") from err
    except ValueError as err:
        raise ModelError(f"{path}: not valid JSON ({'the file is empty' if not path.stat().st_size else err})") from err
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object, got a JSON {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    names = {list: "list", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _other_output(info: dict[str, Any]) -> tuple[str, str] | None:
    """What another recipe's output holds, and the function that loads it; None for a classifier's."""
    recipe = info.get("recipe")
    if recipe == "pretrain":
        return (f"a {info.get('objective')} language model",
                "hf_adapt.lm.load_pretrained_lm (or start a classifier from it with finetune --init_from)")
    if recipe == "feedback" and info.get("objective") == "reward":
        return "a reward model", "hf_adapt.feedback.load_reward_model"
    if recipe == "feedback":
        return f"a {info.get('trainer')} policy", "hf_adapt.feedback.load_policy"
    if recipe == "transfer_study":
        return ("a study of several runs", "hf_adapt.load_adapted on one of its runs: each "
                "runs/<arm>/<budget>/<seed>/ folder holds a finetune output")
    return None


CLASSIFIER_KEYS = {"family": str, "regime": str, "model": dict, "data": dict}


def read_run_info(directory: Path) -> tuple[dict[str, Any], list[str]]:
    """A classifier output's ``hf_adapt.json`` and its labels in logit order (``label_map.json``).

    Refused, naming the file: a folder without ``hf_adapt.json``; a file that is not a JSON object, lacks a
    key loading needs, or comes from a newer hf-adapt; another recipe's output (with the loader that fits it);
    a label map that is not ``id2label`` over ``"0".."n-1"``.
    """
    path = directory / RUN_FILE
    if not path.is_file():
        raise ModelError(f"{directory} is not an hf-adapt output: {RUN_FILE} is missing")
    info = read_object(path)
    version = info.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise ModelError(f"{path}: format_version {version} is newer than this hf-adapt reads ({FORMAT_VERSION}); "
                         "upgrade hf-adapt to load it")
    recipe, other = info.get("recipe"), _other_output(info)
    if other is not None:
        raise ModelError(f"{directory} is a {recipe} output ({path} says so): {other[0]}, not a classifier; "
                         f"load it with {other[1]}")
    if recipe not in (None, "finetune", "continual"):
        raise ModelError(f"{path}: recipe {recipe!r} is not one whose output load_adapted reads (finetune, continual)")
    for key, kind in CLASSIFIER_KEYS.items():
        if not isinstance(info.get(key), kind):
            raise ModelError(f"{path}: {key!r} is missing or not {'an object' if kind is dict else 'a string'}")
    return info, _read_labels(directory / LABEL_FILE)


def _read_labels(path: Path) -> list[str]:
    id2label = read_object(path).get("id2label")
    n = len(id2label) if isinstance(id2label, dict) else 0
    if not n or set(id2label) != {str(i) for i in range(n)} or not all(
            isinstance(v, str) and v for v in id2label.values()):
        raise ModelError(f"{path}: id2label must map '0'..'{max(n - 1, 0)}' to label names, got {id2label!r}"[:400])
    return [id2label[str(i)] for i in range(n)]
