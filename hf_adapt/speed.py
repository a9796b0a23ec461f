"""Speed options: TF32, ``torch.compile`` and Liger kernels, each off unless the config turns it on.

:class:`hf_adapt.options.SpeedOptions` is the config component (finetune, pretrain, feedback); ``group_by_length``, the
text option that cuts padding, is a classifier's (:class:`hf_adapt.options.ClassifierOptions`) because only the
classification loaders take it. Each option is checked twice, as QLoRA's are (:mod:`hf_adapt.quantization`): when
the config is read (what makes no sense with the rest of the config), and on the machine before anything trains
(:func:`require_runtime`: a CUDA GPU for TF32 and Liger, ``liger-kernel`` installed, an architecture Liger patches),
so an option that could not take effect is refused naming its field, never silently dropped.

Where each was measured is in ``docs/scale.md`` (speed options); ``benchmarks/speed.py`` measures what a CPU can
and ``benchmarks/gpu.py`` has a row for each.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from hf_adapt.errors import ConfigError

logger = logging.getLogger("hf_adapt.speed")

LIGER_INSTALL = "pip install liger-kernel"
# the kernels that leave a model's forward as it is: our tasks compute the loss from the logits, which Liger's fused
# linear cross-entropy (its default for causal LMs) never materialises
LIGER_CONFIG = {"fused_linear_cross_entropy": False, "cross_entropy": False}


def require_runtime(cfg: Any) -> None:
    """Refuse, before anything trains, what this machine cannot do: TF32 or Liger without a CUDA GPU, Liger
    without its package."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.tf32 and not cuda:
        raise ConfigError("tf32: true needs a CUDA GPU (TensorFloat-32 is an NVIDIA Ampere-or-newer number format); "
                          "this machine has none, so it would change nothing: leave tf32 unset here")
    if cfg.liger_kernel:
        if importlib.util.find_spec("liger_kernel") is None:
            raise ConfigError(f"liger_kernel: true needs the liger-kernel package, which is not installed: "
                              f"{LIGER_INSTALL} (on a machine with a CUDA GPU)")
        if not cuda:
            raise ConfigError("liger_kernel: true needs a CUDA GPU (Liger's kernels are Triton GPU kernels); this "
                              "machine has none: leave liger_kernel unset here")


def enable(cfg: Any) -> None:
    """Turn on what ``cfg`` asks of the process (TF32), after :func:`require_runtime`."""
    if cfg.tf32:
        from transformers.utils import enable_tf32

        enable_tf32(True)
        logger.info("tf32: float32 matmuls and convolutions run in TensorFloat-32")


def accelerator_kwargs(cfg: Any) -> dict[str, Any]:
    """``Accelerator`` arguments for ``cfg``: a dynamo plugin when ``torch_compile`` (``accelerator.prepare``
    then compiles the model, and ``unwrap_model`` returns the module that was compiled); none otherwise."""
    if not getattr(cfg, "torch_compile", False):
        return {}
    from accelerate.utils import TorchDynamoPlugin

    return {"dynamo_plugin": TorchDynamoPlugin(backend="inductor", mode=cfg.torch_compile_mode)}


def liger_model_types() -> list[str]:
    """The ``model_type`` values Liger patches (its installed version's list)."""
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    return sorted(MODEL_TYPE_TO_APPLY_LIGER_FN)


def transformers_model(model: Any) -> Any:
    """The outermost transformers ``PreTrainedModel`` inside ``model`` (under peft or a pooling head), or None."""
    from transformers import PreTrainedModel

    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def check_liger_model(model: Any) -> str:
    """The ``model_type`` of the transformers model inside ``model`` (peft- or head-wrapped), refused unless Liger
    has kernels for it."""
    inner = transformers_model(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    if model_type is None:
        raise ConfigError("liger_kernel: true patches transformers models; this model has no transformers config: "
                          "leave liger_kernel unset")
    supported = liger_model_types()
    if model_type not in supported:
        raise ConfigError(f"liger_kernel: model type {model_type!r} has no Liger kernels (this liger-kernel "
                          f"supports {', '.join(supported)}): leave liger_kernel unset")
    return model_type


def apply_liger(model: Any, cfg: Any) -> Any:
    """``model`` with Liger's kernels patched into its transformers model, when ``cfg.liger_kernel``."""
    if not getattr(cfg, "liger_kernel", False):
        return model
    from transformers.integrations.liger import apply_liger_kernel

    model_type = check_liger_model(model)
    apply_liger_kernel(transformers_model(model), LIGER_CONFIG)
    logger.info("liger_kernel: Liger's kernels patched into the %s model", model_type)
    return model


def row_lengths(preprocessor: Any, inputs: list[Any], group_by_length: bool) -> list[int] | None:
    """Each training row's length in tokens for ``group_by_length`` (None when it is off); refused for inputs
    that are not text (images come in one size: there is no padding to save)."""
    if not group_by_length:
        return None
    if preprocessor.input_kind != "text" or not hasattr(preprocessor, "lengths"):
        raise ConfigError(f"group_by_length groups texts by token length; this model reads "
                          f"{preprocessor.input_kind} inputs, which have no padding to save: leave group_by_length "
                          "unset")
    return preprocessor.lengths(inputs)
