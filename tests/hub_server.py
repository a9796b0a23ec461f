"""A small in-memory Hub on 127.0.0.1 that the real ``huggingface_hub`` client (2.4) can push to and pull from.

No Hub that accepts uploads can be installed on the build machines, so push and download tests point the real
client at this server and assert on what arrived (``hub.repo(...)``) and on what was asked (``hub.requests``)::

    with LocalHub({"org/base": folder}) as hub:       # a folder becomes the first commit on `main`
        hub_env(monkeypatch, hub, tmp_path)           # before any huggingface_hub call, see below
        HfApi().create_repo("org/new", private=True)
        HfApi().upload_folder(repo_id="org/new", folder_path=out)
        assert hub.repo("org/new").private and "x.safetensors" in hub.repo("org/new").files("main")

What a test must set, and why (``hub_env`` does all of it with ``monkeypatch``, so it is undone after the test; the
env vars also reach subprocesses, which read them at import and need nothing else):

- ``HF_ENDPOINT``: read once, when ``huggingface_hub.constants`` is imported, into ``constants.ENDPOINT`` *and*
  ``constants.HUGGINGFACE_CO_URL_TEMPLATE``. ``hf_hub_download(endpoint=None)`` builds its URL from the template,
  ``HfApi()`` / ``snapshot_download`` / ``ModelCard.load`` read ``constants.ENDPOINT`` when called, and the
  module-level shortcuts (``huggingface_hub.create_repo``, ``upload_folder``, ``model_info`` ...) are bound
  methods of ``huggingface_hub.hf_api.api``, an ``HfApi`` built at import with the endpoint of that moment. In a
  process that already imported huggingface_hub all three must be patched; ``HfApi(endpoint=hub.url)`` alone covers
  only the calls made through that object.
- ``HF_HUB_OFFLINE=0``: tests/conftest.py sets ``HF_HUB_OFFLINE=1`` (setdefault) for the whole session and the client
  caches it in ``constants.HF_HUB_OFFLINE``; every request checks that constant (``is_offline_mode()``).
- ``HF_HOME`` / ``HF_HUB_CACHE`` in a temp dir: the cache path, token file (``HF_TOKEN_PATH``) and a few marker
  files are derived from ``HF_HOME`` at import; a shared cache would let a download pass from an earlier test's
  files, and a real saved token must never be sent.
- ``HF_TOKEN``: a fake token, so write calls carry ``Authorization: Bearer <token>`` (``hub.require_token`` checks it).
  ``HF_OIDC_RESOURCE`` and ``HUGGING_FACE_HUB_TOKEN`` are removed since they would take precedence or compete.
- ``HF_HUB_DISABLE_XET=1`` (cached as ``constants.HF_HUB_DISABLE_XET``): with ``hf_xet`` installed (it is),
  ``upload_folder`` takes the xet "pipelined" path instead of ``create_commit``. That path works here too (every
  file is "regular"), but behaves differently: README validated once, ``create_pr`` opens the PR first with
  ``POST .../discussions``, and the commit call is retried on 5xx. With it set, tests see the plain
  ``create_commit`` flow and no xet endpoint is ever asked for.
- ``HF_HUB_DISABLE_TELEMETRY=1``: no telemetry calls to the (fake) endpoint.

What the server implements (model, dataset and space repos alike; ``/api/{models|datasets|spaces}/...``):

- repos: ``POST /api/repos/create`` (409 if it exists), ``DELETE /api/repos/delete``, ``PUT .../settings``
  (visibility, gated). A created repo starts, like on the real Hub, with one commit "initial commit" on ``main``
  holding a ``.gitattributes``; a folder given to ``LocalHub(...)`` becomes the first commit on ``main`` instead
  (no ``.gitattributes``).
- commits: ``POST /api/validate-yaml`` (400 if the README front matter is not a YAML mapping),
  ``POST .../preupload/{rev}`` (every file ``"regular"``, with the remote blob ``oid`` so the client skips unchanged
  files), ``POST .../commit/{rev}`` with the NDJSON body (``header``, ``file``, ``deletedFile``,
  ``deletedFolder``; ``lfsFile`` answers 400), ``?create_pr=1`` opens ``refs/pr/N`` (N = 1, 2, ...) from the head
  of ``rev`` (or from ``parentCommit``). Without ``create_pr``, ``rev`` must be a branch or ``refs/pr/N`` (else 404
  ``RevisionNotFound``) and a ``parentCommit`` that is not its head answers 412.
- pull requests: ``POST .../discussions`` (``create_pull_request`` / ``create_discussion``; a PR is a draft
  ``refs/pr/N`` at the head of ``main``) and ``GET .../discussions/{N}``; PRs and discussions share numbers.
- refs: ``POST/DELETE .../branch/{name}`` (``startingPoint``; 409 if it exists), ``POST .../tag/{rev}``
  (``{"tag", "message"}``; 409 if it exists), ``DELETE .../tag/{name}``, ``GET .../refs[?include_prs=1]``
  (pull request refs are named ``"1"``, ``"2"``, ... with ``ref`` ``refs/pr/N``), ``GET .../commits/{rev}``.
- reads: ``GET /api/{type}s/{repo}[/revision/{rev}]`` (id, sha, private, siblings, cardData parsed from
  README.md; ``?blobs=1`` adds sizes and blob ids), ``GET .../tree/{rev}[/{path}]`` (``recursive``; directories
  included, one page), ``POST .../paths-info/{rev}``, ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with
  ``X-Repo-Commit``, ``ETag`` (git blob sha1) and ``Range`` support; 404 with ``X-Error-Code`` ``RepoNotFound``,
  ``RevisionNotFound`` or ``EntryNotFound``. ``GET /api/whoami-v2`` answers ``hub.user``.
- revisions: a branch, a tag, ``refs/heads/x``, ``refs/tags/x``, ``refs/pr/N`` or a commit sha (or a unique prefix of
  at least 7 hex digits). Revisions arrive URL-quoted (``refs%2Fpr%2F1``): paths are split on "/" before unquoting.
- anything else (``/api/agent-harnesses``, LFS batch, xet tokens ...) answers a plain 404.

Test hooks: ``hub.repo(id)`` (a :class:`HubRepo`: ``private``, ``visibility``, ``files(rev)``, ``resolve(rev)``,
``branches``, ``tags``, ``tag_messages``, ``pull_requests``, ``discussions``, ``commits``), ``hub.add_repo(...)``,
``hub.requests`` ("METHOD /unquoted/path", never headers nor query), ``hub.auth_headers_seen``, ``hub.fail(...)``
(inject an HTTP status or a dropped connection), ``hub.require_token(...)``, and ``record_backoff(monkeypatch)``
(retries without sleeping, returns the waits). State is guarded by one lock: the client sends preupload and
download calls in parallel.

Client behaviour on failures (huggingface_hub 2.4, legacy path), pinned by tests/test_hub_server.py: preupload and
tree listings go through ``http_backoff`` (retried on 408/429/5xx and network errors, waits 1, 2, 4, 8, 8 s);
create_repo, validate-yaml, commit, branch, tag, refs and ``repo_info`` are not retried; ``hf_hub_download``
repeats a failed 5xx HEAD once at once, resumes a GET cut mid-way after 1 s, but raises on a 5xx GET and on a
dropped HEAD (``httpx2.RemoteProtocolError``); ``snapshot_download`` turns a 5xx on ``/revision/`` into
``LocalEntryNotFoundError`` when nothing is cached.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

DEFAULT_TOKEN = "hf_fake_token_for_tests"

# What the real Hub writes in a new repo's first commit (abridged).
GITATTRIBUTES = b"""*.bin filter=lfs diff=lfs merge=lfs -text
*.gguf filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""

_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of ``data``: what the Hub reports as a file's ``oid`` / ETag (non-LFS files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _front_matter(readme: bytes | None) -> dict | None:
    """The YAML metadata block of a README.md; raises ``yaml.YAMLError`` / ``ValueError`` if it is malformed."""
    if readme is None:
        return None
    # Same pattern as huggingface_hub.repocard's.
    match = re.match(r"^\s*---[\r\n]+([\S\s]*?)[\r\n]+---(\r\n|\n|$)", readme.decode("utf-8", "replace"))
    if match is None:
        return None
    data = yaml.safe_load(match.group(1))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"metadata must be a YAML mapping, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Commit:
    """One commit: the full tree (``files``) after it, and where it was made (``ref``: a branch or ``refs/pr/N``)."""

    sha: str
    parent: str | None
    summary: str
    description: str
    files: Mapping[str, bytes] = field(repr=False)
    ref: str
    date: str


@dataclass
class HubRepo:
    """One repo's state. Read it after the client call returns; the server mutates it under ``LocalHub``'s lock."""

    repo_id: str
    repo_type: str = "model"
    visibility: str = "public"
    gated: Any = False
    created_at: str = field(default_factory=_now)
    commits: list[Commit] = field(default_factory=list)  # in creation order, all refs together
    branches: dict[str, str] = field(default_factory=dict)  # name -> sha
    tags: dict[str, str] = field(default_factory=dict)  # name -> sha
    tag_messages: dict[str, str] = field(default_factory=dict)
    pull_requests: dict[int, str] = field(default_factory=dict)  # N (refs/pr/N) -> sha
    discussions: dict[int, dict] = field(default_factory=dict)  # N -> {"title", "description", "pull_request", ...}

    @property
    def private(self) -> bool:
        return self.visibility == "private"

    def commit(self, revision: str = "main") -> Commit:
        sha = self.resolve(revision)
        if sha is None:
            raise KeyError(f"{self.repo_id}: no revision {revision!r} (branches {sorted(self.branches)}, "
                           f"tags {sorted(self.tags)}, PRs {sorted(self.pull_requests)})")
        return self._by_sha[sha]

    def files(self, revision: str = "main") -> dict[str, bytes]:
        """``{path: content}`` at a branch, tag, ``refs/pr/N`` or commit sha."""
        return dict(self.commit(revision).files)

    def resolve(self, revision: str) -> str | None:
        """The commit sha a revision points to, or None."""
        if revision in self.branches:
            return self.branches[revision]
        if revision in self.tags:
            return self.tags[revision]
        if match := re.fullmatch(r"refs/pr/(\d+)", revision):
            return self.pull_requests.get(int(match.group(1)))
        if revision.startswith("refs/heads/"):
            return self.branches.get(revision[len("refs/heads/"):])
        if revision.startswith("refs/tags/"):
            return self.tags.get(revision[len("refs/tags/"):])
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [c.sha for c in self.commits if c.sha.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None

    @property
    def _by_sha(self) -> dict[str, Commit]:
        return {c.sha: c for c in self.commits}

    def _open_discussion(self, title: str, description: str, pull_request: bool, base: str = "main") -> int:
        number = max(self.discussions, default=0) + 1  # PRs and discussions share numbers, as on the Hub
        self.discussions[number] = {"title": title, "description": description, "pull_request": pull_request,
                                    "status": "draft" if pull_request else "open", "created_at": _now(),
                                    "base": base}
        if pull_request:
            self.pull_requests[number] = self.branches[base]
        return number

    def _add_commit(self, parent: str | None, summary: str, description: str, files: Mapping[str, bytes],
                    ref: str) -> Commit:
        digest = hashlib.sha1(f"{parent}\n{summary}\n{description}\n{len(self.commits)}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_oid(files[path])}\n".encode())
        commit = Commit(digest.hexdigest(), parent, summary, description, MappingProxyType(dict(files)), ref, _now())
        self.commits.append(commit)
        return commit


@dataclass
class Failure:
    """An injected failure (see ``LocalHub.fail``); ``hits`` counts the requests it answered."""

    method: str
    path_substring: str
    status: int | None
    times: int
    body: bytes
    headers: dict[str, str]
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.hits < self.times and self.method in ("*", method) and self.path_substring in path


class HubError(Exception):
    """An HTTP error answer: JSON ``{"error": message}`` plus the ``X-Error-Code`` the client maps to exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, dict(headers or {})


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _json(obj: Any, status: int = 200) -> _Reply:
    return _Reply(status, json.dumps(obj).encode(), {"Content-Type": "application/json"})


@dataclass
class _Request:
    method: str
    segments: list[str]
    query: dict[str, list[str]]
    body: bytes
    headers: Mapping[str, str]
    token: str | None

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def flag(self, name: str) -> bool:
        return (self.arg(name) or "").lower() in ("1", "true")

    def json(self) -> dict:
        if not self.body:
            return {}
        try:
            data = json.loads(self.body)
        except json.JSONDecodeError as err:
            raise HubError(400, f"request body is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise HubError(400, "request body must be a JSON object")
        return data


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # keep test output clean
        pass

    def _serve(self):
        split = urlsplit(self.path)
        body = self._body()  # read it all first: answering early breaks the client's send
        auth = self.headers.get("Authorization")
        token = auth[len("Bearer "):] if auth and auth.startswith("Bearer ") else (auth or None)
        request = _Request(self.command, [unquote(s) for s in split.path.split("/") if s], parse_qs(split.query),
                           body, self.headers, token)
        reply = self.server.hub._answer(request, unquote(split.path))
        if reply is None:  # injected network error: close without a response
            self.close_connection = True
            return
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        if "Content-Length" not in reply.headers:
            self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():  # trailers
                pass
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # snapshot_download opens 8 connections at once; the default backlog (5) stalls
    hub: LocalHub


class LocalHub:
    """An in-memory Hub on 127.0.0.1: ``with LocalHub({"org/name": folder}) as hub:`` then ``hub_env(...)``.

    Args:
        repos: ``{repo_id: folder}`` (or ``{repo_id: {path: bytes}}``), served as public model repos whose
            ``main`` has one commit with those files. A key ``"datasets/org/name"`` makes a dataset repo.
        user: the namespace ``whoami`` reports and ``create_repo`` uses for an id without ``org/``.
    """

    def __init__(self, repos: Mapping[str, Path | str | Mapping[str, bytes]] | None = None, *,
                 user: str = "hf-adapt-tests"):
        self.user = user
        self.requests: list[str] = []
        self.auth_headers_seen = 0
        self._repos: dict[tuple[str, str], HubRepo] = {}
        self._failures: list[Failure] = []
        self._token: str | None = None
        self._lock = threading.RLock()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.hub = self
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None
        for key, content in (repos or {}).items():
            repo_type, repo_id = ("dataset", key[9:]) if key.startswith("datasets/") else ("model", key)
            self.add_repo(repo_id, content, repo_type=repo_type)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> LocalHub:
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- test hooks ------------------------------------------------------------------------------------------

    def repo(self, repo_id: str, repo_type: str = "model") -> HubRepo:
        """The live state of a repo; ``KeyError`` naming the repos that exist if it does not."""
        with self._lock:
            try:
                return self._repos[(repo_type, repo_id)]
            except KeyError:
                known = sorted(f"{t}:{i}" for t, i in self._repos)
                raise KeyError(f"no {repo_type} repo {repo_id!r} on the LocalHub (has {known})") from None

    def add_repo(self, repo_id: str, files: Path | str | Mapping[str, bytes] | None = None, *,
                 repo_type: str = "model", private: bool = False) -> HubRepo:
        """Create a repo directly (no request logged) with ``files`` (a folder or ``{path: bytes}``) on ``main``.

        ``files=None`` gives what ``create_repo`` gives: one "initial commit" holding a ``.gitattributes``.
        """
        if files is None:
            content, summary = {".gitattributes": GITATTRIBUTES}, "initial commit"
        elif isinstance(files, Mapping):
            content, summary = dict(files), "initial commit"
        else:
            root = Path(files)
            if not root.is_dir():
                raise ValueError(f"LocalHub repo {repo_id!r}: {root} is not a folder")
            content = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
            summary = f"Upload {root.name}"
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise ValueError(f"LocalHub already has {repo_type} repo {repo_id!r}")
            repo = HubRepo(repo_id, repo_type, "private" if private else "public")
            repo.branches["main"] = repo._add_commit(None, summary, "", content, "main").sha
            self._repos[(repo_type, repo_id)] = repo
            return repo

    def fail(self, method: str, path_substring: str, status: int | None, *, times: int = 1,
             body: bytes | str | dict | None = None, headers: Mapping[str, str] | None = None) -> Failure:
        """Answer the next ``times`` requests whose method (``"*"``: any) and unquoted path match with ``status``.

        ``status=None`` drops the connection without a response (the client sees a network error). Matching
        requests are still logged in ``hub.requests``; rules are checked before authentication, in the order given.
        """
        if body is None:
            body = {"error": f"LocalHub: injected {status} for {method} *{path_substring}*"}
        payload = json.dumps(body).encode() if isinstance(body, dict) else body.encode() if isinstance(body, str) else body
        rule = Failure(method.upper(), path_substring, status, times, payload,
                       {"Content-Type": "application/json", **(headers or {})})
        with self._lock:
            self._failures.append(rule)
        return rule

    def require_token(self, token: str | None) -> None:
        """Check ``Authorization: Bearer <token>`` from now on (None: stop checking, the default).

        While set, a wrong token answers 401 "Invalid credentials in Authorization header" on every endpoint (as
        the Hub does), a missing token answers 401 on writes, and reads of private repos without it answer 401 with
        ``X-Error-Code: RepoNotFound`` (the client raises ``RepositoryNotFoundError``, as for the real Hub).
        """
        with self._lock:
            self._token = token

    # --- request handling ------------------------------------------------------------------------------------

    def _answer(self, request: _Request, logged_path: str) -> _Reply | None:
        with self._lock:
            self.requests.append(f"{request.method} {logged_path}")
            self.auth_headers_seen += "Authorization" in request.headers
            for rule in self._failures:
                if rule.matches(request.method, logged_path):
                    rule.hits += 1
                    return None if rule.status is None else _Reply(rule.status, rule.body, dict(rule.headers))
            try:
                if self._token is not None and request.token is not None and request.token != self._token:
                    raise HubError(401, _INVALID_CREDENTIALS)
                return self._route(request)
            except HubError as err:
                header_safe = " ".join(err.message.encode("ascii", "replace").decode().split())
                headers = {"Content-Type": "application/json", "X-Error-Message": header_safe, **err.headers}
                if err.code:
                    headers["X-Error-Code"] = err.code
                return _Reply(err.status, json.dumps({"error": err.message}).encode(), headers)

    def _route(self, req: _Request) -> _Reply:
        seg, method = req.segments, req.method
        if seg[:1] == ["api"]:
            if seg[1:] == ["repos", "create"] and method == "POST":
                return self._create_repo(req)
            if seg[1:] == ["repos", "delete"] and method == "DELETE":
                return self._delete_repo(req)
            if seg[1:] == ["validate-yaml"] and method == "POST":
                return self._validate_yaml(req)
            if seg[1:] == ["whoami-v2"] and method == "GET":
                self._check_auth(req, None, write=True)
                return _json({"type": "user", "name": self.user, "fullname": self.user, "orgs": [],
                              "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}}})
            if len(seg) >= 3 and seg[1] in _TYPES:
                repo, rest = self._find_repo(_TYPES[seg[1]], seg[2:])
                return self._repo_api(req, repo, rest)
        else:
            repo_type, path = ("model", seg)
            if seg[:1] and seg[0] in _TYPES and seg[0] != "models":
                repo_type, path = _TYPES[seg[0]], seg[1:]
            if "resolve" in path[1:3] and method in ("GET", "HEAD"):
                repo, rest = self._find_repo(repo_type, path)
                if rest[:1] == ["resolve"]:
                    self._check_auth(req, repo, write=False)
                    return self._resolve_file(req, repo, rest[1:])
        raise HubError(404, f"LocalHub does not implement {method} /{'/'.join(seg)}")

    def _find_repo(self, repo_type: str, segments: list[str]) -> tuple[HubRepo, list[str]]:
        for n in (2, 1):
            repo = self._repos.get((repo_type, "/".join(segments[:n])))
            if repo is not None and len(segments) >= n:
                return repo, segments[n:]
        raise HubError(404, "Repository not found", "RepoNotFound")

    def _check_auth(self, req: _Request, repo: HubRepo | None, *, write: bool) -> None:
        if self._token is None or req.token == self._token:
            return
        if write:
            raise HubError(401, _INVALID_CREDENTIALS if req.token else "You must be authenticated to do this (no token)")
        if repo is not None and repo.private:
            raise HubError(401, "Repository not found", "RepoNotFound")

    # --- repos -----------------------------------------------------------------------------------------------

    def _create_repo(self, req: _Request) -> _Reply:
        self._check_auth(req, None, write=True)
        body = req.json()
        name = body.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise HubError(400, f"invalid repo name {name!r}")
        repo_type = body.get("type") or "model"
        if repo_type not in _URL_PREFIX:
            raise HubError(400, f"invalid repo type {repo_type!r}")
        repo_id = f"{body.get('organization') or self.user}/{name}"
        url = f"{self.url}/{_URL_PREFIX[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self._repos:
            return _json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
        visibility = body.get("visibility") or "public"
        if visibility not in ("public", "private", "protected"):
            raise HubError(400, f"invalid visibility {visibility!r}")
        repo = self.add_repo(repo_id, None, repo_type=repo_type)
        repo.visibility = visibility
        return _json({"url": url, "name": repo_id, "id": repo_id})

    def _delete_repo(self, req: _Request) -> _Reply:
        self._check_auth(req, None, write=True)
        body = req.json()
        key = (body.get("type") or "model", f"{body.get('organization') or self.user}/{body.get('name')}")
        if key not in self._repos:
            raise HubError(404, "Repository not found", "RepoNotFound")
        del self._repos[key]
        return _Reply(200)

    def _validate_yaml(self, req: _Request) -> _Reply:
        content = req.json().get("content", "")
        try:
            _front_matter(content.encode())
        except (yaml.YAMLError, ValueError) as err:
            return _json({"errors": [{"message": f"Invalid YAML metadata: {err}"}], "warnings": []}, 400)
        return _json({"errors": [], "warnings": []})

    def _repo_api(self, req: _Request, repo: HubRepo, rest: list[str]) -> _Reply:
        method, action, args = req.method, (rest[0] if rest else ""), rest[1:]
        joined = "/".join(args)
        write = method in ("POST", "PUT", "DELETE") and action != "paths-info"  # POST discussions: a write too
        self._check_auth(req, repo, write=write)
        if method == "GET" and action == "":
            return self._info(req, repo, "main")
        if method == "GET" and action == "revision" and args:
            return self._info(req, repo, joined)
        if method == "GET" and action == "tree" and args:
            revision, path = self._split_revision(args)
            return self._tree(req, repo, revision, "/".join(path))
        if method == "POST" and action == "paths-info" and args:
            return self._paths_info(req, repo, joined)
        if method == "GET" and action == "refs":
            return self._refs(req, repo)
        if method == "GET" and action == "commits" and args:
            return self._commits(repo, joined)
        if method == "POST" and action == "preupload" and args:
            return self._preupload(req, repo, joined)
        if method == "POST" and action == "commit" and args:
            return self._commit(req, repo, joined)
        if action == "branch" and args and method in ("POST", "DELETE"):
            return self._branch(req, repo, joined)
        if action == "tag" and args and method in ("POST", "DELETE"):
            return self._tag(req, repo, joined)
        if action == "discussions" and method == "POST" and not args:
            body = req.json()
            title = str(body.get("title") or "").strip()
            if not title:
                raise HubError(400, "a discussion needs a title")
            number = repo._open_discussion(title, body.get("description") or "", bool(body.get("pullRequest")))
            return _json({"num": number, "pullRequest": bool(body.get("pullRequest"))})
        if action == "discussions" and method == "GET" and len(args) == 1 and args[0].isdigit():
            return self._discussion(repo, int(args[0]))
        if method == "PUT" and action == "settings":
            body = req.json()
            if "visibility" in body:
                repo.visibility = body["visibility"]
            if "private" in body:
                repo.visibility = "private" if body["private"] else "public"
            if "gated" in body:
                repo.gated = body["gated"]
            return _json({})
        raise HubError(404, f"LocalHub does not implement {method} {action!r} on repos")

    @staticmethod
    def _split_revision(args: list[str]) -> tuple[str, list[str]]:
        # A client that did not quote the revision sends refs/pr/1 as three segments.
        if args[0] == "refs" and len(args) >= 3:
            return "/".join(args[:3]), args[3:]
        return args[0], args[1:]

    def _sha(self, repo: HubRepo, revision: str) -> str:
        sha = repo.resolve(revision)
        if sha is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return sha

    # --- reads -----------------------------------------------------------------------------------------------

    def _info(self, req: _Request, repo: HubRepo, revision: str) -> _Reply:
        commit = repo._by_sha[self._sha(repo, revision)]
        blobs = req.flag("blobs")
        siblings = [{"rfilename": p, **({"size": len(d), "blobId": git_blob_oid(d)} if blobs else {})}
                    for p, d in sorted(commit.files.items())]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0], "sha": commit.sha, "private": repo.private,
            "gated": repo.gated, "disabled": False, "lastModified": commit.date, "createdAt": repo.created_at,
            "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        try:
            card = _front_matter(commit.files.get("README.md"))
        except (yaml.YAMLError, ValueError):
            card = None
        if card:
            info["cardData"] = card
            tags = card.get("tags") or []
            info["tags"] = [t for t in ([card.get("library_name")] + list(tags if isinstance(tags, list) else [tags])) if t]
            for key in ("library_name", "pipeline_tag"):
                if card.get(key):
                    info[key] = card[key]
        return _json(info)

    @staticmethod
    def _entries(files: Mapping[str, bytes], paths: list[str]) -> list[dict]:
        folders = {p.rsplit("/", 1)[0] for p in files if "/" in p}
        folders |= {f.rsplit("/", i)[0] for f in list(folders) for i in range(1, f.count("/") + 1)}
        entries = []
        for path in paths:
            if path in files:
                entries.append({"type": "file", "oid": git_blob_oid(files[path]), "size": len(files[path]),
                                "path": path})
            elif path in folders:
                listing = "".join(f"{p}\0{git_blob_oid(d)}\n" for p, d in sorted(files.items())
                                  if p.startswith(path + "/"))
                entries.append({"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0,
                                "path": path})
        return entries

    def _tree(self, req: _Request, repo: HubRepo, revision: str, path: str) -> _Reply:
        files = repo._by_sha[self._sha(repo, revision)].files
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        below = [p[len(prefix):] for p in files if p.startswith(prefix)]
        if path and not below:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        if req.flag("recursive"):
            names = {"/".join(p.split("/")[:i]) for p in below for i in range(1, p.count("/") + 2)}
        else:
            names = {p.split("/")[0] for p in below}
        return _json(self._entries(files, sorted(prefix + n for n in names)))

    def _paths_info(self, req: _Request, repo: HubRepo, revision: str) -> _Reply:
        files = repo._by_sha[self._sha(repo, revision)].files
        form = parse_qs(req.body.decode())
        if req.headers.get("Content-Type", "").startswith("application/json"):
            form = {"paths": req.json().get("paths", [])}
        return _json(self._entries(files, [p.strip("/") for p in form.get("paths", [])]))

    def _refs(self, req: _Request, repo: HubRepo) -> _Reply:
        data: dict[str, list] = {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo.branches.items()],
            "converts": [],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in repo.tags.items()],
        }
        if req.flag("include_prs"):
            data["pullRequests"] = [{"name": str(n), "ref": f"refs/pr/{n}", "targetCommit": s}
                                    for n, s in sorted(repo.pull_requests.items())]
        return _json(data)

    def _commits(self, repo: HubRepo, revision: str) -> _Reply:
        by_sha, sha, items = repo._by_sha, self._sha(repo, revision), []
        while sha is not None:
            commit = by_sha[sha]
            items.append({"id": commit.sha, "title": commit.summary, "message": commit.description,
                          "authors": [{"user": self.user}], "date": commit.date})
            sha = commit.parent
        return _json(items)

    def _discussion(self, repo: HubRepo, number: int) -> _Reply:
        item = repo.discussions.get(number)
        if item is None:
            raise HubError(404, f"Discussion {number} not found")
        return _json({
            "num": number, "title": item["title"], "status": item["status"], "createdAt": item["created_at"],
            "author": {"name": self.user}, "repo": {"name": repo.repo_id, "type": repo.repo_type},
            "isPullRequest": item["pull_request"], "events": [], "filesWithConflicts": [],
            "changes": {"base": f"refs/heads/{item['base']}"}, "diff": "",
        })

    def _resolve_file(self, req: _Request, repo: HubRepo, args: list[str]) -> _Reply:
        if not args:
            raise HubError(404, "Entry not found", "EntryNotFound")
        revision, path = self._split_revision(args)
        sha = self._sha(repo, revision)
        files = repo._by_sha[sha].files
        filename = "/".join(path)
        if filename not in files:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        data = files[filename]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_oid(data)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        status, body = 200, data
        if match := re.fullmatch(r"bytes=(\d+)-(\d*)", req.headers.get("Range", "").strip()):
            start, end = int(match.group(1)), int(match.group(2) or len(data) - 1)
            if start >= len(data):
                raise HubError(416, "Requested range not satisfiable", None, {"Content-Range": f"bytes */{len(data)}"})
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        return _Reply(status, body, headers)

    # --- writes ----------------------------------------------------------------------------------------------

    def _writable_head(self, repo: HubRepo, revision: str) -> str:
        """The head of a ref commits can go to (a branch or ``refs/pr/N``), else 404 RevisionNotFound."""
        name = revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision
        if name in repo.branches:
            return repo.branches[name]
        if (match := re.fullmatch(r"refs/pr/(\d+)", name)) and int(match.group(1)) in repo.pull_requests:
            return repo.pull_requests[int(match.group(1))]
        raise HubError(404, f"Invalid rev id: {revision} (not a branch or a pull request ref)", "RevisionNotFound")

    def _preupload(self, req: _Request, repo: HubRepo, revision: str) -> _Reply:
        files = repo._by_sha[self._writable_head(repo, revision)].files
        answer = []
        for item in req.json().get("files", []):
            path = item.get("path")
            remote = files.get(path)
            answer.append({"path": path, "uploadMode": "regular", "shouldIgnore": False,
                           "oid": git_blob_oid(remote) if remote is not None else None})
        return _json({"files": answer, "commitOid": repo.resolve(revision)})

    def _commit(self, req: _Request, repo: HubRepo, revision: str) -> _Reply:
        try:
            lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise HubError(400, f"commit body is not NDJSON: {err}") from err
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "commit body must start with a 'header' line")
        header = lines[0].get("value") or {}
        summary = header.get("summary")
        if not summary:
            raise HubError(400, "commit header needs a non-empty 'summary'")
        head = self._writable_head(repo, revision)
        parent = head
        if header.get("parentCommit"):
            wanted = repo.resolve(header["parentCommit"])
            if wanted is None or wanted not in repo._by_sha:
                raise HubError(404, f"Invalid parentCommit: {header['parentCommit']}", "RevisionNotFound")
            if req.flag("create_pr"):
                parent = wanted
            elif wanted != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(repo._by_sha[parent].files)
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value") or {}
            path = str(value.get("path", "")).strip("/")
            if not path or ".." in path.split("/"):
                raise HubError(400, f"invalid path in commit: {value.get('path')!r}")
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"unsupported encoding {value.get('encoding')!r} for {path}")
                files[path] = base64.b64decode(value.get("content", ""))
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            elif key == "lfsFile":
                raise HubError(400, f"LocalHub does not store LFS files ({path}): its preupload answers every file "
                                    "'regular', so content must come inline as a 'file' line")
            else:
                raise HubError(400, f"unknown commit operation {key!r}")
        if req.flag("create_pr"):
            base = revision[len("refs/heads/"):] if revision.startswith("refs/heads/") else revision
            if base not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision} (a pull request targets a branch)", "RevisionNotFound")
            number = repo._open_discussion(summary, header.get("description") or "", True, base)
            ref = f"refs/pr/{number}"
        else:
            number, ref = None, revision
        commit = repo._add_commit(parent, summary, header.get("description") or "", files, ref)
        name = ref[len("refs/heads/"):] if ref.startswith("refs/heads/") else ref
        if match := re.fullmatch(r"refs/pr/(\d+)", name):
            repo.pull_requests[int(match.group(1))] = commit.sha
        else:
            repo.branches[name] = commit.sha
        base = f"{self.url}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"
        return _json({"success": True, "commitUrl": f"{base}/commit/{commit.sha}", "commitOid": commit.sha,
                      "commitMessage": summary, "hookOutput": "",
                      "pullRequestUrl": f"{base}/discussions/{number}" if number is not None else None})

    def _branch(self, req: _Request, repo: HubRepo, branch: str) -> _Reply:
        if req.method == "DELETE":
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[branch]
            return _Reply(200)
        if branch.startswith("refs/") or not branch:
            raise HubError(400, f"invalid branch name {branch!r}")
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        starting_point = req.json().get("startingPoint") or "main"
        repo.branches[branch] = self._sha(repo, starting_point)
        return _Reply(200)

    def _tag(self, req: _Request, repo: HubRepo, revision: str) -> _Reply:
        if req.method == "DELETE":  # DELETE .../tag/{tag}
            if repo.tags.pop(revision, None) is None:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            repo.tag_messages.pop(revision, None)
            return _Reply(200)
        body = req.json()
        tag = body.get("tag")
        if not isinstance(tag, str) or not tag or tag.startswith("refs/"):
            raise HubError(400, f"invalid tag name {tag!r}")
        sha = self._sha(repo, revision)
        if tag in repo.tags:
            raise HubError(409, f"Reference already exists: refs/tags/{tag}")
        repo.tags[tag] = sha
        if body.get("message"):
            repo.tag_messages[tag] = body["message"]
        return _Reply(200)


def record_backoff(monkeypatch) -> list[float]:
    """Make huggingface_hub retry without sleeping; returns the list of waits it asked for.

    ``http_backoff`` (preupload, tree listings, xet-path commits) sleeps 1, 2, 4, 8, 8 s between its 5 retries on
    408/429/5xx and network errors, and a download cut mid-GET sleeps 1 s before resuming; tests assert the waits
    instead of spending them.
    """
    import time

    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    waits: list[float] = []

    class _Clock:
        def __getattr__(self, name):
            return getattr(time, name)

        @staticmethod
        def sleep(seconds: float) -> None:
            waits.append(seconds)

    monkeypatch.setattr(_http, "time", _Clock())
    monkeypatch.setattr(file_download, "time", _Clock())
    return waits


def hub_env(monkeypatch, hub: LocalHub, tmp_path: Path | str, token: str | None = DEFAULT_TOKEN) -> dict[str, str]:
    """Point huggingface_hub (this process and its subprocesses) at ``hub``, online, with a temp cache and ``token``.

    Sets the env vars listed in the module docstring with ``monkeypatch.setenv`` (subprocesses inherit them), then
    patches what huggingface_hub (and datasets, if imported) cached from them at import. ``token=None`` sends no
    token. Returns the env vars set, to pass to a subprocess explicitly if wanted.
    """
    home = Path(tmp_path) / "hf_home"
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    }
    if token is not None:
        env["HF_TOKEN"] = token
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_OIDC_RESOURCE", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_ASSETS_CACHE",
                 "HF_XET_CACHE", "HUGGINGFACE_HUB_CACHE", "HUGGINGFACE_CO_STAGING", *(["HF_TOKEN"] if token is None else [])):
        monkeypatch.delenv(name, raising=False)

    import sys

    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    for name, value in {
        "ENDPOINT": hub.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HUB_OFFLINE": False,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(home / ".check_for_skill_update_done"),
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": False,
        "HF_HUB_DISABLE_UPDATE_CHECK": True,
    }.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    # Module-level shortcuts (huggingface_hub.upload_folder, ...) are methods of an HfApi built at import.
    monkeypatch.setattr(hf_api.api, "endpoint", hub.url)
    if hasattr(_http, "_HUB_ORIGINS"):  # origins the auth header may be forwarded to on redirects
        monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(hub.url)})
    for module, name in (("huggingface_hub.utils._cache_manager", "HF_HUB_CACHE"),
                         ("huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE")):
        if module in sys.modules:
            monkeypatch.setattr(sys.modules[module], name, str(home / ("hub" if name == "HF_HUB_CACHE" else "assets")))
    if "datasets.config" in sys.modules:  # datasets keeps its own copies
        config = sys.modules["datasets.config"]
        for name, value in {"HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": False, "HF_DATASETS_OFFLINE": False,
                            "HUB_DATASETS_URL": hub.url + "/datasets/{repo_id}/resolve/{revision}/{path}"}.items():
            monkeypatch.setattr(config, name, value, raising=False)
    return env


def card_snippet(card_text: str) -> str:
    """The Python of a model card's "How to use" section, to run as a user would."""
    return re.search(r"## How to use\n\n```python\n(.*?)```", card_text, re.S).group(1)


def run_card_snippet(card_text: str, cwd) -> subprocess.CompletedProcess:
    """Run a model card's "How to use" code in a fresh Python, in ``cwd``, as a user would; the finished process."""
    return subprocess.run([sys.executable, "-c", card_snippet(card_text)], capture_output=True, text=True,
                          timeout=300, cwd=cwd)
