"""Weight files hf-adapt loads: safetensors only, each checked whole before any model is built.

Loading a pickled file (``torch.load`` of an untrusted ``adapter_model.bin``) can run code, so peft's
fallback to one is refused; a truncated or empty file is named before the base model loads.
"""

from __future__ import annotations

from pathlib import Path

from hf_adapt.errors import ModelError
from hf_adapt.run_record import read_object


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
