"""Issue 17: a push to a Hub that never answers, or stops answering mid-way, fails clearly within a known time.

The endpoints here accept TCP connections and then say nothing, so only a request timeout ends a call. Each test
would hang without one; ``pytest.mark.timeout`` (and the subprocess ``timeout``) turn a hang into a failure.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from hf_adapt.errors import HubError
from hf_adapt.hub import PublishOptions, PushSettings, push_output
from tests.hub_server import LocalHub, hub_env, record_backoff
from tests.recipes.test_publish import credit_run  # noqa: F401  (fixture: a real fine-tuned output to push)

REPO = "hf-adapt-tests/credit-lora"
SLACK = 3.0  # seconds of scheduling noise on a loaded 2-core machine, on top of each computed bound


class SilentEndpoint:
    """A TCP server that accepts every connection, holds it open and never sends a byte."""

    def __init__(self):
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.accepted = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            self._held.append(connection)

    def __enter__(self) -> SilentEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self._held:
            connection.close()
        self._socket.close()


class HubThatHangsOn(LocalHub):
    """A working local Hub, except that requests matching ``method`` and ``path_part`` get no answer."""

    def __init__(self, method: str, path_part: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.method, self.path_part = method, path_part
        self.hung = 0
        self._release = threading.Event()

    def _answer(self, request, logged_path):
        if request.method == self.method and self.path_part in logged_path:
            with self._lock:
                self.requests.append(f"{request.method} {logged_path}")
                self.hung += 1
            self._release.wait(60)  # hold the connection open; the client must give up first
            return None
        return super()._answer(request, logged_path)

    def __exit__(self, *exc) -> None:
        self._release.set()
        super().__exit__(*exc)


@pytest.fixture
def original_client_factory():
    from huggingface_hub.utils import _http

    factory = _http._GLOBAL_CLIENT_FACTORY
    yield factory
    assert _http._GLOBAL_CLIENT_FACTORY is factory, "the push left its client factory installed"


@pytest.mark.timeout(90)  # includes building the output to push (about 15 s)
def test_push_to_a_silent_endpoint_retries_timeouts_then_fails_within_its_bound(
        credit_run, monkeypatch, tmp_path, original_client_factory):  # noqa: F811
    from huggingface_hub import get_session

    _, result = credit_run
    monkeypatch.setenv("HF_ADAPT_HUB_TIMEOUT", "1")
    settings = PushSettings(repo_id=REPO, retries=2, backoff_seconds=0.1)
    with SilentEndpoint() as endpoint:
        hub_env(monkeypatch, endpoint, tmp_path)
        start = time.monotonic()
        with pytest.raises(HubError) as raised:
            push_output(result.output_dir, settings)
        elapsed = time.monotonic() - start
        accepted = endpoint.accepted

    # (retries + 1) attempts of at most 1 s each, plus backoff 0.1 + 0.2 s
    bound = 3 * 1.0 + 0.1 + 0.2
    assert 3 * 1.0 <= elapsed < bound + SLACK, elapsed
    assert accepted == 3  # the first attempt and two retries, each on a new connection
    message = str(raised.value)
    assert f"create repo {REPO} failed after 3 attempts" in message
    assert endpoint.url in message and "did not answer within 1 s" in message
    assert "HF_ADAPT_HUB_TIMEOUT" in message
    assert raised.value.__cause__ is None and raised.value.__context__ is None  # no request (and token) attached
    # the push's limits are gone afterwards: the rest of the process gets huggingface_hub's own client back
    assert get_session().timeout.read is None


@pytest.mark.timeout(90)
def test_push_that_hangs_at_the_commit_fails_within_its_bound(
        credit_run, monkeypatch, tmp_path, tiny_bert, original_client_factory):  # noqa: F811
    _, result = credit_run
    monkeypatch.setenv("HF_ADAPT_HUB_TIMEOUT", "1")
    settings = PushSettings(repo_id=REPO, retries=1, backoff_seconds=0.1)
    with HubThatHangsOn("POST", "/commit/", {"hf-adapt-tests/tiny-bert": tiny_bert}) as hub:
        hub_env(monkeypatch, hub, tmp_path)
        start = time.monotonic()
        with pytest.raises(HubError) as raised:
            push_output(result.output_dir, settings)
        elapsed = time.monotonic() - start
        repo = hub.repo(REPO)
        requests = list(hub.requests)

    # every call before the commit was answered; the commit got two attempts of 1 s and a 0.1 s wait
    assert elapsed < 2 * 1.0 + 0.1 + SLACK, elapsed
    assert hub.hung == 2
    assert requests.count(f"GET /api/models/{REPO}/commits/main") == 1  # the retry first checked for a landed commit
    assert [c.summary for c in repo.commits] == ["initial commit"]  # nothing half-written
    message = str(raised.value)
    assert f"upload to {REPO}@main failed after 2 attempts" in message
    assert f"{hub.url} did not answer within 1 s" in message and f"/api/models/{REPO}/commit/main" in message


@pytest.mark.timeout(90)
def test_deadline_stops_the_retries_huggingface_hub_makes_itself(
        credit_run, monkeypatch, tmp_path, tiny_bert, original_client_factory):  # noqa: F811
    _, result = credit_run
    settings = PushSettings(repo_id=REPO, retries=4, backoff_seconds=0.1, timeout=1.0, deadline=3.0)
    with HubThatHangsOn("POST", "/preupload/", {"hf-adapt-tests/tiny-bert": tiny_bert}) as hub:
        hub_env(monkeypatch, hub, tmp_path)
        record_backoff(monkeypatch)  # huggingface_hub retries preupload 5 times (waits 1-8 s): here without waiting
        start = time.monotonic()
        with pytest.raises(HubError) as raised:
            push_output(result.output_dir, settings)
        elapsed = time.monotonic() - start

    # without the deadline: 5 attempts x (6 tries x 1 s) = 30 s; with it, no request starts after 3 s
    assert elapsed < 3.0 + SLACK, elapsed
    assert 2 <= hub.hung <= 4
    message = str(raised.value)
    assert message.startswith(f"upload to {REPO}@main stopped: the push reached its 3 s deadline"), message
    assert f"before POST {hub.url}/api/models/{REPO}/preupload/main" in message


@pytest.mark.timeout(90)
def test_cli_push_stops_at_its_deadline(credit_run, monkeypatch, tmp_path):  # noqa: F811
    _, result = credit_run
    with SilentEndpoint() as endpoint:
        env = hub_env(monkeypatch, endpoint, tmp_path)
        start = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "hf_adapt.cli", "push", str(result.output_dir), "--repo-id", REPO,
             "--hub-timeout", "1", "--hub-deadline", "8"],
            capture_output=True, text=True, timeout=60, env={**os.environ, **env})
        elapsed = time.monotonic() - start
        accepted = endpoint.accepted

    # default retries (4; waits 2, 4, ... s): the push reads the output and imports what it needs (a few seconds,
    # inside the deadline), makes an attempt of 1 s, waits 2 s, makes a second attempt; the next wait (4 s)
    # would end past the 8 s deadline, so the push stops there
    assert proc.returncode == 2, proc.stderr
    assert accepted == 2
    assert elapsed < 8 + SLACK + 10, elapsed  # 10 s for the interpreter to start
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(f"hf-adapt push: error: create repo {REPO} failed after 2 attempts")
    assert re.search(rf"{re.escape(endpoint.url)} did not answer within (1|0\.\d+) s", error), error
    assert "8 s deadline" in error and "--hub-deadline" in error


@pytest.mark.parametrize(("name", "value"), [("HF_ADAPT_HUB_TIMEOUT", "soon"), ("HF_ADAPT_HUB_TIMEOUT", "0"),
                                             ("HF_ADAPT_HUB_DEADLINE", "-1")])
def test_bad_limits_fail_before_training(name, value, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    monkeypatch.setenv(name, value)
    with pytest.raises(HubError, match=name):
        PublishOptions(push_to_hub=True, hub_model_id=REPO).check_push(None)
