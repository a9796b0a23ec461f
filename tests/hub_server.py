"""A read-only Hub on 127.0.0.1: serves local folders as model repos to the real huggingface_hub client.

It implements what ``snapshot_download`` / ``hf_hub_download`` call (huggingface_hub 2.x):
``/api/models/{repo}/revision/{rev}``, ``/api/models/{repo}/tree/{rev}`` and
``/{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit`` and ``ETag`` headers.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


class _Handler(BaseHTTPRequestHandler):
    repos: dict[str, Path] = {}
    requests: list[str] = []

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj, head=False):
        self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

    def _repo(self, parts: list[str]) -> tuple[str, Path] | None:
        for n in (2, 1):
            name = "/".join(parts[:n])
            if name in self.repos:
                return name, self.repos[name]
        return None

    def _files(self, root: Path) -> list[Path]:
        return sorted(p for p in root.rglob("*") if p.is_file())

    def _commit(self, root: Path) -> str:
        digest = hashlib.sha1()
        for path in self._files(root):
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
        return digest.hexdigest()

    def _handle(self, head: bool):
        path = unquote(urlparse(self.path).path)
        self.requests.append(f"{self.command} {path}")
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"]:
            found = self._repo(parts[2:])
            if not found:
                return self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head)
            name, root = found
            rest = parts[2 + len(name.split("/")):]
            sha = self._commit(root)
            files = self._files(root)
            if rest[:1] == ["revision"]:
                return self._json({"id": name, "sha": sha, "private": False,
                                   "siblings": [{"rfilename": str(p.relative_to(root))} for p in files]}, head)
            if rest[:1] == ["tree"]:
                return self._json([{"type": "file", "path": str(p.relative_to(root)), "size": p.stat().st_size,
                                    "oid": hashlib.sha1(p.read_bytes()).hexdigest()} for p in files], head)
            return self._send(404, b"{}", None, head)
        found = self._repo(parts)
        if found and "resolve" in parts:
            name, root = found
            index = parts.index("resolve")
            file = root.joinpath(*parts[index + 2:])
            if not file.is_file():
                return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
            body = file.read_bytes()
            headers = {"X-Repo-Commit": self._commit(root), "ETag": f'"{hashlib.sha1(body).hexdigest()}"',
                       "Content-Type": "application/octet-stream"}
            return self._send(200, body, headers, head)
        return self._send(404, b"", None, head)

    def do_GET(self):
        self._handle(head=False)

    def do_HEAD(self):
        self._handle(head=True)


class LocalHub:
    """``with LocalHub({"org/name": folder}) as hub:`` then point HF_ENDPOINT at ``hub.url``."""

    def __init__(self, repos: dict[str, Path]):
        handler = type("Handler", (_Handler,), {"repos": dict(repos), "requests": []})
        self.handler = handler
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def requests(self) -> list[str]:
        return self.handler.requests

    def __enter__(self) -> LocalHub:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
