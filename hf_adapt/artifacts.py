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
from hf_adapt.outputs import RUN_FILE, read_json, write_json

HEAD_FILE = "head.safetensors"
MODEL_FILE = "model.safetensors"
LABEL_FILE = "label_map.json"
FORMAT_VERSION = 1
# what each regime saves: gradual unfreezing ends with every weight trained
ARTIFACT_KIND = {"adapter": "adapter", "linear_probe": "linear_probe", "full": "full", "gradual_unfreeze": "full"}


def check_safetensors(directory: Path) -> None:
    """Adapters load from safetensors only: peft would fall back to a pickled ``adapter_model.bin``
    (``torch.load`` of an untrusted file), so a folder without ``adapter_model.safetensors`` is refused."""
    if not (Path(directory) / "adapter_model.safetensors").is_file():
        raise ModelError(f"{directory} has no adapter_model.safetensors; hf-adapt loads adapters only from "
                         "safetensors (a pickled adapter_model.bin could run code)")


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


def write_run_info(directory: Path, info: dict[str, Any], labels: list[str]) -> None:
    write_json(directory / RUN_FILE, {"format_version": FORMAT_VERSION, **info})
    write_json(directory / LABEL_FILE, {
        "id2label": {str(i): name for i, name in enumerate(labels)},
        "label2id": {name: i for i, name in enumerate(labels)},
    })


def read_run_info(directory: Path) -> tuple[dict[str, Any], list[str]]:
    if not (directory / RUN_FILE).is_file():
        raise ModelError(f"{directory} is not an hf-adapt output: {RUN_FILE} is missing")
    info = read_json(directory / RUN_FILE)
    id2label = read_json(directory / LABEL_FILE)["id2label"]
    return info, [id2label[str(i)] for i in range(len(id2label))]
