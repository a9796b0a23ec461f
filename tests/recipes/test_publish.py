"""Publishing end to end: a real run pushed by the real huggingface_hub client to a local Hub on 127.0.0.1.

Asserts the exact files received, the parsed card metadata, the round trip through ``load_adapted``,
the usage snippet executed as written, retries on injected failures, refusals, lineage, and that the
token appears nowhere.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import hf_adapt
from hf_adapt import cards
from hf_adapt.config import config_from_dict
from hf_adapt.errors import HfAdaptError, HubError
from hf_adapt.hub import PushSettings, push_output
from hf_adapt.recipes.finetune import FinetuneConfig, main
from tests.hub_server import LocalHub, card_snippet, hub_env, record_backoff, run_card_snippet

TOKEN = "hf_TestTokenThatMustNeverLeak0123456789"
REPO = "hf-adapt-tests/credit-lora"


def _credit_config(tiny_bert, credit_sample, output_dir, **overrides) -> FinetuneConfig:
    values = dict(
        model_name_or_path=str(tiny_bert), base_model_id="hf-adapt-tests/tiny-bert", data=str(credit_sample),
        output_dir=str(output_dir), num_train_epochs=2, learning_rate=5e-3, report_to="none", torch_num_threads=1,
        license="apache-2.0", dataset_id="hf-adapt-tests/german-credit",
        intended_use="Ranking loan applications for manual review by a credit officer.",
        out_of_scope_use="Automated approval or rejection without human review.",
        # 90 test rows: two age bands of 30+ rows each, so a gap between them is defined
        test_size=0.45, sensitive_columns=["age_in_years", "personal_status_and_sex"],
        sensitive_bins={"age_in_years": [35]},
    )
    values.update(overrides)
    return config_from_dict(FinetuneConfig, values)


@pytest.fixture(scope="module")
def credit_run(tiny_bert, credit_sample, tmp_path_factory):
    cfg = _credit_config(tiny_bert, credit_sample, tmp_path_factory.mktemp("publish") / "credit")
    return cfg, main(cfg)


@pytest.fixture
def hub(monkeypatch, tmp_path, tiny_bert, tiny_timm_convnet):
    """A Hub holding the tiny base models, so a pushed adapter resolves its base there, as a user's would."""
    with LocalHub({"hf-adapt-tests/tiny-bert": tiny_bert, "hf-adapt-tests/tiny-convnet": tiny_timm_convnet}) as server:
        hub_env(monkeypatch, server, tmp_path, token=TOKEN)
        record_backoff(monkeypatch)  # the client's own retries (1-8 s waits) run without sleeping
        yield server


def _fast(**kwargs) -> PushSettings:
    return PushSettings(repo_id=kwargs.pop("repo_id", REPO), backoff_seconds=0.01, **kwargs)


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_recipe_pushes_one_commit_with_every_file(tiny_bert, credit_sample, tmp_path, hub, capsys, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    cfg = _credit_config(tiny_bert, credit_sample, tmp_path / "out", num_train_epochs=1, push_to_hub=True,
                         hub_model_id=REPO, report_to="tensorboard", checkpointing_steps=2)
    result = main(cfg)
    repo = hub.repo(REPO)
    assert repo.private  # private unless asked
    assert [c.summary for c in repo.commits] == ["initial commit", f"hf-adapt finetune (adapter): test auroc "
                                                 f"{result.test_metrics['auroc']:.4f}"]
    files = repo.files("main")
    local = {str(p.relative_to(result.output_dir)) for p in result.output_dir.rglob("*") if p.is_file()}
    assert set(files) == local | {".gitattributes"}
    for name in ("adapter_model.safetensors", "adapter_config.json", "label_map.json", "hf_adapt.json",
                 "tokenizer.json", "hf_adapt_text.json", "config.yaml", "eval_results.json", "train_results.json",
                 "card_facts.json", "README.md", "figures/training_curves.png", "figures/confusion_matrix.png",
                 "figures/reliability.png"):
        assert name in files, name
    for name in local - {"README.md", "hf_adapt.json"}:  # everything but the card and run file arrives as is
        assert files[name] == (result.output_dir / name).read_bytes(), name
    # the run file names the base by its Hub id (the trainer's folder exists nowhere else) and lists the files
    pushed_info = json.loads(files["hf_adapt.json"])
    assert json.loads((result.output_dir / "hf_adapt.json").read_text())["model"]["name_or_path"] == str(tiny_bert)
    assert pushed_info["model"]["name_or_path"] == "hf-adapt-tests/tiny-bert"
    assert pushed_info["files"] == sorted(set(files) - {".gitattributes"})
    assert repo.tags == {"v1": repo.branches["main"]}
    assert result.push.tag == "v1" and result.push.commit_oid == repo.branches["main"]

    # the token reached the server only as a header: nowhere in files, logs or output
    captured = capsys.readouterr()
    assert "pushed" in caplog.text
    for text in (captured.out, captured.err, caplog.text):
        assert TOKEN not in text
    for name, content in files.items():
        assert TOKEN.encode() not in content, name
    # nor in the tracker's event files or the checkpoints (config and run record included)
    written = [p for root in (result.output_dir, tmp_path / "out.checkpoints") for p in root.rglob("*") if p.is_file()]
    assert any("tfevents" in p.name for p in written) and any(p.name == "run.json" for p in written)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert hub.auth_headers_seen > 0


def test_pushed_card_metadata_is_complete_and_true(credit_run, hub):
    _, result = credit_run
    push_output(result.output_dir, _fast())
    card = ModelCard(hub.repo(REPO).files("main")["README.md"].decode())
    data = card.data
    assert data.base_model == "hf-adapt-tests/tiny-bert"
    assert data.base_model_relation == "adapter"
    assert data.library_name == "peft"
    assert data.pipeline_tag == "text-classification"
    assert data.license == "apache-2.0"
    assert data.datasets == ["hf-adapt-tests/german-credit"]
    assert {"hf-adapt", "lora", "text-classification", "adapter"} <= set(data.tags)
    assert "licence" not in data.to_dict()
    reported = {r.metric_type: r.metric_value for r in data.eval_results}
    measured = json.loads((result.output_dir / "eval_results.json").read_text())
    assert reported == {"accuracy": round(measured["accuracy"], 4), "f1": round(measured["macro_f1"], 4),
                        "roc_auc": round(measured["auroc"], 4), "log_loss": round(measured["log_loss"], 4),
                        "ece": round(measured["ece"], 4), "brier_score": round(measured["brier"], 4),
                        "gini": round(measured["gini"], 4), "ks_statistic": round(measured["ks"], 4)}
    assert all(r.dataset_split == "test" for r in data.eval_results)
    assert cards.is_unedited(str(card))


def test_card_body_holds_only_measured_facts(credit_run):
    cfg, result = credit_run
    text = (result.output_dir / "README.md").read_text()
    for placeholder in ("[More Information Needed]", "{{", "{%", "None", "| nan", "TODO"):
        assert placeholder not in text, placeholder
    facts = json.loads((result.output_dir / "card_facts.json").read_text())
    assert cfg.intended_use in text and cfg.out_of_scope_use in text
    assert f"train {facts['split_sizes']['train']}, validation" in text
    assert f"{facts['trainable_parameters']:,} trainable parameters" in text
    assert "logistic regression" in text
    for figure in ("figures/training_curves.png", "figures/confusion_matrix.png", "figures/reliability.png"):
        assert f"]({figure})" in text
        assert (result.output_dir / figure).stat().st_size > 1000
    assert "seed 42" in text and "<summary>Resolved config</summary>" in text
    assert f"- transformers {facts['versions']['transformers']}" in text
    # subgroup evaluation: per-group rows and gaps from the test split, and sentences from those numbers
    subgroups = facts["subgroups"]["columns"]
    assert set(subgroups) == {"age_in_years", "personal_status_and_sex"}
    age = subgroups["age_in_years"]
    assert sum(g["n"] for g in age["groups"].values()) == facts["split_sizes"]["test"]
    assert "## Subgroup evaluation" in text and "**age_in_years**" in text
    assert not any(g["small"] for g in age["groups"].values())
    gap = age["gaps"]["equal_opportunity_difference"]
    assert gap is not None and f"equal opportunity difference: {gap:.3f}" in text
    assert facts["subgroup_sentences"] and all(s in text for s in facts["subgroup_sentences"])


def test_pushed_adapter_loads_back_and_its_snippet_runs(credit_run, hub, tmp_path):
    _, result = credit_run
    push_output(result.output_dir, _fast())
    texts = result.data.inputs("test", "text")[:8]
    expected = hf_adapt.load_adapted(str(result.output_dir)).logits(texts)
    assert torch.equal(hf_adapt.load_adapted(REPO).logits(texts), expected)
    assert any(r.startswith("GET /hf-adapt-tests/tiny-bert/resolve/") for r in hub.requests)  # base from the Hub
    assert torch.equal(hf_adapt.load_adapted(REPO, revision="v1").logits(texts), expected)

    card = hub.repo(REPO).files("main")["README.md"].decode()
    assert f'hf_adapt.load_adapted("{REPO}")' in card_snippet(card)
    proc = run_card_snippet(card, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"'label': '(good|bad)'", printed)


def test_transient_failures_are_retried(credit_run, hub):
    _, result = credit_run
    hub.fail("POST", "/commit/", 503, times=2)
    hub.fail("POST", "/api/repos/create", None)  # a dropped connection
    pushed = push_output(result.output_dir, _fast())
    commits = [r for r in hub.requests if r.startswith("POST") and "/commit/" in r]
    assert len(commits) == 3
    assert hub.repo(REPO).branches["main"] == pushed.commit_oid


def test_a_failed_push_leaves_everything_intact_and_resumes(credit_run, hub, capsys):
    _, result = credit_run
    before = _digest(result.output_dir)
    hub.fail("POST", "/commit/", 500, times=100)
    with pytest.raises(HubError, match=r"upload to .* failed after 5 attempts: HTTP 500") as err:
        push_output(result.output_dir, _fast())
    assert TOKEN not in str(err.value)
    assert [c.summary for c in hub.repo(REPO).commits] == ["initial commit"]
    assert _digest(result.output_dir) == before
    hub._failures.clear()
    assert push_output(result.output_dir, _fast()).tag == "v1"  # rerun = resume
    assert _digest(result.output_dir) == before


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_say_so_without_the_token(credit_run, hub, status):
    _, result = credit_run
    hub.fail("POST", "/api/repos/create", status, body={"error": f"Bearer {TOKEN} is not allowed"})
    with pytest.raises(HubError, match=f"refused the token \\(HTTP {status}\\)") as err:
        push_output(result.output_dir, _fast())
    assert TOKEN not in str(err.value)
    assert err.value.__cause__ is None and err.value.__context__ is None  # the HTTP error holds the token


def test_an_edited_card_is_not_overwritten(credit_run, hub, tmp_path):
    import shutil

    from huggingface_hub import HfApi

    _, result = credit_run
    push_output(result.output_dir, _fast())
    again = push_output(result.output_dir, _fast())  # nothing new: no commit, and the version keeps its tag
    assert again.tag == "v1" and len(hub.repo(REPO).commits) == 2
    reworded = tmp_path / "reworded"  # same weights, a card with other facts: our own card is replaced freely
    shutil.copytree(result.output_dir, reworded)
    facts = cards.read_facts(reworded)
    cards.write_facts(reworded, {**facts, "intended_use": "Ranking loan applications (second wording)."})
    push_output(reworded, _fast())
    assert set(hub.repo(REPO).tags) == {"v1", "v2"}
    assert "second wording" in hub.repo(REPO).files("main")["README.md"].decode()
    edited = hub.repo(REPO).files("main")["README.md"].decode().replace("## Limitations", "## Limitations\n\n- Reviewed by the model risk team.")
    HfApi().upload_file(path_or_fileobj=edited.encode(), path_in_repo="README.md", repo_id=REPO)
    hub.fail("HEAD", "/README.md", 503, times=100)  # the card cannot be read: the push stops, it does not guess
    hub.fail("GET", "/README.md", 503, times=100)
    with pytest.raises(HubError, match="read README.md"):
        push_output(result.output_dir, _fast())
    hub._failures.clear()
    assert hub.repo(REPO).files("main")["README.md"].decode() == edited
    with pytest.raises(HubError, match="edited on the Hub"):
        push_output(result.output_dir, _fast())
    assert hub.repo(REPO).files("main")["README.md"].decode() == edited
    push_output(result.output_dir, _fast(overwrite_card=True))
    assert "Reviewed by the model risk team" not in hub.repo(REPO).files("main")["README.md"].decode()
    assert set(hub.repo(REPO).tags) == {"v1", "v2", "v3"}


def test_branches_tags_and_pull_requests(credit_run, hub):
    _, result = credit_run
    push_output(result.output_dir, _fast(revision="experiment", tag="exp-1"))
    repo = hub.repo(REPO)
    assert repo.tags["exp-1"] == repo.branches["experiment"]
    assert "README.md" not in repo.files("main")
    snippet = card_snippet(repo.files("experiment")["README.md"].decode())
    assert f'load_adapted("{REPO}", revision="experiment")' in snippet
    with pytest.raises(HubError, match="already exists"):
        push_output(result.output_dir, _fast(tag="exp-1"))
    pr = push_output(result.output_dir, _fast(create_pr=True))
    assert pr.pr_url and pr.tag is None
    assert "adapter_model.safetensors" in repo.files("refs/pr/1") and "README.md" not in repo.files("main")


def test_lineage_links_parent_and_successor(credit_run, hub, tiny_bert, credit_sample, tmp_path):
    _, parent = credit_run
    push_output(parent.output_dir, _fast(repo_id="hf-adapt-tests/credit-v1"))
    cfg = _credit_config(tiny_bert, credit_sample, tmp_path / "v2", num_train_epochs=1, learning_rate=2e-3)
    child = main(cfg)
    push_output(child.output_dir, _fast(repo_id="hf-adapt-tests/credit-v2", parent="hf-adapt-tests/credit-v1",
                                        update_parent=True))
    card = hub.repo("hf-adapt-tests/credit-v2").files("main")["README.md"].decode()
    parent_sha = hub.repo("hf-adapt-tests/credit-v1").commits[1].sha
    assert "## Lineage" in card and f"revision `{parent_sha}`" in card
    assert "| `learning_rate` | `0.005` | `0.002` |" in card
    assert "| `num_train_epochs` | `2` | `1` |" in card
    assert "Both were scored on the same test split" in card
    parent_card = ModelCard(hub.repo("hf-adapt-tests/credit-v1").files("main")["README.md"].decode())
    assert parent_card.data.new_version == "hf-adapt-tests/credit-v2"
    assert cards.is_unedited(str(parent_card))  # still ours, so a later push may replace it


def test_push_command_line(credit_run, hub, capsys):
    from hf_adapt.cli import main as cli_main

    _, result = credit_run
    assert cli_main(["push", str(result.output_dir), "--repo-id", REPO, "--public", "--tag", "none"]) == 0
    repo = hub.repo(REPO)
    assert not repo.private and repo.tags == {}
    assert repo.branches["main"] in capsys.readouterr().out
    assert cli_main(["push", str(result.output_dir.parent), "--repo-id", REPO]) == 2
    assert "is not an hf-adapt output" in capsys.readouterr().err


@pytest.mark.parametrize("overrides, error", [
    ({"push_to_hub": True}, "push_to_hub needs hub_model_id"),
    ({"push_to_hub": True, "hub_model_id": REPO, "base_model_id": "/models/tiny-bert"}, "is a local path"),
    ({"push_to_hub": True, "hub_model_id": "not a repo id"}, "is not a Hub repo id"),
    ({"sensitive_columns": ["no_such_column"], "sensitive_bins": None}, "sensitive column 'no_such_column' is not in the test split"),
    ({"sensitive_columns": ["age_in_years"], "sensitive_bins": None}, "age_in_years"),
    ({"positive_label": "maybe"}, "positive_label 'maybe' is not one of"),
    ({"sensitive_bins": {"duration_in_month": [12]}}, "sensitive_bins names 'duration_in_month'"),
])
def test_bad_publishing_input_fails_before_training(overrides, error, tiny_bert, credit_sample, tmp_path, hub):
    cfg = _credit_config(tiny_bert, credit_sample, tmp_path / "out", **overrides)
    with pytest.raises(HfAdaptError, match=error):
        main(cfg)
    assert not (tmp_path / "out").exists()
    assert not [r for r in hub.requests if r.startswith("POST")]


def test_image_card_has_gradcam_and_a_runnable_snippet(tiny_timm_convnet, digits_folder, tmp_path, hub):
    cfg = config_from_dict(FinetuneConfig, dict(
        model_name_or_path=str(tiny_timm_convnet), data=str(digits_folder), label_column="label", reset_head=True,
        image_size=32, num_train_epochs=1, learning_rate=5e-3, metric_for_best_model="accuracy",
        output_dir=str(tmp_path / "img"), report_to="none", adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8},
        torch_num_threads=1, card_examples=3, push_to_hub=True, hub_model_id="hf-adapt-tests/digits-lora",
        base_model_id="hf-adapt-tests/tiny-convnet",
    ))
    result = main(cfg)
    out = result.output_dir
    assert sorted(p.name for p in (out / "examples").iterdir()) == ["0.png", "1.png", "2.png"]
    gradcam = sorted((out / "figures").glob("gradcam*.png"))
    assert len(gradcam) == 3
    local_text = (out / "README.md").read_text()
    assert all(f"](figures/{p.name})" in local_text for p in gradcam)
    for text, cwd in ((local_text, Path.cwd()), (hub.repo("hf-adapt-tests/digits-lora").files()["README.md"].decode(), tmp_path)):
        proc = run_card_snippet(text, cwd)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "'label': '" in proc.stdout
    assert any(r.startswith("GET /hf-adapt-tests/tiny-convnet/resolve/") for r in hub.requests)


def test_a_new_version_replaces_the_old_weights_but_keeps_user_files(credit_run, hub, tiny_bert, credit_sample,
                                                                     tmp_path):
    from huggingface_hub import HfApi

    _, adapter_run = credit_run
    probe = main(_credit_config(tiny_bert, credit_sample, tmp_path / "probe", regime="linear_probe",
                                num_train_epochs=1, sensitive_columns=None, sensitive_bins=None))
    push_output(probe.output_dir, _fast())
    for user_file in ("NOTES.md", "figures/architecture.png", "tokenizer_NOTES.md"):
        HfApi().upload_file(path_or_fileobj=b"validated by the risk team", path_in_repo=user_file, repo_id=REPO)
    push_output(adapter_run.output_dir, _fast())
    files = hub.repo(REPO).files("main")
    assert "head.safetensors" not in files and "adapter_model.safetensors" in files
    for user_file in ("NOTES.md", "figures/architecture.png", "tokenizer_NOTES.md"):  # not hf-adapt's to delete
        assert files[user_file] == b"validated by the risk team"
    assert "head.safetensors" in hub.repo(REPO).files("v1")  # the old version stays loadable by its tag
    texts = adapter_run.data.inputs("test", "text")[:4]
    assert torch.equal(hf_adapt.load_adapted(REPO, revision="v1").logits(texts),
                       hf_adapt.load_adapted(str(probe.output_dir)).logits(texts))


def test_card_names_the_repo_and_pins_the_data(credit_run, credit_sample, hub):
    _, result = credit_run
    push_output(result.output_dir, _fast())
    card = ModelCard(hub.repo(REPO).files("main")["README.md"].decode())
    assert card.text.lstrip().startswith("# credit-lora")
    assert card.data.model_name == "credit-lora"  # the model-index name
    digest = hashlib.sha256(b"credit.csv\0" + Path(credit_sample).read_bytes()).hexdigest()
    assert f"sha256 of the files: `{digest}`" in card.text


def test_a_base_only_on_this_disk_cannot_be_pushed(credit_run, tiny_bert, hub, tmp_path):
    import shutil

    from hf_adapt import cards as card_module

    _, result = credit_run
    copy = tmp_path / "no-base-id"
    shutil.copytree(result.output_dir, copy)
    facts = card_module.read_facts(copy)
    card_module.write_facts(copy, {**facts, "base_model": None})
    with pytest.raises(HubError, match="loaded from the local folder .* set base_model_id"):
        push_output(copy, _fast())
    assert not [r for r in hub.requests if r.startswith("POST")]


def test_push_through_the_xet_client_path(credit_run, hub, monkeypatch):
    """With hf_xet installed (as users have it) the client takes other code paths; the push must not care."""
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_DISABLE_XET")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    _, result = credit_run
    pushed = push_output(result.output_dir, _fast())
    assert [c.summary for c in hub.repo(REPO).commits][-1].startswith("hf-adapt finetune")
    assert len(hub.repo(REPO).commits) == 2  # one commit for the whole output
    texts = result.data.inputs("test", "text")[:4]
    assert torch.equal(hf_adapt.load_adapted(REPO, revision=pushed.tag).logits(texts),
                       hf_adapt.load_adapted(str(result.output_dir)).logits(texts))


def test_transfer_from_a_hub_repo_and_publish_the_child(credit_run, hub, tmp_path):
    """init_from a pushed repo: the card links it at its commit, and the pushed child rebuilds from the Hub alone."""
    _, parent = credit_run
    pushed = push_output(parent.output_dir, _fast())
    cfg = config_from_dict(FinetuneConfig, dict(
        init_from=REPO, data=credit_run[0].data,
        label_column="housing", text_template="{purpose}, {credit_amount} DM, age {age_in_years}", regime="adapter",
        max_steps=2, report_to="none", torch_num_threads=1, output_dir=str(tmp_path / "child"),
        push_to_hub=True, hub_model_id="hf-adapt-tests/housing-from-credit", license="apache-2.0"))
    child = main(cfg)
    facts = json.loads((child.output_dir / "card_facts.json").read_text())
    assert facts["lineage"]["parent"] == REPO and facts["lineage"]["hub"]
    assert facts["lineage"]["revision"] == pushed.commit_oid
    card = hub.repo("hf-adapt-tests/housing-from-credit").files("main")["README.md"].decode()
    assert f"[`{REPO}`](https://huggingface.co/{REPO}) at revision `{pushed.commit_oid}`" in card
    assert "base_model: hf-adapt-tests/tiny-bert" in card
    texts = child.data.inputs("test", "text")[:8]
    expected = hf_adapt.load_adapted(str(child.output_dir)).logits(texts)
    assert torch.equal(hf_adapt.load_adapted("hf-adapt-tests/housing-from-credit").logits(texts), expected)
