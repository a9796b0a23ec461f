"""``hf-adapt serve`` as users start it: a separate process with two workers sharing one feedback log; 4 x 1000
concurrent feedback posts lose nothing, and a server SIGKILLed mid-stream loses no acknowledged record."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from hf_adapt.feedback.log import read_feedback  # noqa: E402
from tests.conftest import train_finetune  # noqa: E402
from tests.serve.helpers import call  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def output(tiny_bert, credit_sample, tmp_path_factory):
    return train_finetune(tmp_path_factory.mktemp("serve_command") / "out", model_name_or_path=str(tiny_bert),
                          data=str(credit_sample))


@pytest.fixture(scope="module")
def rows(credit_sample) -> list[dict]:
    return json.loads(pd.read_csv(credit_sample).drop(columns=["creditability"]).head(20).to_json(orient="records"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(output, log, *flags) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "HF_ADAPT_FEEDBACK_SALT": "test-salt"}
    process = subprocess.Popen([sys.executable, "-m", "hf_adapt.cli", "serve", str(output), "--port", str(port),
                                "--feedback_log", str(log), "--torch_num_threads", "1", *flags],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if call(f"{url}/ready")[0] == 200:
                return process, url
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            raise RuntimeError(f"hf-adapt serve did not start: {process.stderr.read()[-3000:]}")
        time.sleep(0.2)


def _stop(process: subprocess.Popen, how: int = signal.SIGTERM) -> None:
    os.killpg(process.pid, how)
    process.wait(timeout=60)


def _answer_ids(url, rows, n: int) -> list[str]:
    ids = []
    while len(ids) < n:
        status, body, _ = call(f"{url}/v1/predict", {"inputs": rows})
        assert status == 200, body
        ids += [p["prediction_id"] for p in body["predictions"]]
    return ids[:n]


def test_two_workers_take_4000_concurrent_feedback_posts_and_lose_none(output, rows, tmp_path):
    log = tmp_path / "feedback" / "served.jsonl"
    process, url = _serve(output, log, "--workers", "2")
    try:
        ids = _answer_ids(url, rows, 100)

        def post(i: int) -> int:
            return call(f"{url}/v1/feedback", {"id": ids[i % len(ids)], "feedback": "up" if i % 2 else "down",
                                               "user_id": f"user-{i}", "metadata": {"n": i}})[0]

        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(post, range(4000)))
    finally:
        _stop(process)
    assert statuses.count(201) == 4000
    records = read_feedback(log).records
    assert sorted(r["metadata"]["n"] for r in records) == list(range(4000))
    assert not any("user-" in line for line in log.read_text().splitlines())  # hashed, salted


def test_a_killed_server_loses_no_acknowledged_feedback(output, rows, tmp_path):
    log = tmp_path / "feedback" / "served.jsonl"
    process, url = _serve(output, log)
    ids = _answer_ids(url, rows, 40)
    acknowledged, stop = [], threading.Event()

    def post(worker: int) -> None:
        i = 0
        while not stop.is_set():
            n = worker * 1_000_000 + i
            try:
                status = call(f"{url}/v1/feedback", {"id": ids[n % len(ids)], "feedback": 0.5, "metadata": {"n": n}})[0]
            except OSError:
                return  # the server is gone
            if status == 201:
                acknowledged.append(n)
            i += 1

    threads = [threading.Thread(target=post, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    while len(acknowledged) < 300:
        time.sleep(0.01)
    _stop(process, signal.SIGKILL)  # mid-stream: requests are in flight
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    kept = {r["metadata"]["n"] for r in read_feedback(log, on_bad_record="skip").records}
    assert set(acknowledged) <= kept, f"{len(set(acknowledged) - kept)} acknowledged records lost"
    restarted, url = _serve(output, log)  # the answers survived too: feedback by id still works
    try:
        assert call(f"{url}/v1/feedback", {"id": ids[0], "feedback": "up"})[0] == 201
    finally:
        _stop(restarted)
