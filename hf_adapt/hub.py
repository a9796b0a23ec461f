"""Publish an hf-adapt output directory to the Hub as one versioned commit.

``push_output(output_dir, PushSettings(repo_id=...))`` creates the repo (private unless
asked), re-renders the card for its new home, and makes one commit (``create_commit``:
with ``hf_xet`` installed, ``upload_folder`` may split a folder over several commits) with
everything the output holds: adapter or weights, label map, preprocessing files, resolved
config, results, card and figures. Each push to a branch gets a tag (``v1``, ``v2``, ... by
default), so every version stays loadable by name.

Safety:
- the token comes only from ``huggingface_hub``'s own sources (``HF_TOKEN`` or ``hf auth
  login``) and is scrubbed from every message we raise or log;
- transient failures (network, timeouts, 408/429/5xx) are retried with exponential backoff; a
  commit is atomic on the Hub, so a failed push leaves nothing half-written there, and the local
  output is never modified: rerun ``hf-adapt push`` to resume;
- nothing waits forever: every request waits at most ``timeout`` seconds for the Hub's next
  bytes (30 by default; ``HF_ADAPT_HUB_TIMEOUT``, ``--hub-timeout``), and no request starts after
  the push's ``deadline`` (1800 s by default, 0 = none; ``HF_ADAPT_HUB_DEADLINE``,
  ``--hub-deadline``). A Hub that never answers fails the push after (retries + 1) x timeout
  + backoff = 5 x 30 + (2 + 4 + 8 + 16) = 180 s; one that stops answering at any point, after
  at most deadline + timeout + 8 s (one of ``huggingface_hub``'s own retry waits) = 1838 s.
  An upload still moving at the deadline is not cut (timeouts bound silences, not transfers);
- a card someone edited on the Hub is not overwritten without ``overwrite_card``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from hf_adapt import cards
from hf_adapt.config import Options
from hf_adapt.errors import HubError
from hf_adapt.outputs import RUN_FILE, read_json
from hf_adapt.sources import is_disk_path

logger = logging.getLogger("hf_adapt.hub")

T = TypeVar("T")
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
TIMEOUT_ENV, DEADLINE_ENV = "HF_ADAPT_HUB_TIMEOUT", "HF_ADAPT_HUB_DEADLINE"
DEFAULT_TIMEOUT = 30.0  # seconds one request waits for the Hub's next bytes (connect, send, answer)
DEFAULT_DEADLINE = 1800.0  # seconds a whole push may take; 0: no limit
# config fields that change how a run is executed or logged, not what it learns: left out of lineage diffs
_RUN_ONLY = {"output_dir", "overwrite_output_dir", "report_to", "logging_steps", "torch_num_threads", "num_workers",
             "per_device_eval_batch_size", "card_examples"}


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
    timeout: float | None = None  # seconds a request waits for the Hub; None: $HF_ADAPT_HUB_TIMEOUT, else 30
    deadline: float | None = None  # seconds the push may take, 0 = no limit; None: $HF_ADAPT_HUB_DEADLINE, else 1800


@dataclass
class PushResult:
    repo_id: str
    revision: str
    commit_oid: str
    commit_url: str
    tag: str | None
    pr_url: str | None


@dataclass
class PublishOptions(Options):
    """Publishing to the Hub, the component every recipe config is composed with: ``--push_to_hub --hub_model_id
    org/name``. Its checks need the network, so they run before training (``check_push``), not while parsing."""

    title = "publishing"

    push_to_hub: bool = field(default=False, metadata={"resumable": True, "help": "Push the output to the Hub when the run succeeds (token from HF_TOKEN or `hf auth login`, never from config)."})
    hub_model_id: str | None = field(default=None, metadata={"resumable": True, "help": "Hub repo to push to, org/name (needed with push_to_hub)."})
    hub_private: bool = field(default=True, metadata={"resumable": True, "help": "Create the repo private (false: public)."})
    hub_revision: str | None = field(default=None, metadata={"resumable": True, "help": "Branch to push to (created from main if missing; default main)."})
    hub_tag: str | None = field(default="auto", metadata={"resumable": True, "help": "Tag for this version: auto = next free vN, null = no tag."})
    hub_create_pr: bool = field(default=False, metadata={"resumable": True, "help": "Open a pull request against main instead of committing to it (no tag)."})
    overwrite_card: bool = field(default=False, metadata={"resumable": True, "help": "Replace a README.md that someone edited on the Hub."})
    hub_parent: str | None = field(default=None, metadata={"resumable": True, "help": "Hub repo (org/name[@revision]) of the hf-adapt model this version succeeds; the card records the lineage."})
    update_parent: bool = field(default=False, metadata={"resumable": True, "help": "Point the parent's card at this version (new_version metadata)."})

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
        push_limits(None, None)  # a bad HF_ADAPT_HUB_TIMEOUT / HF_ADAPT_HUB_DEADLINE fails now, not after training
        preflight(self.hub_model_id, base_model, self.hub_revision, self.hub_create_pr)
        if self.hub_parent:
            check_repo_id(self.hub_parent.partition("@")[0], "hub_parent")

    def push_after_run(self, output_dir: str | Path, accelerator) -> PushResult | None:
        """Push a finished run's output from the main process, if asked; a failed push says how to resume."""
        if not self.push_to_hub or not accelerator.is_main_process:
            return None
        try:
            return push_output(output_dir, self.push_settings())
        except HubError as err:
            raise HubError(f"{err}. The trained output is intact in {output_dir}; push it again with "
                           f"`{push_command(output_dir, self.push_settings())}`") from None


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
    if "://" in base_model or is_disk_path(base_model):
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
    prose = re.sub(r"<details>.*?</details>", "", card.text, flags=re.S)  # the resolved config may hold braces
    found = [p for p in PLACEHOLDERS if p in prose]
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


def _client_errors(name: str) -> tuple[type[BaseException], ...]:
    """The exception class ``name`` of the HTTP client huggingface_hub uses (httpx2 for 2.x, httpx for 1.x)."""
    import importlib

    errors: list[type[BaseException]] = []
    for module in ("httpx2", "httpx"):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network-level failures, timeouts included: the builtin ones and the HTTP client's."""
    return (ConnectionError, TimeoutError, *_client_errors("TransportError"))


def _in_chain(err: BaseException | None, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """``err`` or the first of its causes that is one of ``types``: huggingface_hub wraps some network errors
    (``hf_hub_download`` raises ``LocalEntryNotFoundError`` from a timeout)."""
    for _ in range(10):
        if err is None or isinstance(err, types):
            return err
        err = err.__cause__ if err.__cause__ is not None else None if err.__suppress_context__ else err.__context__
    return None


def _is_transient(err: BaseException) -> bool:
    status = _status(err)
    if status is not None:
        return status in TRANSIENT_STATUS
    return _in_chain(err, _transport_errors()) is not None


_WAITED_FOR = {  # timeout class -> what the server did not do, and which timeout ran out
    "ConnectTimeout": ("did not accept a connection", "connect"), "ReadTimeout": ("did not answer", "read"),
    "WriteTimeout": ("did not take the data sent", "write"), "PoolTimeout": ("had no free connection", "pool")}


def _describe_timeout(err: BaseException) -> str:
    """What timed out, where, and after how long, from the request the client attached (never its headers)."""
    try:
        request = err.request
    except (AttributeError, RuntimeError):
        request = None
    waited, phase = _WAITED_FOR.get(type(err).__name__, ("did not answer", "read"))
    if request is None:
        return f"the Hub {waited} in time ({type(err).__name__})"
    url = request.url
    seconds = (request.extensions.get("timeout") or {}).get(phase)
    within = f" within {seconds:.3g} s" if seconds else ""
    origin = f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port else "")
    return (f"{origin} {waited}{within} ({type(err).__name__} on {request.method} {url.path}); check the network "
            f"and HF_ENDPOINT, or raise the timeout ({TIMEOUT_ENV} or --hub-timeout)")


def _describe(err: BaseException) -> str:
    status = _status(err)
    timeout = None if status else _in_chain(err, _client_errors("TimeoutException"))
    if timeout is not None:
        return scrub(_describe_timeout(timeout))
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return scrub(f"HTTP {status}: {first_line}" if status else f"{type(err).__name__}: {first_line}")


def with_retries(what: str, call: Callable[[], T], retries: int = 4, backoff_seconds: float = 2.0,
                 budget: _Budget | None = None) -> T:
    """Run ``call``; retry transient failures with exponential backoff; raise :class:`HubError` otherwise.

    With a ``budget`` (inside :func:`push_output`) no wait outlasts the push's deadline: when the next attempt
    could not start before it, the push fails at once.

    The error raised carries neither cause nor context: the HTTP error it replaces holds
    the request, and the request holds the token.
    """
    for attempt in range(1, retries + 2):
        failure = None
        tries = f" after {attempt} attempts" if attempt > 1 else ""
        try:
            return call()
        except HubError:
            raise
        except Exception as err:  # noqa: BLE001 - every failure becomes a clear HubError below
            status = _status(err)
            if (late := _in_chain(err, (_PastDeadline,))) is not None:
                failure = f"{what} stopped{tries}: {late}"
            elif status in (401, 403):
                failure = (f"{what}: the Hub refused the token (HTTP {status}); check that HF_TOKEN or "
                           "`hf auth login` holds a token with write access to this repo")
            elif not _is_transient(err) or attempt > retries:
                failure = f"{what} failed{tries}: {_describe(err)}"
            else:
                delay = min(backoff_seconds * 2 ** (attempt - 1), 60.0)
                if budget is not None and not budget.allows(delay):
                    failure = f"{what} failed{tries}: {_describe(err)}; {budget.no_time_left()}"
                else:
                    logger.warning("%s: %s; retrying in %.1f s (%d/%d)", what, _describe(err), delay, attempt,
                                   retries)
            del err
        if failure is not None:
            raise HubError(failure)  # outside the except block: no __context__ pointing at the request
        time.sleep(delay)
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- time limits


def _seconds(value: float | None, env: str, default: float, flag: str, *, zero_ok: bool) -> float:
    source, raw = f"{flag} (PushSettings.{flag.removeprefix('--hub-')})", value
    if value is None:
        raw = os.environ.get(env, "").strip()
        if not raw:
            return default
        source = env
    try:
        seconds = float(raw)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        expected = "0 (no limit) or more" if zero_ok else "above 0"
        raise HubError(f"{source} must be a number of seconds, {expected}; got {raw!r}")
    return seconds


def push_limits(timeout: float | None, deadline: float | None) -> tuple[float, float]:
    """The push's ``(timeout, deadline)`` in seconds: as given, else from ``HF_ADAPT_HUB_TIMEOUT`` /
    ``HF_ADAPT_HUB_DEADLINE``, else 30 and 1800; a deadline of 0 means none. Refuses a value that is not one."""
    return (_seconds(timeout, TIMEOUT_ENV, DEFAULT_TIMEOUT, "--hub-timeout", zero_ok=False),
            _seconds(deadline, DEADLINE_ENV, DEFAULT_DEADLINE, "--hub-deadline", zero_ok=True))


class _PastDeadline(Exception):
    """A request the push would have started after its deadline (raised inside the HTTP client)."""


class _Budget:
    """A running push's time limits: each request waits at most ``timeout`` s for the Hub's next bytes, and none
    starts once ``deadline`` s have passed since the push began."""

    def __init__(self, timeout: float, deadline: float):
        self.timeout, self.deadline = timeout, deadline
        self.ends = time.monotonic() + deadline if deadline else None

    def left(self) -> float:
        return math.inf if self.ends is None else self.ends - time.monotonic()

    def allows(self, wait: float) -> bool:
        """Whether an attempt could still start after waiting ``wait`` s."""
        return self.left() > wait

    def no_time_left(self) -> str:
        return (f"no time is left for another attempt within the push's {self.deadline:g} s deadline (raise "
                f"{DEADLINE_ENV} or --hub-deadline for a slow link; 0 = no limit)")

    def past(self, request) -> str:
        url = request.url
        return (f"the push reached its {self.deadline:g} s deadline ({DEADLINE_ENV} or --hub-deadline; 0 = no "
                f"limit) before {request.method} {url.scheme}://{url.host}{f':{url.port}' if url.port else ''}"
                f"{url.path}")


class _RunningPushes:
    """The budgets of the pushes running in this process, applied to every huggingface_hub request through the
    library's own client factory. The factory found first (the library's, or a user's with a proxy) is wrapped,
    and put back when the last push ends.

    The factory is process-wide, and a request cannot be traced to the push that made it (huggingface_hub
    uploads from worker threads), so while pushes run, every Hub request gets the shortest timeout among them
    and is refused only once all their deadlines have passed; each push still stops its own retries at its own
    deadline.
    """

    def __init__(self):
        self.lock = threading.Lock()  # orders starts and ends of pushes: which one installs and restores the factory
        self.budgets: list[_Budget] = []
        self.previous: Callable[[], Any] | None = None

    @contextlib.contextmanager
    def running(self, budget: _Budget):
        from huggingface_hub import set_client_factory

        with self.lock:
            if not self.budgets:
                from huggingface_hub.utils import _http

                self.previous = getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) or _http.default_client_factory
                set_client_factory(self.client)  # closes the shared client; the next request builds a bounded one
            self.budgets.append(budget)
        try:
            yield
        finally:
            with self.lock:
                self.budgets.remove(budget)
                if not self.budgets:
                    set_client_factory(self.previous)

    def client(self):
        """The client huggingface_hub would have built, with a default timeout and :meth:`bound` as a hook."""
        client = self.previous()  # called by get_session under huggingface_hub's lock: must not take self.lock
        client.timeout = min((b.timeout for b in list(self.budgets)), default=DEFAULT_TIMEOUT)
        client.event_hooks = {**client.event_hooks, "request": [*client.event_hooks["request"], self.bound]}
        return client

    def bound(self, request) -> None:
        """Request hook: refuse a request once the deadline has passed; cap each of its timeouts (connect, write,
        read, pool) at the push's timeout and at the time left, also where the caller set none (``model_info``
        passes ``timeout=None``, which the client reads as "wait forever"). A read or write timeout bounds the
        wait for the next bytes, not a whole transfer: a large upload that keeps moving is never cut by it."""
        budgets = list(self.budgets)  # a copy: pushes in other threads may start or end meanwhile
        if not budgets:
            return
        last = max(budgets, key=lambda b: b.left())
        if last.left() <= 0:
            raise _PastDeadline(last.past(request))
        limit = min(min(b.timeout for b in budgets), last.left())
        given = request.extensions.get("timeout") or {}
        request.extensions = {**request.extensions, "timeout": {
            phase: limit if given.get(phase) is None else min(given[phase], limit)
            for phase in ("connect", "read", "write", "pool")}}


_RUNNING = _RunningPushes()


# ---------------------------------------------------------------- push


@dataclass
class _Remote:
    """A branch as the push found it: its head commit and files, and the card and manifest hf-adapt left there."""

    head: str
    files: set[str]
    card: str | None
    manifest: list[str]


def push_output(output_dir: str | Path, settings: PushSettings) -> PushResult:
    """Publish ``output_dir`` (an hf-adapt output) to ``settings.repo_id`` in one commit, within the time
    limits of :func:`push_limits` (every request waits at most ``timeout`` s; nothing starts after ``deadline``)."""
    budget = _Budget(*push_limits(settings.timeout, settings.deadline))
    with _RUNNING.running(budget):
        return _push(Path(output_dir), settings, budget)


def _push(directory: Path, settings: PushSettings, budget: _Budget) -> PushResult:
    from huggingface_hub import HfApi

    from hf_adapt.artifacts import read_run_info
    from hf_adapt.run_record import read_record

    record = read_record(directory)  # refuses folders hf-adapt did not write
    if record.kind in ("language_model", "policy", "reward_model"):
        run_info = record.as_dict()  # a language or reward model: no label map
    else:
        run_info, _ = read_run_info(directory)  # refuses folders hf-adapt did not write
    check_release_gate(directory)
    facts = cards.read_facts(directory)
    preflight(settings.repo_id, facts.get("base_model"), settings.revision, settings.create_pr)
    run_info = portable_run_info(run_info, facts)
    api = HfApi()
    retry = {"retries": settings.retries, "backoff_seconds": settings.backoff_seconds, "budget": budget}
    repo_id, branch = settings.repo_id, settings.revision or "main"

    if settings.parent:
        check_repo_id(settings.parent.partition("@")[0], "parent")
        facts["lineage"] = {**(facts.get("lineage") or {}), **parent_lineage(api, settings.parent, facts, retry)}
    card = cards.render_card(facts, repo_id=repo_id, revision=None if branch == "main" else branch)
    check_card(card)

    with_retries(f"create repo {repo_id}", lambda: api.create_repo(repo_id, private=settings.private, exist_ok=True), **retry)
    if branch != "main":
        with_retries(f"create branch {branch}", lambda: api.create_branch(repo_id, branch=branch, exist_ok=True), **retry)
    remote = _read_remote(api, repo_id, branch, retry)
    if remote.card is not None and not settings.overwrite_card and not cards.is_unedited(remote.card):
        raise HubError(f"README.md on {repo_id}@{branch} was edited on the Hub after hf-adapt wrote it (or was not "
                       "written by hf-adapt). hf-adapt renders the card from measured facts, so edits there cannot be "
                       "merged; pass --overwrite_card to replace it (the edited text stays in the repo's history), or "
                       "move the edits into the config (intended_use, out_of_scope_use, limitations) and retrain")
    tag = None if settings.create_pr else _check_tag(api, repo_id, settings.tag, retry)

    message = settings.commit_message or _commit_message(facts)
    with tempfile.TemporaryDirectory(prefix="hf-adapt-push-") as tmp:
        folder = _stage(directory, Path(tmp), card, run_info)
        commit = _commit(api, repo_id, branch, folder, remote, message, settings, budget)
    if tag:
        tag = _tag(api, repo_id, tag, settings.tag == "auto", commit.oid, message, retry)
    logger.info("pushed %s to %s@%s (commit %s%s)", directory, repo_id, branch, commit.oid[:10],
                f", tag {tag}" if tag else "")
    if commit.pr_url:
        logger.info("opened pull request %s", commit.pr_url)
    if settings.update_parent and facts.get("lineage") and not settings.create_pr:
        link_successor(api, facts["lineage"]["parent"], repo_id, retry)
    return PushResult(repo_id, branch, commit.oid, str(commit.commit_url), tag, commit.pr_url)


def check_release_gate(directory: Path) -> None:
    """Refuse an output that failed the release gate its run was given (forgetting, win rate), or whose
    operating point could not be chosen."""
    point_error = (read_json(directory / RUN_FILE) if (directory / RUN_FILE).is_file() else {}).get(
        "operating_point_error")
    if point_error:
        raise HubError(f"{directory} has no operating point: {point_error}; it is not pushed")
    continual, feedback = directory / "continual_results.json", directory / "feedback_results.json"
    if continual.is_file() and (read_json(continual).get("gate") or {}).get("passed") is False:
        from hf_adapt.continual.metrics import describe_regressions

        gate = read_json(continual)["gate"]
        raise HubError(f"{directory} failed its release gate (max_forgetting {gate['max_forgetting']}): "
                       f"{describe_regressions(gate, 'the gated metric')}; it is not pushed")
    if feedback.is_file() and (read_json(feedback).get("gate") or {}).get("passed") is False:
        gate = read_json(feedback)["gate"]
        raise HubError(f"{directory} failed its release gate: win rate {gate['win_rate']} against its parent is below "
                       f"min_win_rate {gate['min_win_rate']}; it is not pushed")


def push_command(output_dir: str | Path, settings: PushSettings) -> str:
    """The ``hf-adapt push`` command line that repeats (or resumes) a push with these settings."""
    import shlex

    parts = ["hf-adapt", "push", str(output_dir), "--repo-id", settings.repo_id]
    if not settings.private:
        parts.append("--public")
    if settings.revision:
        parts += ["--revision", settings.revision]
    if settings.tag != "auto":
        parts += ["--tag", settings.tag or "none"]
    if settings.create_pr:
        parts.append("--create-pr")
    if settings.overwrite_card:
        parts.append("--overwrite-card")
    if settings.parent:
        parts += ["--parent", settings.parent]
    if settings.update_parent:
        parts.append("--update-parent")
    if settings.timeout is not None:
        parts += ["--hub-timeout", f"{settings.timeout:g}"]
    if settings.deadline is not None:
        parts += ["--hub-deadline", f"{settings.deadline:g}"]
    return shlex.join(parts)


def portable_run_info(info: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """``hf_adapt.json`` as pushed: a base model loaded from a local folder is named by its Hub id.

    Whoever loads the repo must be able to rebuild the base; a path on the trainer's disk
    would not resolve anywhere else.
    """
    model = dict(info["model"])
    source = model["name_or_path"]
    if source.startswith("pkg://") and facts.get("base_model"):  # a packaged copy of a Hub model: name the model
        source = model["name_or_path"] = f"hf-hub:{facts['base_model']}" if info["family"] == "timm" else facts["base_model"]
    if is_disk_path(source):
        base = facts.get("base_model")
        if not base:
            raise HubError(f"the base model was loaded from the local folder {source!r}, which no one who downloads "
                           "the repo can load; set base_model_id to its Hub id, or train from the Hub id")
        model["name_or_path"] = f"hf-hub:{base}" if info["family"] == "timm" else base
    if is_disk_path(model.get("weights_file")):
        raise HubError(f"weights_file {model['weights_file']!r} is a file on this disk, which no one who downloads "
                       "the repo can load; publish those weights on the Hub (or ship them in a package, pkg://...)")
    init_from = info.get("init_from")
    if init_from and is_disk_path(init_from.get("source")):  # the parent's weights travel in init/; its path does not
        init_from = {**init_from, "source": Path(init_from["source"]).name}
    return {**info, "model": model, "init_from": init_from}


def _read_remote(api, repo_id: str, branch: str, retry: dict[str, Any]) -> _Remote:
    """The branch head, and the card and file manifest there; any failure to read them stops the push."""

    def fetch(name: str, sha: str) -> str:
        return Path(api.hf_hub_download(repo_id, name, revision=sha)).read_text(encoding="utf-8")

    info = with_retries(f"read {repo_id}@{branch}", lambda: api.model_info(repo_id, revision=branch), **retry)
    files = {s.rfilename for s in info.siblings or []}
    card = with_retries(f"read README.md of {repo_id}", lambda: fetch("README.md", info.sha), **retry) \
        if "README.md" in files else None
    manifest: list[str] = []
    if RUN_FILE in files:
        text = with_retries(f"read {RUN_FILE} of {repo_id}", lambda: fetch(RUN_FILE, info.sha), **retry)
        manifest = json.loads(text).get("files", [])
    return _Remote(info.sha, files, card, manifest)


def _stage(directory: Path, tmp: Path, card, run_info: dict[str, Any]) -> Path:
    """What the commit holds: the output (hard links where possible; hidden files skipped) with the card and
    ``hf_adapt.json`` rewritten for the Hub; ``hf_adapt.json`` lists the files, so the next version can delete
    exactly these."""
    folder = tmp / "repo"
    folder.mkdir(parents=True)
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file() or \
                relative.as_posix() in ("README.md", RUN_FILE):
            continue
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    card.save(str(folder / "README.md"))
    files = sorted({p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} | {RUN_FILE})
    (folder / RUN_FILE).write_text(json.dumps({**run_info, "files": files}, indent=2) + "\n")
    return folder


def _commit(api, repo_id: str, branch: str, folder: Path, remote: _Remote, message: str, settings: PushSettings,
            budget: _Budget):
    """One commit on top of the head the push read: every staged file, and the previous version's files that
    this one no longer has. A retry first checks whether the failed attempt landed after all."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    staged = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    stale = sorted((set(remote.manifest) & remote.files) - set(staged))
    operations = [CommitOperationDelete(path) for path in stale] + [
        CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)) for path in staged]
    attempts = 0

    def attempt():
        nonlocal attempts
        attempts += 1
        if attempts > 1 and (landed := _landed(api, repo_id, branch, remote.head, message)):
            return landed
        return api.create_commit(repo_id, operations=operations, commit_message=message, revision=branch,
                                 create_pr=settings.create_pr, parent_commit=remote.head)

    # a pull request cannot be checked for a landed attempt, so it is not retried (it could open two)
    retries = 0 if settings.create_pr else settings.retries
    try:
        return with_retries(f"upload to {repo_id}@{branch}", attempt, retries, settings.backoff_seconds, budget)
    except HubError as err:
        if "HTTP 412" in str(err):
            raise HubError(f"{repo_id}@{branch} changed while pushing (someone else committed); rerun the push") from None
        raise


@dataclass
class _Landed:
    oid: str
    commit_url: str
    pr_url: str | None = None


def _landed(api, repo_id: str, branch: str, head: str, message: str) -> _Landed | None:
    """The commit an earlier attempt made, if its response was lost: the branch moved and its top commit is ours."""
    commits = api.list_repo_commits(repo_id, revision=branch)
    if commits and commits[0].commit_id != head and commits[0].title == message:
        return _Landed(commits[0].commit_id, f"{api.endpoint}/{repo_id}/commit/{commits[0].commit_id}")
    return None


def _check_tag(api, repo_id: str, wanted: str | None, retry: dict[str, Any]) -> str | None:
    """The tag this version will get (``auto``: ``v1``, ``v2``, ...); an explicit tag must be free."""
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


def _tag(api, repo_id: str, tag: str, auto: bool, commit: str, message: str, retry: dict[str, Any]) -> str:
    """Tag ``commit``. A repeated push that committed nothing new keeps the version tag its commit already has."""
    refs = with_retries(f"list refs of {repo_id}", lambda: api.list_repo_refs(repo_id), **retry)
    targets = {t.name: t.target_commit for t in refs.tags}
    if auto:
        versions = sorted(name for name, target in targets.items() if target == commit and re.fullmatch(r"v\d+", name))
        if versions:
            logger.info("commit %s is already version %s", commit[:10], versions[0])
            return versions[0]
        if tag in targets:  # taken since the push began
            tag = _check_tag(api, repo_id, "auto", retry)
    elif targets.get(tag) == commit:
        return tag
    with_retries(f"tag {tag}", lambda: api.create_tag(repo_id, tag=tag, revision=commit, tag_message=message,
                                                      exist_ok=True), **retry)
    return tag


def _commit_message(facts: dict[str, Any]) -> str:
    metric = facts.get("metric_for_best_model")
    value = facts.get("test_metrics", {}).get(metric)
    score = f": test {metric} {value:.4f}" if isinstance(value, float) else ""
    return f"hf-adapt {facts.get('recipe', 'run')} ({facts.get('regime')}){score}"


# ---------------------------------------------------------------- lineage


def parent_lineage(api, parent: str, facts: dict[str, Any], retry: dict[str, Any]) -> dict[str, Any]:
    """What this version inherits from ``parent`` (``org/name[@revision]``) and what changed, from the parent's
    own ``card_facts.json`` at the commit the revision resolves to."""
    repo, _, revision = parent.partition("@")
    info = with_retries(f"read {parent}", lambda: api.model_info(repo, revision=revision or None), **retry)
    if cards.FACTS_FILE not in {s.rfilename for s in info.siblings or []}:
        raise HubError(f"parent {parent} is not an hf-adapt output: it has no {cards.FACTS_FILE}")
    path = with_retries(f"read {parent}", lambda: api.hf_hub_download(repo, cards.FACTS_FILE, revision=info.sha),
                        **retry)
    theirs = json.loads(Path(path).read_text())
    ours_config, their_config = facts["config"], theirs["config"]
    ignored = {f.name for f in fields(PublishOptions)} | _RUN_ONLY
    changes = [
        {"field": key, "parent": their_config.get(key), "this": ours_config.get(key)}
        for key in sorted(set(ours_config) | set(their_config))
        if key not in ignored and their_config.get(key) != ours_config.get(key)
    ]
    metrics = {key: {"parent": theirs["test_metrics"][key], "this": value}
               for key, value in facts["test_metrics"].items() if key in theirs["test_metrics"]}
    return {
        "parent": repo, "revision": info.sha, "relation": (facts.get("lineage") or {}).get("relation", "new version"),
        "parent_regime": theirs.get("regime"), "changes": changes, "metrics": metrics,
        "same_test_data": _same_test_split(theirs, facts),
    }


def _same_test_split(theirs: dict[str, Any], ours: dict[str, Any]) -> bool:
    """Both versions were scored on the same rows: same data content, split settings and test size."""
    same_data = (ours.get("data_sha256") or ours.get("data_revision")) is not None and all(
        theirs.get(key) == ours.get(key) for key in ("data_sha256", "data_revision"))
    split_keys = ("seed", "test_size", "validation_size", "max_eval_samples", "label_column", "data_files")
    same_split = all(theirs["config"].get(k) == ours["config"].get(k) for k in split_keys)
    return same_data and same_split and theirs["split_sizes"]["test"] == ours["split_sizes"]["test"]


def link_successor(api, parent: str, successor: str, retry: dict[str, Any]) -> None:
    """Set ``new_version: successor`` in the card metadata on the parent's main branch (its text is kept).

    ``new_version`` is a repo-level pointer, so it goes on main whatever revision the parent was named by.
    """
    from huggingface_hub import ModelCard

    remote = _read_remote(api, parent, "main", retry)
    if remote.card is None:
        raise HubError(f"parent {parent} has no README.md to point at {successor}")
    card = ModelCard(cards.strip_fingerprint(remote.card))
    card.data.new_version = successor
    body = cards.fingerprint(str(card)) if cards.is_unedited(remote.card) else str(card)
    with_retries(f"update the card of {parent}", lambda: api.upload_file(
        path_or_fileobj=body.encode("utf-8"), path_in_repo="README.md", repo_id=parent,
        commit_message=f"new_version: {successor}", parent_commit=remote.head), **retry)
    logger.info("card of %s now points to %s", parent, successor)
