"""The closed loop through a Hub (a local one on 127.0.0.1): a served version, the feedback since it, a round
that does not beat its parent refused at the gate, one that does pushed as the next version."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hf_adapt.errors import ReleaseGateError
from hf_adapt.feedback import load_policy
from hf_adapt.recipes.feedback import FeedbackConfig, main
from tests.feedback.conftest import product_feedback, write_log
from tests.feedback.test_recipe import _config
from tests.hub_server import LocalHub, hub_env, record_backoff

TOKEN = "hf_FeedbackTokenThatMustNeverLeak42"
BASE = "hf-adapt-tests/tiny-chat-llama"
REPO = "hf-adapt-tests/review-bot"


@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_chat_llama):
    with LocalHub({BASE: tiny_chat_llama}) as server:
        hub_env(monkeypatch, server, tmp_path / "hf_home", token=TOKEN)
        record_backoff(monkeypatch)
        yield server


def test_closed_loop_pushes_only_a_version_that_wins(hub, tiny_chat_llama, tmp_path):
    week1 = product_feedback(range(10), model=REPO, revision="v0")
    v1 = main(_config(tmp_path, tiny_chat_llama, write_log(tmp_path / "week1.jsonl", week1), name="v1",
                      base_model_id=BASE, push_to_hub=True, hub_model_id=REPO, license="apache-2.0"))
    assert v1.push.tag == "v1"

    log = write_log(tmp_path / "log.jsonl", week1 + product_feedback(range(10, 20), day=20, model=REPO, revision="v1")
                    + product_feedback(range(20, 24), day=21, model=REPO, revision="v0"))  # late feedback on v0
    loop = dict(model_name_or_path=FeedbackConfig.model_name_or_path, init_from=REPO, init_from_revision="v1",
                feedback_since="parent", feedback_revisions=["parent"], push_to_hub=True, hub_model_id=REPO,
                license="apache-2.0")
    # a round that cannot move (learning rate 0) ties its parent everywhere: win rate 0.5 < 0.6
    with pytest.raises(ReleaseGateError, match=r"win rate 0.5000 against the parent is below min_win_rate 0.6"):
        main(_config(tmp_path, None, log, name="stale", learning_rate=0.0, min_win_rate=0.6, **loop))
    assert hub.repo(REPO).branches["main"] == v1.push.commit_oid and set(hub.repo(REPO).tags) == {"v1"}  # nothing new
    stale = tmp_path / "stale"
    gate = json.loads((stale / "feedback_results.json").read_text())["gate"]
    assert gate == {"min_win_rate": 0.6, "win_rate": 0.5, "passed": False}
    assert "**failed (not for release)**" in (stale / "README.md").read_text()
    push = subprocess.run([sys.executable, "-m", "hf_adapt.cli", "push", str(stale), "--repo-id", REPO],
                          capture_output=True, text=True, timeout=300)
    assert push.returncode == 2 and "failed its release gate" in push.stderr

    v2 = main(_config(tmp_path, None, log, name="v2", min_win_rate=0.5, **loop))
    assert v2.gate["passed"] and v2.push.tag == "v2"
    files = hub.repo(REPO).files("main")
    info = json.loads(files["hf_adapt.json"])
    assert info["model"]["name_or_path"] == BASE and info["init_from"]["revision"] == "v1"
    assert info["init_from"]["commit"] == v1.push.commit_oid
    assert info["feedback"]["records"] == 70 and info["feedback"]["revisions"] == ["v1", v1.push.commit_oid]
    results = json.loads(files["feedback_results.json"])
    assert results["window"]["left_out"] == {"before the window": 70, "other model revision": 28}
    card = files["README.md"].decode()
    assert f"continued from `{REPO}` at `v1`" in card and "a dpo round on feedback up to 2026-11-10" in card
    assert "min_win_rate 0.5: **passed**" in card and f"base_model: {BASE}" in card
    for name, content in files.items():
        assert TOKEN.encode() not in content, name
    model, tokenizer, _ = load_policy(REPO, revision="v2")
    assert type(model).__name__ == "PeftModelForCausalLM"
