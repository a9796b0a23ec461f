"""Model cards rendered from the Jinja templates in ``model_cards/``, metadata via ModelCardData."""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import re
import subprocess
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from hf_adapt.outputs import read_json, write_json
from hf_adapt.sources import is_disk_path

FACTS_FILE = "card_facts.json"
_MARK = "<!-- hf-adapt card sha256:"
# metric key -> (model-index metric type, display name)
_METRICS = {
    "accuracy": ("accuracy", "Accuracy"),
    "macro_f1": ("f1", "Macro F1"),
    "auroc": ("roc_auc", "AUROC"),
    "log_loss": ("log_loss", "Log loss"),
    "ece": ("ece", "Expected calibration error"),
    "brier": ("brier_score", "Brier score"),
    "gini": ("gini", "Gini"),
    "ks": ("ks_statistic", "Kolmogorov-Smirnov"),
    "sensitivity": ("recall", "Sensitivity at the operating point"),
    "specificity": ("specificity", "Specificity at the operating point"),
    "perplexity": ("perplexity", "Perplexity"),
    "rmse": ("rmse", "Root mean squared error"),
    "mae": ("mae", "Mean absolute error"),
    "r2": ("r_squared", "R²"),
    "preference_accuracy": ("accuracy", "Held-out preference accuracy"),
    "win_rate": ("win_rate", "Win rate against the parent"),
}
_PIPELINE = {"text": "text-classification", "image": "image-classification"}
_VERSIONED = ("hf-adapt", "torch", "transformers", "peft", "timm", "accelerate", "datasets")


def template_path(name: str) -> Path:
    """A template from ``model_cards/``: the checkout's folder, or its installed copy in a wheel."""
    checkout = Path(__file__).resolve().parents[1] / "model_cards" / name
    if checkout.is_file():
        return checkout
    return Path(str(resources.files("hf_adapt.model_cards").joinpath(name)))


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hardware_description(accelerator) -> str:
    import torch

    device = accelerator.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"
    return f"{accelerator.num_processes} x {name}"


def card_data(facts: dict[str, Any]):
    """YAML metadata: base model, library, pipeline, tags and the test metrics (model-index)."""
    from huggingface_hub import EvalResult, ModelCardData

    task_type = facts.get("pipeline_tag") or _PIPELINE[facts["input_kind"]]  # language models name their own
    dataset_name = facts["dataset_name"]
    results = [
        EvalResult(
            task_type=task_type,
            dataset_type=facts.get("dataset_id") or dataset_name,
            dataset_name=dataset_name,
            dataset_split="test",
            metric_type=_METRICS[key][0],
            metric_name=_METRICS[key][1],
            metric_value=round(float(value), 4),
        )
        for key, value in facts["test_metrics"].items()
        if key in _METRICS and value == value  # NaN (undefined) metrics are not reported
    ]
    from hf_adapt.regimes import get_regime

    adapter = get_regime(facts["regime"]).uses_adapter  # peft holds the trained weights
    tags = ["hf-adapt", facts["family"], task_type, facts["regime"]]
    if facts.get("adapter"):
        tags.append(str(facts["adapter"]["peft_type"]).lower())
    if facts["data_kind"] == "table":
        tags.append("tabular-as-text")
    task = (facts.get("task") or {}).get("name")
    if task in ("regression", "multi_label"):
        tags.append(task.replace("_", "-"))
    return ModelCardData(
        model_name=facts["model_name"],
        base_model=facts.get("base_model"),
        # an adapter trained on a transferred backbone does not apply to the base alone
        base_model_relation=(("adapter" if adapter and not facts["config"].get("init_from")
                              else "finetune") if facts.get("base_model") else None),
        library_name="peft" if adapter else facts["family"],
        pipeline_tag=task_type,
        license=facts.get("license"),
        datasets=[facts["dataset_id"]] if facts.get("dataset_id") else None,
        tags=tags,
        eval_results=results,
    )


def run_facts(cfg: Any, accelerator: Any, directory: Path, recipe: str) -> dict[str, Any]:
    """What every card says about how and where a run ran: processes, precision, hardware, the resolved
    config (secrets redacted), code and library versions."""
    from hf_adapt.config import config_to_dict, redact

    return {
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "gradient_accumulation_steps": accelerator.gradient_accumulation_steps,
        "hardware": hardware_description(accelerator),
        "config": redact(config_to_dict(cfg)),
        "config_yaml": (directory / "config.yaml").read_text(),
        "git": git_commit(),
        "versions": library_versions(),
        "recipe": recipe,
        "output_dir": cfg.output_dir,
    }


def write_card(directory: Path, cfg: Any, accelerator: Any, recipe: str, facts: dict[str, Any]) -> dict[str, Any]:
    """Write a run's ``card_facts.json`` and the ``README.md`` rendered from it: the facts every recipe's card
    shares (the model's name, the config's card fields, how and where the run ran), with the recipe's own
    ``facts`` (its template, summary, data, metrics) over them."""
    from hf_adapt.quantization import describe

    facts = {"model_name": Path(cfg.output_dir).name, **cfg.card_text(),
             **run_facts(cfg, accelerator, directory, recipe),
             "quantization": describe(getattr(cfg, "quantization", None)), **facts}
    write_facts(directory, facts)
    render_card(facts).save(str(directory / "README.md"))
    return facts


def git_commit(path: str | Path = ".") -> dict[str, Any] | None:
    """The commit (and whether the tree was dirty) of the git checkout holding ``path``, if any."""
    try:
        run = {"cwd": str(path), "capture_output": True, "text": True, "timeout": 10}
        commit = subprocess.run(["git", "rev-parse", "HEAD"], check=True, **run).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=True, **run).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def write_facts(directory: Path, facts: dict[str, Any]) -> None:
    """Keep the measured facts next to the card, so a push can re-render it for its repo."""
    write_json(directory / FACTS_FILE, facts)


def read_facts(directory: Path) -> dict[str, Any]:
    from hf_adapt.errors import ModelError

    if not (directory / FACTS_FILE).is_file():
        raise ModelError(f"{directory} has no {FACTS_FILE}; it was written by an older hf-adapt, rerun the recipe")
    return read_json(directory / FACTS_FILE)


def fingerprint(text: str) -> str:
    """``text`` ending with a hash of itself, so a later push can tell whether someone edited it."""
    body = strip_fingerprint(text).rstrip("\n") + "\n"
    return f"{body}\n{_MARK}{hashlib.sha256(body.encode()).hexdigest()} -->\n"


def strip_fingerprint(text: str) -> str:
    index = text.rfind(_MARK)
    return text if index < 0 else text[:index].rstrip("\n") + "\n"


def is_unedited(text: str) -> bool:
    """True for a card exactly as hf-adapt wrote it (its fingerprint still matches)."""
    return _MARK in text and fingerprint(text) == text


# ---------------------------------------------------------------- user text in the markdown body
# Labels, column and group names, data sources and the like come from users' data and configs. In the card's
# body they pass through one of three filters, so they cannot add table cells, end a bullet or a code block,
# or be rendered as HTML; the YAML metadata is written by ModelCardData and needs none of this.
_MARKUP = re.compile(r"([\\`\[\]|])")  # backslash, code, link brackets, table cells
_TAG = re.compile(r"<(?=[A-Za-z/!?])")  # what CommonMark would read as HTML or an autolink; "<25" stays as is
_ENTITY = re.compile(r"&(?=#?\w+;)")  # "&amp;" in a label means those five characters
_CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")


def _one_line(value: Any) -> str:
    return " ".join(str(value).splitlines())


def md(value: Any) -> str:
    """User text as inline markdown text (Jinja filter ``md``): one line, shown as written."""
    text = _MARKUP.sub(r"\\\1", _one_line(value))
    return _TAG.sub("&lt;", _ENTITY.sub("&amp;", text))


def md_code(value: Any, table: bool = False) -> str:
    """User text as an inline code span, backticks included (Jinja filter ``code``): one line, fenced by more
    backticks than it holds. In a table cell (``table=True``) its pipes are escaped, which GFM requires there."""
    text = _one_line(value) or " "
    fence = "`" * (1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    if text[0] == "`" or text[-1] == "`" or (text[0] == text[-1] == " " and text.strip()):
        text = f" {text} "  # CommonMark strips one space from each side of such a span
    return fence + (text.replace("|", r"\|") if table else text) + fence


def md_prose(value: Any) -> str:
    """A sentence hf-adapt composed around user text (Jinja filter ``prose``): ``md`` outside its code spans,
    which stay code, on one line."""
    text, parts, start = _one_line(value), [], 0
    for span in _CODE_SPAN.finditer(text):
        parts += [md(text[start:span.start()]), span.group(0)]
        start = span.end()
    return "".join([*parts, md(text[start:])])


@functools.cache
def environment():
    """The Jinja environment every card template renders in: ``ModelCard.from_template``'s settings plus the
    ``md``, ``code`` and ``prose`` filters, and ``{% include %}`` of the sections ``model_cards/`` shares
    (``_search.md``)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FunctionLoader(lambda name: template_path(name).read_text(encoding="utf-8")))
    env.filters.update(md=md, code=md_code, prose=md_prose)
    return env


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in ``text``, so a value holding ``` cannot close the block."""
    return "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))


def render_card(facts: dict[str, Any], repo_id: str | None = None, revision: str | None = None,
                template: str | None = None):
    """A fingerprinted ``huggingface_hub.ModelCard`` filled only with the measured facts given.

    With ``repo_id`` the card is the one pushed there: named after the repo, its usage snippet
    loads the repo (at ``revision``), and local paths of the training machine are shown by
    file name only. Without, it describes the local output directory.
    """
    from huggingface_hub import ModelCard

    template = template or facts.get("card_template", "classifier.md")  # facts name their template, so a push re-renders it
    adapter = facts.get("adapter")
    history = facts["history"]
    load_path = repo_id or facts["output_dir"]
    if repo_id:
        facts = {**facts, "model_name": repo_id.split("/")[-1],
                 "data_source": _public_source(facts["data_source"]), "model_source": _public_source(facts["model_source"])}
    context = {
        **facts,
        "adapter_json": json.dumps(adapter, sort_keys=True) if adapter else None,
        "history_metrics": [m for m in ("accuracy", "auroc", "log_loss", "rmse", "mae", "r2") if history and m in history[0]],
        "model_column": "this model",
        "load_args": json.dumps(load_path) + (f", revision={json.dumps(revision)}" if revision else ""),
        "on_hub": repo_id is not None,
        "example_path": json.dumps(f"{load_path}/{facts['example_file']}") if facts.get("example_file") else None,
        "yaml_fence": _fence(facts.get("config_yaml", "")),
    }
    # as ModelCard.from_template renders, in the environment that has the filters
    data = card_data(facts)
    source = template_path(template).read_text(encoding="utf-8")
    text = environment().from_string(source).render(card_data=data.to_yaml(), **{**data.to_dict(), **context})
    return ModelCard(fingerprint(ModelCard(text).content))


def _public_source(source: Any) -> Any:
    """A data or model source as a public card may show it: local paths by file name (``pkg://`` and ids as given)."""
    if isinstance(source, dict):
        return {split: _public_source(value) for split, value in source.items()}
    text = str(source)
    if not is_disk_path(text):
        return source
    return f"{Path(text).name} (a local file of the training machine)"
