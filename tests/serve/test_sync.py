"""Feedback from many servers: two replicas (two folders, as on two machines) sync their own files to one private
Hub dataset (the local test Hub); feedback on one replica finds an answer the other gave; the feedback reader
and ``hf-adapt feedback inspect`` read the repo with every record of both."""

from __future__ import annotations

import json

import pandas as pd
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e '.[serve]'")

from hf_adapt.cli import main as cli  # noqa: E402
from hf_adapt.feedback.log import read_feedback  # noqa: E402
from hf_adapt.serve.app import Server, create_app  # noqa: E402
from hf_adapt.serve.config import ServeConfig  # noqa: E402
from hf_adapt.serve.models import load_served  # noqa: E402
from tests.conftest import train_finetune  # noqa: E402
from tests.hub_server import LocalHub, hub_env  # noqa: E402
from tests.serve.helpers import call, running  # noqa: E402

REPO = "hf-adapt-tests/credit-feedback"


def test_two_replicas_share_feedback_through_a_hub_dataset(tiny_bert, credit_sample, tmp_path, monkeypatch, capsys):
    output = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(credit_sample))
    rows = json.loads(pd.read_csv(credit_sample).drop(columns=["creditability"]).head(4).to_json(orient="records"))
    served = load_served(str(output), None, False, "cpu")
    with LocalHub() as hub:
        hub_env(monkeypatch, hub, tmp_path / "hf_home")

        def replica(name: str) -> Server:
            cfg = ServeConfig(model=str(output), feedback_log=str(tmp_path / name / "feedback" / "served.jsonl"),
                              feedback_repo=REPO, replica=name, sync_minutes=60)
            return Server(cfg, served)

        a, b = replica("a"), replica("b")
        with running(create_app(a)) as url_a, running(create_app(b)) as url_b:
            answered = call(f"{url_a}/v1/predict", {"inputs": rows})[1]["predictions"]
            early = call(f"{url_b}/v1/feedback", {"id": answered[0]["prediction_id"], "feedback": "up"})
            a.sync.flush()  # a's answers reach the repo
            b.sync.pull_every = 0
            on_b = call(f"{url_b}/v1/feedback", {"id": answered[0]["prediction_id"], "feedback": "up"})
            on_a = call(f"{url_a}/v1/feedback", {"id": answered[1]["prediction_id"], "correction": "good"})
        # leaving the block stopped both servers: each uploaded its files once more
        repo = hub.repo(REPO, repo_type="dataset")
        files = sorted(repo.files())
        assert repo.private
        assert files == [".answers/served-a.jsonl", ".gitattributes", "served-a.jsonl", "served-b.jsonl"]  # b answered nothing
        assert early[0] == 404 and on_b[0] == 201 and on_a[0] == 201
        records = read_feedback(REPO).records  # the Hub dataset, as hf-adapt feedback reads it
        corrected = "up" if answered[1]["label"] == "good" else "down"  # a correction alone: down unless it agrees
        assert sorted(r["feedback"] for r in records) == sorted(["up", corrected])
        assert {r["metadata"]["answer_id"] for r in records} == {answered[0]["prediction_id"], answered[1]["prediction_id"]}
        assert cli(["feedback", "inspect", REPO]) == 0
        assert "2 records" in capsys.readouterr().out
