"""Roll-out under load: a watching server swaps in each new version of its folder while 32 clients keep asking,
with no failed or dropped request and every answer from the version it names; versions that failed their
release gate or do not load are refused and the old one keeps serving; an admin rolls back."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from hf_adapt.outputs import commit, staging_path  # noqa: E402
from hf_adapt.serve.app import Server, create_app  # noqa: E402
from hf_adapt.serve.config import ServeConfig  # noqa: E402
from hf_adapt.serve.models import load_served  # noqa: E402
from tests.conftest import train_finetune  # noqa: E402
from tests.serve.helpers import call, running  # noqa: E402

KEY = {"authorization": "Bearer admin-key"}


@pytest.fixture(scope="module")
def versions(tiny_bert, credit_sample, tmp_path_factory):
    """Two versions of a credit model that answer differently (other seed, other rate)."""
    root = tmp_path_factory.mktemp("rollout")
    v1 = train_finetune(root / "v1", model_name_or_path=str(tiny_bert), data=str(credit_sample))
    v2 = train_finetune(root / "v2", model_name_or_path=str(tiny_bert), data=str(credit_sample), seed=7,
                        learning_rate=2e-2, num_train_epochs=2)
    return v1, v2


def _publish(source, live, change=None) -> None:
    """Put ``source`` in place at ``live`` the way a recipe writes its output: a staging folder, swapped in whole."""
    staging = staging_path(live)
    shutil.copytree(source, staging)
    if change is not None:
        change(staging)
    commit(staging, live)


def _wait_for(url: str, revision: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while call(f"{url}/ready")[1]["revision"] != revision:
        assert time.monotonic() < deadline, f"revision {revision} was not swapped in"
        time.sleep(0.05)


def test_three_swaps_under_32_clients_drop_nothing(versions, credit_sample, tmp_path):
    v1, v2 = versions
    rows = json.loads(pd.read_csv(credit_sample).drop(columns=["creditability"]).head(24).to_json(orient="records"))
    offline = {}
    for version in (v1, v2):
        served = load_served(str(version), None, False, "cpu")
        offline[served.revision] = served.model.predict_proba(rows)
    labels = served.model.labels
    assert len(offline) == 2
    rev1, rev2 = (load_served(str(v), None, False, "cpu").revision for v in (v1, v2))
    live = tmp_path / "live"
    shutil.copytree(v1, live)
    cfg = ServeConfig(model=str(live), feedback_log=str(tmp_path / "fb.jsonl"), watch=True, watch_interval=0.05,
                      max_wait_ms=2)
    server = Server(cfg, load_served(str(live), None, False, "cpu"), api_key="admin-key")
    assert server.served.revision == rev1  # a copy of a version is that version
    results, stop = [], threading.Event()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            index = rng.randrange(len(rows))
            status, body, _ = call(f"{url}/v1/predict", {"inputs": [rows[index]]}, headers=KEY)
            results.append((status, index, body))

    with running(create_app(server)) as url:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for source, revision in ((v2, rev2), (v1, rev1), (v2, rev2)):
            time.sleep(0.5)
            _publish(source, live)
            _wait_for(url, revision)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        _, metrics, _ = call(f"{url}/metrics")
    assert len(results) > 200, f"only {len(results)} requests ran during the swaps"
    failed = [(status, body) for status, _, body in results if status != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed during the swaps: {failed[:3]}"
    seen = {body["revision"] for _, _, body in results}
    assert seen == {rev1, rev2}
    for _, index, body in results:  # each answer is the named version's own
        got = [body["predictions"][0]["probabilities"][name] for name in labels]
        np.testing.assert_allclose(got, offline[body["revision"]][index], atol=1e-5)
    assert "hf_adapt_version_swaps_total 3.0" in metrics
    kept = [json.loads(line)["model_revision"] for line in (tmp_path / ".answers" / "fb.jsonl").read_text().splitlines()]
    assert len(kept) == len(results) and set(kept) == seen


def test_refused_versions_leave_the_old_one_serving_and_rollback(versions, tmp_path):
    v1, v2 = versions
    live = tmp_path / "live"
    shutil.copytree(v1, live)
    cfg = ServeConfig(model=str(live), feedback_log=str(tmp_path / "fb.jsonl"), watch=True, watch_interval=0.05)
    server = Server(cfg, load_served(str(live), None, False, "cpu"), api_key="admin-key")
    rev1 = server.served.revision

    def failed_gate(folder) -> None:
        (folder / "feedback_results.json").write_text(json.dumps({"gate": {"passed": False, "win_rate": 0.3,
                                                                           "min_win_rate": 0.5}}))

    def broken(folder) -> None:
        weights = folder / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])

    with running(create_app(server)) as url:
        _publish(v2, live)
        rev2 = load_served(str(v2), None, False, "cpu").revision
        _wait_for(url, rev2)
        for change in (failed_gate, broken):
            _publish(v1, live, change)
            deadline = time.monotonic() + 30
            while len(call(f"{url}/admin/versions", headers=KEY)[1]["refused"]) < (1 if change is failed_gate else 2):
                assert time.monotonic() < deadline, "the bad version was neither taken nor refused"
                time.sleep(0.05)
            assert call(f"{url}/ready")[1]["revision"] == rev2
        _, listed, _ = call(f"{url}/admin/versions", headers=KEY)
        anonymous = call(f"{url}/admin/rollback", method="POST", data=b"")
        rolled = call(f"{url}/admin/rollback", headers=KEY, method="POST", data=b"")
        time.sleep(0.3)  # the watcher does not take the version it was rolled back from
        after = call(f"{url}/ready")[1]["revision"]
    reasons = list(listed["refused"].values())
    assert "release gate" in reasons[0] and "win rate 0.3" in reasons[0]
    assert "adapter_model.safetensors" in reasons[1]
    assert anonymous[0] == 401
    assert rolled[0] == 200 and rolled[1] == {"model": str(live), "revision": rev1, "rolled_back": rev2}
    assert after == rev1


def test_admin_routes_need_a_key_to_exist(versions, tmp_path):
    served = load_served(str(versions[0]), None, False, "cpu")
    server = Server(ServeConfig(model=str(versions[0]), feedback_log=str(tmp_path / "fb.jsonl")), served)
    with running(create_app(server)) as url:
        status, body, _ = call(f"{url}/admin/rollback", method="POST", data=b"")
    assert status == 403 and "HF_ADAPT_API_KEY" in body["detail"]
