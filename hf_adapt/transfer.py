"""Transfer: start a new task from the backbone of an earlier hf-adapt output (``init_from``).

The parent (a finetune or pretrain output, in a folder or a Hub repo) is rebuilt on its
base model, its adapter merged, and its head dropped; the new run puts a fresh head on
that backbone. The parent's own artifact files are carried inside the new output under
``init/`` (recursively for longer chains), so the new output rebuilds from the original
base model alone: the base in the new ``hf_adapt.json`` is always the root of the chain,
and each ``init/`` layer adds the weights its run trained.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hf_adapt.backbones import BackboneSpec
from hf_adapt.errors import ConfigError
from hf_adapt.outputs import RUN_FILE, read_json
from hf_adapt.run_record import parse, read_record, write_record

logger = logging.getLogger(__name__)

INIT_DIR = "init"
BACKBONE_FILE = "backbone.safetensors"
# where the root base comes from: kept only in the top-level hf_adapt.json
_ROOT_KEYS = ("name_or_path", "weights_file", "pretrained", "revision", "trust_remote_code", "base_model_id")
_CARRIED = ("adapter_config.json", "adapter_model.safetensors", "head.safetensors", "model.safetensors",
            "lm_head.safetensors", "config.json", "generation_config.json", "label_map.json", RUN_FILE)


@dataclass
class Parent:
    """An earlier output to start from, as found on disk."""

    source: str  # as the user named it
    directory: Path  # local folder (a Hub snapshot for repos)
    info: dict[str, Any]  # its hf_adapt.json
    revision: str | None  # Hub commit, for repos

    @property
    def recipe(self) -> str:
        return self.info.get("recipe", "finetune")

    @property
    def family(self) -> str:
        return self.info["family"]

    @property
    def input_kind(self) -> str:
        from hf_adapt.backbones import get_builder

        return get_builder(self.family).input_kind

    def labels(self) -> list[str] | None:
        path = self.directory / "label_map.json"
        if not path.is_file():
            return None
        id2label = read_json(path)["id2label"]
        return [id2label[str(i)] for i in range(len(id2label))]


def find_parent(init_from: str, revision: str | None = None, recipes: tuple[str, ...] = ("finetune", "pretrain"),
                what: str = "a backbone to start from") -> Parent:
    """The output ``init_from`` names: a local folder, or a Hub repo downloaded at ``revision``,
    made by one of ``recipes``."""
    path = Path(init_from).expanduser()
    if path.is_dir():
        directory, commit = path, None
    elif init_from.startswith((".", "/", "~")) or path.exists():
        raise ConfigError(f"init_from {init_from!r} is not a folder")
    else:
        from huggingface_hub import snapshot_download

        try:
            directory = Path(snapshot_download(init_from, revision=revision))
        except Exception as err:  # noqa: BLE001 - offline, no such repo, no access: one clear message
            raise ConfigError(f"init_from {init_from!r} is neither a local folder nor a Hub repo that could be "
                              f"downloaded ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
        commit = directory.name  # snapshot folders are named by the commit
    if not (directory / RUN_FILE).is_file():
        raise ConfigError(f"init_from {init_from!r} is not an hf-adapt output: {RUN_FILE} is missing")
    info = read_record(directory).as_dict()
    if info.get("recipe", "finetune") not in recipes:
        raise ConfigError(f"init_from {init_from!r} is a {info['recipe']!r} output; only {' and '.join(recipes)} "
                          f"outputs carry {what}")
    return Parent(init_from, directory, info, commit)


def check_parent(parent: Parent, family: str, model_name_or_path: str, default_model: str, input_kind: str) -> None:
    """Refuse, before anything trains, a parent that cannot serve the new config.

    Args:
        family: the config's ``family`` (``auto`` accepts the parent's).
        model_name_or_path: the config's model; left at ``default_model`` it defers to the parent,
            otherwise it must be the parent's base (or a copy with the same tokenizer and architecture).
        input_kind: what the new data is: ``text`` (tables, texts) or ``image``.
    """
    if (parent.info.get("data") or {}).get("table_features"):
        raise ConfigError(f"init_from {parent.source!r} is a hybrid table model (table_features); a new model starts "
                          "from a text model's backbone: use the output the hybrid itself started from, or the base")
    if family not in ("auto", parent.family):
        raise ConfigError(f"init_from {parent.source!r} is a {parent.family} backbone, but the config sets "
                          f"family: {family}")
    if input_kind != parent.input_kind:
        raise ConfigError(f"init_from {parent.source!r} is a {parent.family} ({parent.input_kind}) backbone, but "
                          f"the data is {input_kind}")
    base = parent.info["model"]["name_or_path"]
    if model_name_or_path in (default_model, base):
        return
    if parent.family != "transformers":
        raise ConfigError(f"init_from {parent.source!r} was trained on {base!r}, but model_name_or_path names "
                          f"{model_name_or_path!r}; leave model_name_or_path unset (the base comes from init_from)")
    _check_same_tokenizer(parent, model_name_or_path)


def _check_same_tokenizer(parent: Parent, model_name_or_path: str) -> None:
    from transformers import AutoTokenizer

    from hf_adapt.sources import resolve_source

    base = parent.info["model"]["name_or_path"]
    try:
        theirs = AutoTokenizer.from_pretrained(resolve_source(base), revision=parent.info["model"].get("revision"))
        ours = AutoTokenizer.from_pretrained(resolve_source(model_name_or_path, field="model_name_or_path"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot compare the tokenizer of model_name_or_path {model_name_or_path!r} with that of "
                          f"init_from {parent.source!r} (base {base!r}): {err}") from None
    if theirs.get_vocab() != ours.get_vocab():
        raise ConfigError(
            f"init_from {parent.source!r} was trained with the tokenizer of {base!r} ({len(theirs)} tokens), but "
            f"model_name_or_path {model_name_or_path!r} has a different one ({len(ours)} tokens); its token ids "
            "would mean other words. Leave model_name_or_path unset: the base comes from init_from")


def carry(parent: Parent, directory: Path) -> None:
    """Copy what rebuilding ``parent``'s weights needs into ``directory/init`` (its own ``init/`` included)."""
    target = directory / INIT_DIR
    target.mkdir(parents=True)
    for name in _CARRIED:
        if (parent.directory / name).is_file() and name != RUN_FILE:
            shutil.copy2(parent.directory / name, target / name)
    # the base is named once, in the top-level hf_adapt.json (which a push rewrites to its Hub id)
    model = {k: v for k, v in parent.info["model"].items() if k not in _ROOT_KEYS}
    write_record(target, parse({**parent.info, "model": model}, parent.directory / RUN_FILE))
    if (parent.directory / INIT_DIR).is_dir():
        shutil.copytree(parent.directory / INIT_DIR, target / INIT_DIR)
    for name in _tokenizer_files(parent.directory):  # pretrain outputs: the base LM's own tokenizer
        shutil.copy2(parent.directory / name, target / name)


def _tokenizer_files(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.is_file() and p.name.startswith(("tokenizer", "special_tokens"))
            or p.name in ("vocab.txt", "merges.txt", "vocab.json")]


def backbone_spec(directory: Path, root_model: dict[str, Any], num_labels: int, workdir: Path,
                  trust_remote_code: bool = False, **overrides: Any) -> BackboneSpec:
    """How to build the starting backbone of the output in ``directory``, with a ``num_labels`` head.

    ``root_model`` is the ``model`` block of the top-level ``hf_adapt.json``: the base at the
    root of the chain, named as the output was saved (or pushed). Outputs without an
    ``init_from`` start from it directly; the others start from their ``init/`` layer,
    written out under ``workdir``.
    """
    info = read_record(directory).as_dict()
    spec = _root_spec(info, root_model, num_labels, trust_remote_code)
    if info.get("init_from"):  # start from the layer below, read with this output's own input settings
        own = {k: getattr(spec, k) for k in ("image_size", "max_length", "pooling")}
        spec = replace(materialize(directory / INIT_DIR, root_model, num_labels, workdir, trust_remote_code),
                       **{k: v for k, v in own.items() if v is not None})
    return replace(spec, **overrides)


def _root_spec(info: dict[str, Any], root_model: dict[str, Any], num_labels: int,
               trust_remote_code: bool) -> BackboneSpec:
    model = info["model"]
    return BackboneSpec(
        name_or_path=root_model["name_or_path"], num_labels=num_labels, family=info["family"],
        weights_file=root_model.get("weights_file"), pretrained=root_model.get("pretrained", True),
        reset_head=True, revision=root_model.get("revision"), trust_remote_code=trust_remote_code,
        image_size=model.get("image_size"), max_length=model.get("max_length", 256),
        pooling=model.get("pooling") or "model",
    )


def materialize(directory: Path, root_model: dict[str, Any], num_labels: int, workdir: Path,
                trust_remote_code: bool = False) -> BackboneSpec:
    """Rebuild the output in ``directory`` with its trained weights merged, drop its head, and save the
    backbone under ``workdir``; returns the spec of a fresh ``num_labels``-way model on that backbone."""
    info = read_record(directory).as_dict()
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / f"layer{len(list(workdir.iterdir()))}"
    if info.get("recipe", "finetune") == "pretrain":
        return _materialize_lm(directory, info, root_model, num_labels, target, trust_remote_code)
    return _materialize_classifier(directory, info, root_model, num_labels, target, trust_remote_code)


def _materialize_classifier(directory: Path, info: dict[str, Any], root_model: dict[str, Any], num_labels: int,
                            target: Path, trust_remote_code: bool) -> BackboneSpec:
    from hf_adapt.artifacts import restore_model
    from hf_adapt.backbones import build_backbone

    labels = read_json(directory / "label_map.json")["id2label"]
    spec = backbone_spec(directory, root_model, len(labels), target.with_name(target.name + "-up"), trust_remote_code)
    backbone = build_backbone(spec)
    model = restore_model(backbone, info["regime"], directory)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    target.mkdir(parents=True)
    if info["family"] == "timm":
        from safetensors.torch import save_file

        heads = tuple(f"{name}." for name in info.get("head_names", []))
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.startswith(heads)}
        save_file(state, str(target / BACKBONE_FILE))
        return replace(spec, num_labels=num_labels, weights_file=str(target / BACKBONE_FILE), pretrained=True,
                       reset_head=True)
    encoder = model.encoder if spec.pooling == "mean" else model  # MeanPoolingClassifier wraps an AutoModel
    encoder.save_pretrained(str(target))
    backbone.preprocessor.tokenizer.save_pretrained(str(target))
    return _text_spec(spec, target, num_labels)


def _materialize_lm(directory: Path, info: dict[str, Any], root_model: dict[str, Any], num_labels: int,
                    target: Path, trust_remote_code: bool) -> BackboneSpec:
    from hf_adapt.lm import load_pretrained_lm

    model, tokenizer, _ = load_pretrained_lm(directory, trust_remote_code=trust_remote_code, base=root_model)
    target.mkdir(parents=True)
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    spec = _root_spec(info, root_model, num_labels, trust_remote_code)
    return _text_spec(spec, target, num_labels, pooling=_base_pooling(root_model, info, trust_remote_code))


def _base_pooling(root_model: dict[str, Any], info: dict[str, Any], trust_remote_code: bool) -> str:
    """How the root base is read (``mean`` for sentence-transformers checkpoints), so an LM pretrained
    from it keeps the pooling it was trained for."""
    from transformers import AutoConfig

    from hf_adapt.backbones.transformers import resolve_pooling
    from hf_adapt.sources import resolve_source

    path = resolve_source(root_model["name_or_path"])
    spec = BackboneSpec(path, 2, revision=root_model.get("revision"), reset_head=True, pooling="auto")
    return resolve_pooling(path, spec, AutoConfig.from_pretrained(path, revision=spec.revision,
                                                                  trust_remote_code=trust_remote_code))


def _text_spec(spec: BackboneSpec, folder: Path, num_labels: int, pooling: str | None = None) -> BackboneSpec:
    return replace(spec, name_or_path=str(folder), num_labels=num_labels, revision=None, reset_head=True,
                   pooling=pooling or spec.pooling, family="transformers")


def start_spec(parent: Parent, config_spec: BackboneSpec, workdir: Path) -> BackboneSpec:
    """The spec of the new run's backbone: the parent's, written out under ``workdir``, with a head for
    ``config_spec.num_labels`` and the new config's input settings."""
    spec = materialize(parent.directory, parent.info["model"], config_spec.num_labels, workdir,
                       config_spec.trust_remote_code)
    changes = {"max_length": config_spec.max_length, "train_transform": config_spec.train_transform,
               "model_kwargs": config_spec.model_kwargs}
    if config_spec.image_size:
        changes["image_size"] = config_spec.image_size
    if config_spec.pooling != "auto":
        changes["pooling"] = config_spec.pooling
    return replace(spec, **changes)


def root_model(parent: Parent, model_info: dict[str, Any]) -> dict[str, Any]:
    """The new run's ``model`` block: the root base of the parent's chain, with the new run's input settings."""
    inherited = {"image_size": model_info.get("image_size") or parent.info["model"].get("image_size")}
    return {**model_info, **inherited, **{k: parent.info["model"].get(k) for k in _ROOT_KEYS}}


def base_model(parent: Parent) -> str | None:
    """The Hub id of the chain's root base, as the parent's card names it."""
    facts = parent.directory / "card_facts.json"
    return read_json(facts).get("base_model") if facts.is_file() else parent.info["model"].get("base_model_id")


def lineage(parent: Parent, new_labels: list[str], regime: str, task=None) -> dict[str, Any]:
    """The card's account of what came from the parent and what is new; ``task``: the new model's
    :class:`hf_adapt.tasks.Task` (default classification), which names its head."""
    from hf_adapt.regimes import get_regime
    from hf_adapt.sources import is_disk_path
    from hf_adapt.tasks import Classification, task_from_info

    info = parent.info
    what = {"pretrain": f"{info.get('objective', 'continued').upper()} continued pretraining",
            "finetune": f"fine-tuning ({info.get('regime')})"}[parent.recipe]
    kept = f"the backbone weights after the parent's {what}"
    if get_regime(info["regime"]).uses_adapter:
        kept += ", with its adapter merged into them"
    parent_labels = parent.labels()
    new = (task or Classification()).head_description(new_labels, new=True)
    if parent_labels:
        dropped = task_from_info(parent.info, parent_labels, str(parent.directory)).head_description(parent_labels,
                                                                                                    new=False)
        new += f"; the parent's {dropped} was dropped"
    new += f"; trained with `{regime}`"
    metrics = {}
    results = parent.directory / "eval_results.json"
    if results.is_file():
        metrics = {k: v for k, v in read_json(results).items() if isinstance(v, (int, float))}
    on_hub = not is_disk_path(parent.source)
    return {
        "parent": parent.source if on_hub else Path(parent.source).name,
        "hub": on_hub,
        "revision": parent.revision,
        "relation": "transfer (init_from)",
        "parent_regime": info.get("regime"),
        "parent_recipe": parent.recipe,
        "parent_metrics": metrics,
        "kept": kept,
        "new": new,
    }


def run_info(parent: Parent) -> dict[str, Any]:
    """What the new ``hf_adapt.json`` records about its start."""
    return {"source": parent.source, "revision": parent.revision, "recipe": parent.recipe, "dir": INIT_DIR}
