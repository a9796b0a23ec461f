"""The loop closed inside hf-adapt, end to end on the local test Hub: fine-tune -> push -> serve (watching the repo)
-> users' thumbs and corrected labels through the API -> the corrections become an experience -> hf-adapt
continual continues the served version, passes its forgetting gate and pushes -> the watching server serves the
new version, and its answers name the new revision."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from hf_adapt.cli import main as cli  # noqa: E402
from hf_adapt.serve.app import Server, create_app  # noqa: E402
from hf_adapt.serve.config import ServeConfig  # noqa: E402
from hf_adapt.serve.models import load_served  # noqa: E402
from tests.conftest import train_finetune  # noqa: E402
from tests.hub_server import LocalHub, hub_env, record_backoff  # noqa: E402
from tests.serve.helpers import call, running  # noqa: E402

REPO = "hf-adapt-tests/credit-served"
pytestmark = pytest.mark.timeout(600)


def test_feedback_through_the_api_becomes_the_next_served_version(tiny_bert, credit_sample, tmp_path, monkeypatch):
    frame = pd.read_csv(credit_sample)
    labels = frame.pop("creditability")
    rows = json.loads(frame.to_json(orient="records"))
    with LocalHub({"hf-adapt-tests/tiny-bert": tiny_bert}) as hub:
        hub_env(monkeypatch, hub, tmp_path / "hf_home")
        record_backoff(monkeypatch)
        common = dict(model_name_or_path=str(tiny_bert), base_model_id="hf-adapt-tests/tiny-bert")
        train_finetune(tmp_path / "v1", data=str(credit_sample), push_to_hub=True, hub_model_id=REPO, **common)
        v1 = hub.repo(REPO).resolve("main")
        log = tmp_path / "feedback" / "served.jsonl"
        cfg = ServeConfig(model=REPO, revision="main", feedback_log=str(log), watch=True, watch_interval=0.2)
        server = Server(cfg, load_served(REPO, "main", False, "cpu"))
        assert server.served.revision == v1
        with running(create_app(server)) as url:
            predictions = call(f"{url}/v1/predict", {"inputs": rows})[1]["predictions"]
            assert {p["label"] for p in predictions} <= {"good", "bad"}
            for i, prediction in enumerate(predictions):  # a reviewer's verdicts: the true label as a correction
                body = ({"id": prediction["prediction_id"], "correction": labels[i]} if i % 4 else
                        {"id": prediction["prediction_id"], "feedback": "up" if prediction["label"] == labels[i] else "down"})
                assert call(f"{url}/v1/feedback", body)[0] == 201
            assert cli(["feedback", "convert", str(log), "--to", "experience", "--output",
                        str(tmp_path / "corrections.csv")]) == 0
            update = ["continual", "--init_from", REPO, "--output_dir", str(tmp_path / "v2"),
                      "--experiences", json.dumps([{"name": "reviewed", "data": str(tmp_path / "corrections.csv"),
                                                    "label_column": "label"}]),
                      "--regime", "adapter", "--num_train_epochs", "1", "--max_forgetting", "0.5",
                      "--report_to", "none", "--torch_num_threads", "1", "--push_to_hub", "true",
                      "--hub_model_id", REPO, "--base_model_id", "hf-adapt-tests/tiny-bert"]
            assert cli(update) == 0
            v2 = hub.repo(REPO).resolve("main")
            assert v2 != v1
            deadline = time.monotonic() + 120
            while call(f"{url}/ready")[1]["revision"] != v2:
                assert time.monotonic() < deadline, "the watching server never took the new version"
                time.sleep(0.2)
            after = call(f"{url}/v1/predict", {"inputs": rows[:3]})[1]
    assert after["revision"] == v2 and after["model"] == REPO
    answers = [json.loads(line) for line in (log.parent / ".answers" / "served.jsonl").read_text().splitlines()]
    assert {a["model_revision"] for a in answers} == {v1, v2}
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == len(rows) and {r["model_revision"] for r in records} == {v1}
