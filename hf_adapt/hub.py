"""Publish an hf-adapt output directory to the Hub as one versioned commit.

``push_output(output_dir, PushSettings(repo_id=...))`` creates the repo (private unless
asked), re-renders the card for its new home, and makes one ``upload_folder`` commit with
everything the output holds: adapter or weights, label map, preprocessing files, resolved
config, results, card and figures. Each push to a branch gets a tag (``v1``, ``v2``, ... by
default), so every version stays loadable by name.

Safety:
- the token comes only from ``huggingface_hub``'s own sources (``HF_TOKEN`` or ``hf auth
  login``) and is scrubbed from every message we raise or log;
- transient failures (network, 408/429/5xx) are retried with exponential backoff; a commit
  is atomic on the Hub, so a failed push leaves nothing half-written there, and the local
  output is never modified: rerun ``hf-adapt push`` to resume;
- a card someone edited on the Hub is not overwritten without ``overwrite_card``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from hf_adapt import cards
from hf_adapt.errors import HubError
from hf_adapt.outputs import read_json

logger = logging.getLogger("hf_adapt.hub")

T = TypeVar("T")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_TRANSIENT_ERRORS = {"TimeoutException", "NetworkError", "RemoteProtocolError", "ConnectionError", "TimeoutError"}
# Files an earlier version may have pushed that this one replaces: deleted from the branch
# unless this version has them too, so a repo never mixes two versions' weights.
VERSIONED_FILES = ["adapter_model.safetensors", "adapter_config.json", "head.safetensors", "model.safetensors",
                   "hf_adapt.json", "hf_adapt_text.json", "label_map.json", "preprocessor_config.json",
                   "eval_results.json", "train_results.json", "card_facts.json", "config.yaml", "tokenizer*",
                   "special_tokens_map.json", "vocab.*", "merges.txt", "figures/*", "examples/*", "runs/*"]
_CONFIG_NOISE = {"output_dir", "overwrite_output_dir", "report_to", "logging_steps", "torch_num_threads",
                 "num_workers", "push_to_hub", "hub_model_id", "hub_private", "hub_revision", "hub_tag",
                 "hub_create_pr", "overwrite_card", "parent", "update_parent", "per_device_eval_batch_size"}


@dataclass
class PushSettings:
    repo_id: str
    private: bool = True
    revision: str | None = None  # branch; created from main if missing
    tag: str | None = "auto"  # "auto": next free vN; None: no tag
    create_pr: bool = False
    overwrite_card: bool = False
    commit_message: str | None = None
    parent: str | None = None  # "org/name[@revision]" this version succeeds, for the card's lineage
    update_parent: bool = False  # point the parent's card at this version (new_version)
    retries: int = 4
    backoff_seconds: float = 2.0


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    tag: str | None
    pr_url: str | None


@dataclass
class PublishOptions:
    """Hub fields every recipe config inherits: ``--push_to_hub --hub_model_id org/name``."""

    push_to_hub: bool = field(default=False, metadata={"help": "Push the output to the Hub when the run succeeds (token from HF_TOKEN or `hf auth login`, never from config)."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repo to push to, org/name (needed with push_to_hub)."})
    hub_private: bool = field(default=True, metadata={"help": "Create the repo private (false: public)."})
    hub_revision: str | None = field(default=None, metadata={"help": "Branch to push to (created from main if missing; default main)."})
    hub_tag: str | None = field(default="auto", metadata={"help": "Tag for this version: auto = next free vN, null = no tag."})
    hub_create_pr: bool = field(default=False, metadata={"help": "Open a pull request against main instead of committing to it (no tag)."})
    overwrite_card: bool = field(default=False, metadata={"help": "Replace a README.md that someone edited on the Hub."})
    hub_parent: str | None = field(default=None, metadata={"help": "Hub repo (org/name[@revision]) of the hf-adapt model this version succeeds; the card records the lineage."})
    update_parent: bool = field(default=False, metadata={"help": "Point the parent's card at this version (new_version metadata)."})

    def push_settings(self) -> PushSettings:
        return PushSettings(repo_id=self.hub_model_id, private=self.hub_private, revision=self.hub_revision,
                            tag=self.hub_tag, create_pr=self.hub_create_pr, overwrite_card=self.overwrite_card,
                            parent=self.hub_parent, update_parent=self.update_parent)

    def check_push(self, base_model: str | None) -> None:
        """Refuse, before training, a push that is bound to fail."""
        if not self.push_to_hub:
            return
        if not self.hub_model_id:
            raise HubError("push_to_hub needs hub_model_id (org/name)")
        preflight(self.hub_model_id, base_model, self.hub_revision, self.hub_create_pr)
        if self.hub_parent:
            check_repo_id(self.hub_parent.partition("@")[0], "hub_parent")


# ---------------------------------------------------------------- checks before any work


def check_repo_id(repo_id: str, field: str = "repo_id") -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(f"{field}={repo_id!r} is not a Hub repo id (org/name): {err}") from None


def check_base_model(base_model: str | None) -> None:
    """``base_model`` must be a Hub id: never a disk path or a ``pkg://`` copy."""
    if base_model is None:
        return
    if "://" in base_model or base_model.startswith(("/", ".", "~")) or "\\" in base_model or Path(base_model).exists():
        raise HubError(f"base_model {base_model!r} is a local path, not a Hub id; set base_model_id to the Hub id "
                       "the weights came from (or leave it unset when they come from no Hub repo)")
    check_repo_id(base_model, "base_model")


def check_token() -> None:
    from huggingface_hub import get_token

    if not get_token():
        raise HubError("no Hugging Face token found: set HF_TOKEN or run `hf auth login` (a token with write access)")


def preflight(repo_id: str, base_model: str | None, revision: str | None = None, create_pr: bool = False) -> None:
    """Everything about a push that can be checked without the network; recipes call it before training."""
    check_repo_id(repo_id)
    check_base_model(base_model)
    if create_pr and revision not in (None, "main"):
        raise HubError(f"create_pr opens a pull request against main; it cannot be combined with revision={revision!r}")
    check_token()


PLACEHOLDERS = ("[More Information Needed]", "{{", "{%", "TODO")
REQUIRED_METADATA = ("library_name", "pipeline_tag", "tags", "model-index")


def check_card(card) -> None:
    """Refuse a card whose metadata is incomplete or wrong, or whose text holds a placeholder.

    The Hub validates the YAML again when the commit arrives (``/api/validate-yaml``).
    """
    metadata = card.data.to_dict()
    missing = [key for key in REQUIRED_METADATA if not metadata.get(key)]
    if missing:
        raise HubError(f"the model card lacks {missing} in its metadata")
    if "licence" in metadata:
        raise HubError("the model card has a misspelled 'licence' key; the Hub reads 'license'")
    check_base_model(metadata.get("base_model"))
    found = [p for p in PLACEHOLDERS if p in card.text]
    if found:
        raise HubError(f"the model card still holds placeholder text {found}")


# ---------------------------------------------------------------- retries and scrubbing


def scrub(text: str) -> str:
    """``text`` with the token (if any) replaced, for messages and logs."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "<token>") if token else text


def _status(err: BaseException) -> int | None:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def _is_transient(err: BaseException) -> bool:
    status = _status(err)
    if status is not None:
        return status in TRANSIENT_STATUS
    return any(cls.__name__ in _TRANSIENT_ERRORS for cls in type(err).__mro__)


def _describe(err: BaseException) -> str:
    status = _status(err)
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return scrub(f"HTTP {status}: {first_line}" if status else f"{type(err).__name__}: {first_line}")


def with_retries(what: str, call: Callable[[], T], retries: int = 4, backoff_seconds: float = 2.0) -> T:
    """Run ``call``; retry transient failures with exponential backoff; raise :class:`HubError` otherwise."""
    for attempt in range(1, retries + 2):
        try:
            return call()
        except HubError:
            raise
        except Exception as err:  # noqa: BLE001 - every failure becomes a clear HubError below
            status = _status(err)
            if status in (401, 403):
                raise HubError(f"{what}: the Hub refused the token (HTTP {status}); check that HF_TOKEN or "
                               "`hf auth login` holds a token with write access to this repo") from None
            if not _is_transient(err) or attempt > retries:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise HubError(f"{what} failed{tries}: {_describe(err)}") from None
            delay = min(backoff_seconds * 2 ** (attempt - 1), 60.0)
            logger.warning("%s: %s; retrying in %.1f s (%d/%d)", what, _describe(err), delay, attempt, retries)
            time.sleep(delay)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- push


def push_output(output_dir: str | Path, settings: PushSettings) -> PushResult:
    """Publish ``output_dir`` (an hf-adapt output) to ``settings.repo_id`` in one commit."""
    from huggingface_hub import HfApi

    from hf_adapt.artifacts import read_run_info

    directory = Path(output_dir)
    read_run_info(directory)  # refuses folders hf-adapt did not write
    facts = cards.read_facts(directory)
    preflight(settings.repo_id, facts.get("base_model"), settings.revision, settings.create_pr)
    if settings.parent:
        check_repo_id(settings.parent.partition("@")[0], "parent")
    api = HfApi()
    retry = {"retries": settings.retries, "backoff_seconds": settings.backoff_seconds}
    repo_id, branch = settings.repo_id, settings.revision or "main"

    if settings.parent:
        facts["lineage"] = parent_lineage(api, settings.parent, facts, retry)
    card = cards.render_card(facts, load_path=repo_id, revision=None if branch == "main" else branch)
    check_card(card)

    with_retries(f"create repo {repo_id}", lambda: api.create_repo(repo_id, private=settings.private, exist_ok=True), **retry)
    if branch != "main":
        with_retries(f"create branch {branch}", lambda: api.create_branch(repo_id, branch=branch, exist_ok=True), **retry)
    tag = None if settings.create_pr else _tag_name(api, repo_id, settings.tag, retry)
    remote = _remote_card(api, repo_id, branch, retry)
    if remote is not None and not settings.overwrite_card and not cards.is_unedited(remote):
        raise HubError(f"README.md on {repo_id}@{branch} was edited on the Hub after hf-adapt wrote it (or was not "
                       "written by hf-adapt); pass --overwrite_card to replace it, or copy the edits into "
                       f"{directory / 'README.md'} first")

    message = settings.commit_message or _commit_message(facts)
    with tempfile.TemporaryDirectory(prefix="hf-adapt-push-") as tmp:
        folder = _stage(directory, Path(tmp), card)
        commit = with_retries(f"upload to {repo_id}@{branch}", lambda: api.upload_folder(
            repo_id=repo_id, folder_path=str(folder), revision=branch, commit_message=message,
            create_pr=settings.create_pr, delete_patterns=VERSIONED_FILES), **retry)
    if tag:
        with_retries(f"tag {tag}", lambda: api.create_tag(repo_id, tag=tag, revision=commit.oid,
                                                          tag_message=message), **retry)
    logger.info("pushed %s to %s@%s (commit %s%s)", directory, repo_id, branch, commit.oid[:10],
                f", tag {tag}" if tag else "")
    if commit.pr_url:
        logger.info("opened pull request %s", commit.pr_url)
    if settings.update_parent and facts.get("lineage") and not settings.create_pr:
        link_successor(api, facts["lineage"]["parent"], repo_id, retry)
    return PushResult(repo_id, branch, commit.oid, str(commit.commit_url), tag, commit.pr_url)


def _stage(directory: Path, tmp: Path, card) -> Path:
    """A copy of the output (hard links where possible) with the card rendered for the Hub; hidden files skipped."""
    folder = tmp / "repo"
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file() or relative.name == "README.md":
            continue
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    folder.mkdir(parents=True, exist_ok=True)
    card.save(str(folder / "README.md"))
    return folder


def _tag_name(api, repo_id: str, wanted: str | None, retry: dict[str, Any]) -> str | None:
    if wanted is None:
        return None
    refs = with_retries(f"list refs of {repo_id}", lambda: api.list_repo_refs(repo_id), **retry)
    existing = {t.name for t in refs.tags}
    if wanted == "auto":
        numbers = [int(m.group(1)) for name in existing if (m := re.fullmatch(r"v(\d+)", name))]
        return f"v{max(numbers, default=0) + 1}"
    if wanted in existing:
        raise HubError(f"tag {wanted!r} already exists on {repo_id}; versions are immutable, pick another tag")
    return wanted


def _remote_card(api, repo_id: str, revision: str, retry: dict[str, Any]) -> str | None:
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    def fetch():
        try:
            return Path(api.hf_hub_download(repo_id, "README.md", revision=revision)).read_text(encoding="utf-8")
        except (EntryNotFoundError, RevisionNotFoundError):
            return None

    return with_retries(f"read README.md of {repo_id}@{revision}", fetch, **retry)


def _commit_message(facts: dict[str, Any]) -> str:
    metric = facts.get("metric_for_best_model")
    value = facts.get("test_metrics", {}).get(metric)
    score = f": test {metric} {value:.4f}" if isinstance(value, float) else ""
    return f"hf-adapt {facts.get('recipe', 'run')} ({facts.get('regime')}){score}"


# ---------------------------------------------------------------- lineage


def parent_lineage(api, parent: str, facts: dict[str, Any], retry: dict[str, Any]) -> dict[str, Any]:
    """What this version inherits from ``parent`` (``org/name[@revision]``) and what changed."""
    import yaml

    repo, _, revision = parent.partition("@")
    info = with_retries(f"read {parent}", lambda: api.model_info(repo, revision=revision or None), **retry)

    def fetch(name: str) -> Path:
        return Path(api.hf_hub_download(repo, name, revision=info.sha))

    try:
        run_file = with_retries(f"read {parent}", lambda: fetch("hf_adapt.json"), **retry)
    except HubError as err:
        raise HubError(f"parent {parent} is not an hf-adapt output ({err})") from None
    parent_info = read_json(run_file)
    parent_metrics = read_json(with_retries(f"read {parent}", lambda: fetch("eval_results.json"), **retry))
    parent_config = yaml.safe_load(with_retries(f"read {parent}", lambda: fetch("config.yaml"), **retry).read_text())
    config = facts["config"]
    changes = [
        {"field": key, "parent": parent_config.get(key), "this": config.get(key)}
        for key in sorted(set(config) | set(parent_config))
        if key not in _CONFIG_NOISE and parent_config.get(key) != config.get(key)
    ]
    metrics = {key: {"parent": parent_metrics[key], "this": value}
               for key, value in facts["test_metrics"].items() if key in parent_metrics}
    same_test = (parent_config.get("data") == config.get("data") and parent_config.get("seed") == config.get("seed")
                 and parent_config.get("test_size") == config.get("test_size"))
    return {"parent": repo, "revision": info.sha, "relation": facts.get("lineage", {}).get("relation", "new version"),
            "parent_regime": parent_info.get("regime"), "changes": changes, "metrics": metrics,
            "same_test_data": same_test}


def link_successor(api, parent: str, successor: str, retry: dict[str, Any]) -> None:
    """Set ``new_version: successor`` in the parent repo's card metadata (its text is kept)."""
    from huggingface_hub import ModelCard

    text = _remote_card(api, parent, "main", retry)
    if text is None:
        raise HubError(f"parent {parent} has no README.md to point at {successor}")
    unedited = cards.is_unedited(text)
    card = ModelCard(cards.strip_fingerprint(text))
    card.data.new_version = successor
    body = cards.fingerprint(str(card)) if unedited else str(card)
    with_retries(f"update the card of {parent}", lambda: api.upload_file(
        path_or_fileobj=body.encode("utf-8"), path_in_repo="README.md", repo_id=parent,
        commit_message=f"new_version: {successor}"), **retry)
    logger.info("card of %s now points to %s", parent, successor)
