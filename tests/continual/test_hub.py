"""A continual model through the Hub (a local one on 127.0.0.1): pushed, continued from its repo id with
its replay buffer, the new version pushed with its lineage, and loaded back from the Hub alone."""

from __future__ import annotations

import json

import pytest

import hf_adapt
from hf_adapt.config import DEFAULT_MODEL
from hf_adapt.recipes.continual import main
from tests.continual.test_recipe import SPLIT, _config
from tests.hub_server import LocalHub, hub_env, record_backoff

TOKEN = "hf_ContinualTokenThatMustNeverLeak42"
BASE = "hf-adapt-tests/block-resnet"
REPO = "hf-adapt-tests/blocks-continual"
LORA = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}


@pytest.fixture
def hub(monkeypatch, tmp_path, block_resnet):
    with LocalHub({BASE: block_resnet}) as server:
        hub_env(monkeypatch, server, tmp_path / "hf_home", token=TOKEN)
        record_backoff(monkeypatch)
        yield server


@pytest.mark.slow  # the slow tier, which CI also runs: keeps the default tier (README command 2) near 12 minutes on 2 cores
def test_versions_through_the_hub(hub, block_resnet, blocks_csv, tmp_path):
    common = dict(regime="adapter", adapter=LORA, strategy="replay", strategy_options={"buffer_size": 16},
                  num_train_epochs=1, base_model_id=BASE, push_to_hub=True, hub_model_id=REPO, license="apache-2.0")
    v1 = main(_config(tmp_path, block_resnet, blocks_csv, name="v1", experiences=SPLIT[:2], **common))
    assert v1.push is not None
    # the base comes from the parent (here: its Hub id); model_name_or_path stays at its default
    v2 = main(_config(tmp_path, DEFAULT_MODEL, blocks_csv, name="v2", init_from=REPO, experiences=[SPLIT[2]], **common))
    facts = json.loads((v2.output_dir / "card_facts.json").read_text())
    assert facts["lineage"]["parent"] == REPO and facts["lineage"]["hub"]
    assert facts["lineage"]["revision"] == v1.push.commit_oid
    assert [e["name"] for e in v2.results["experiences"]] == ["ab", "cd", "ef"]
    assert v2.results["matrix"][0][:2] == pytest.approx(v1.results["matrix"][-1])  # the parent, as it reported
    assert {row[0] for row in v2.strategy.buffer} == {"ab", "cd", "ef"}  # v1's buffer carried over

    files = hub.repo(REPO).files("main")
    card = files["README.md"].decode()
    assert f"[`{REPO}`](https://huggingface.co/{REPO}) at revision `{v1.push.commit_oid}`" in card
    assert "| after \\ on | ab | cd | ef |" in card and "continual_matrix.png" in files
    assert f"base_model: {BASE}" in card
    for name, content in files.items():
        assert TOKEN.encode() not in content, name
    served = hf_adapt.load_adapted(REPO)
    assert served.labels == ["0", "1", "2", "3", "4", "5"]
    assert json.loads(files["hf_adapt.json"])["model"]["name_or_path"] == f"hf-hub:{BASE}"  # timm names Hub weights so
