"""Vision backbones: any ``timm.create_model`` name, ``hf-hub:`` id, local folder or weights file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hf_adapt.backbones.base import Backbone, BackboneSpec, adapter_target_names
from hf_adapt.errors import ConfigError, ModelError
from hf_adapt.sources import resolve_source

PREPROCESSOR_FILE = "preprocessor_config.json"
_PREFIXES = ("hf-hub:", "local-dir:")

# Named train_transform settings: timm create_transform(is_training=True) kwargs.
TRANSFORM_PRESETS: dict[str, dict[str, Any]] = {
    # Radiographs and scans: mild crops only, since anatomy fills the frame and its position
    # carries meaning; no flips (laterality: a left lung flipped is a right lung); light
    # brightness/contrast jitter for scanner differences; no auto-augment or random erasing,
    # which can paint over or invent findings.
    "medical": {
        "scale": (0.85, 1.0),
        "ratio": (0.9, 1.1),
        "hflip": 0.0,
        "vflip": 0.0,
        "color_jitter": (0.1, 0.1, 0.0),  # brightness, contrast, saturation
        "auto_augment": None,
        "re_prob": 0.0,
    },
}


def resolve_train_transform(train_transform: dict[str, Any] | str | None) -> dict[str, Any] | None:
    """``train_transform`` as create_transform kwargs: a preset name is looked up in ``TRANSFORM_PRESETS``."""
    if not isinstance(train_transform, str):
        return train_transform
    if train_transform not in TRANSFORM_PRESETS:
        raise ConfigError(f"train_transform preset {train_transform!r} is unknown; presets are "
                          f"{sorted(TRANSFORM_PRESETS)}, or give create_transform kwargs as a dict")
    return dict(TRANSFORM_PRESETS[train_transform])


class ImagePreprocessor:
    """timm transforms from the model's data config; eval transform unless augmentation is asked.

    ``train_transform`` is a dict of timm ``create_transform(is_training=True)`` kwargs or a
    preset name from ``TRANSFORM_PRESETS``; the resolved kwargs are what ``save`` writes.
    """

    input_kind = "image"

    def __init__(self, data_config: dict[str, Any], train_transform: dict[str, Any] | str | None = None):
        from timm.data import create_transform

        self.data_config = data_config
        self.train_transform_preset = train_transform if isinstance(train_transform, str) else None
        train_transform = resolve_train_transform(train_transform)
        self.train_transform_kwargs = train_transform
        self.eval_transform = create_transform(**data_config, is_training=False)
        self.train_transform = (
            create_transform(**data_config, is_training=True, **train_transform)
            if train_transform is not None
            else self.eval_transform
        )
        self.mode = "RGB" if data_config["input_size"][0] == 3 else "L"

    def collate(self, inputs: list[Any], train: bool) -> dict[str, torch.Tensor]:
        from hf_adapt.dicom import to_8bit

        transform = self.train_transform if train else self.eval_transform
        # 16-bit images (radiographs) are scaled to 8 bit first: PIL's convert("L") clips them
        pixels = [transform(to_8bit(image).convert(self.mode)) for image in inputs]
        return {"pixel_values": torch.stack(pixels)}

    def check_inputs(self, inputs: dict[str, list[Any]]) -> dict[str, int]:
        """Images are resized and cropped to the model's input size by design: none is cut short."""
        return dict.fromkeys(inputs, 0)

    def save(self, directory: str) -> None:
        settings = {"data_config": self.data_config, "train_transform": self.train_transform_kwargs,
                    "train_transform_preset": self.train_transform_preset}
        Path(directory, PREPROCESSOR_FILE).write_text(json.dumps(settings, indent=2, default=list))


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(inputs["pixel_values"])


def _load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Weights from safetensors, or a pickle read with ``weights_only=True`` (never runs code)."""
    if not Path(path).is_file():
        raise ModelError(f"weights_file not found: {path}")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, or a pickle that needs code to load (refused)
        raise ModelError(f"weights_file {path} cannot be loaded safely: {type(err).__name__}: {err}") from err
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def _match_keys(state: dict[str, torch.Tensor], model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """Keep matching names; map a foreign naming positionally when every shape agrees in order.

    Checkpoints of the same architecture from other code bases (e.g. efficientnet-pytorch)
    store the same tensors in the same order under other names.
    """
    own = model.state_dict()
    if set(state) <= set(own):
        return state
    if source.endswith(".safetensors"):  # safetensors stores keys sorted: order says nothing
        unknown = sorted(set(state) - set(own))[:5]
        raise ModelError(f"weights file {source}: names {unknown} do not match the model's")
    own_items = [(k, v) for k, v in own.items() if not _is_counter(v)]
    theirs = [(k, v) for k, v in state.items() if not _is_counter(v)]
    if len(own_items) != len(theirs):
        raise ModelError(
            f"weights file {source}: {len(theirs)} tensors with foreign names, but the model has "
            f"{len(own_items)}; cannot map them"
        )
    mapped = {}
    for (own_key, own_value), (key, value) in zip(own_items, theirs):
        if own_value.shape != value.shape and not own_key.startswith(_head_prefix(model)):
            raise ModelError(
                f"weights file {source}: tensor {key} {tuple(value.shape)} does not fit "
                f"{own_key} {tuple(own_value.shape)}; not the same architecture"
            )
        mapped[own_key] = value
    return mapped


def _is_counter(tensor: torch.Tensor) -> bool:
    """BatchNorm's num_batches_tracked: a scalar integer some exporters keep and others drop."""
    return tensor.ndim == 0 and not tensor.is_floating_point()


def _head_prefix(model: nn.Module) -> str:
    return model.pretrained_cfg.get("classifier", "classifier")


def _load_weights_file(model: nn.Module, spec: BackboneSpec, path: str) -> None:
    state = _match_keys(_load_state_dict(path), model, spec.weights_file or path)
    head = _head_prefix(model) + "."
    own = model.state_dict()
    head_keys = [k for k in state if k.startswith(head)]
    if any(state[k].shape != own[k].shape for k in head_keys):
        if not spec.reset_head:
            classes = state[head_keys[0]].shape[0]
            raise ModelError(
                f"weights file {spec.weights_file} has a {classes}-class classification head but "
                f"the data has {spec.num_labels} labels; set reset_head: true to replace it"
            )
    if spec.reset_head:
        state = {k: v for k, v in state.items() if k not in head_keys}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(head) and not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ModelError(
            f"weights file {spec.weights_file}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )


def _model_name(source: str) -> str:
    if source.startswith(_PREFIXES):
        return source
    path = Path(source)
    if path.is_dir():
        return f"local-dir:{path}"
    return source


class TimmBuilder:
    input_kind = "image"
    language_modelling = False

    def claims(self, name_or_path: str) -> bool:
        if name_or_path.startswith(_PREFIXES):
            return True
        path = Path(resolve_source(name_or_path))
        if path.is_dir():
            config = path / "config.json"
            return config.is_file() and "architecture" in json.loads(config.read_text())
        import timm

        return timm.is_model(name_or_path.split(".")[0]) and not path.exists()

    def build(self, spec: BackboneSpec) -> Backbone:
        import timm
        from timm.data import resolve_model_data_config

        if spec.quantization:
            raise ConfigError(f"quantization loads transformers models through bitsandbytes; {spec.name_or_path!r} "
                              "is a timm model: leave quantization unset")
        name = _model_name(resolve_source(spec.name_or_path, field="model_name_or_path"))
        use_hub_weights = spec.pretrained and spec.weights_file is None
        kwargs = dict(spec.model_kwargs)
        try:
            try:
                # models with a fixed input size (ViTs) must be built for the requested one;
                # timm resamples their position embeddings when loading pretrained weights
                sized = {"img_size": spec.image_size} if spec.image_size else {}
                model = timm.create_model(name, pretrained=use_hub_weights, num_classes=spec.num_labels,
                                          **sized, **kwargs)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
                model = timm.create_model(name, pretrained=use_hub_weights, num_classes=spec.num_labels, **kwargs)
        except RuntimeError as err:
            if "Unknown model" in str(err):
                raise ModelError(
                    f"model {spec.name_or_path!r} is not a timm model name, hf-hub: id or local folder"
                ) from err
            raise
        except (OSError, ValueError) as err:
            raise ModelError(f"model {spec.name_or_path!r} could not be loaded: {err}") from err
        if spec.weights_file is not None:
            _load_weights_file(model, spec, resolve_source(spec.weights_file, field="weights_file"))
        elif use_hub_weights:
            pretrained_classes = model.pretrained_cfg.get("num_classes")
            if pretrained_classes and pretrained_classes != spec.num_labels and not spec.reset_head:
                raise ModelError(
                    f"model {spec.name_or_path!r} has a {pretrained_classes}-class head but the data "
                    f"has {spec.num_labels} labels; set reset_head: true to replace it"
                )
        # channels-last convolutions: measured 1.8x faster training for EfficientNet-Lite0 on CPU
        model = model.to(memory_format=torch.channels_last)
        head = _head_prefix(model)
        if head not in dict(model.named_modules()):
            raise ModelError(f"cannot find the classifier {head!r} of timm model {spec.name_or_path!r}")
        data_config = resolve_model_data_config(model)
        if spec.image_size:
            data_config["input_size"] = (data_config["input_size"][0], spec.image_size, spec.image_size)
        return Backbone(
            family="timm",
            model=model,
            head_names=[head],
            target_modules=adapter_target_names(model, exclude=[head]),
            preprocessor=ImagePreprocessor(dict(data_config), spec.train_transform),
            forward=_forward,
            num_parameters=sum(p.numel() for p in model.parameters()),
            # the Hub repo the weights came from (timm names resolve to timm/<arch>.<tag>); none for local weights
            info={"architecture": model.default_cfg.get("architecture", name),
                  "hub_id": model.pretrained_cfg.get("hf_hub_id") if use_hub_weights and not name.startswith("local-dir:") else None},
        )

    def load_preprocessor(self, directory: str, spec: BackboneSpec) -> ImagePreprocessor:
        settings = json.loads(Path(directory, PREPROCESSOR_FILE).read_text())
        return ImagePreprocessor(settings["data_config"], settings["train_transform"])
