"""The LocalHub test server, driven by the real huggingface_hub client (HfApi, hf_hub_download, snapshot_download,
ModelCard.load), so push tests elsewhere can trust what it records."""

from __future__ import annotations

import random
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    ModelCard,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.hub_server import DEFAULT_TOKEN, GITATTRIBUTES, LocalHub, hub_env, record_backoff

REPO = "hf-adapt-tests/tiny"
README = b"""---
license: apache-2.0
library_name: peft
base_model: hf-adapt-tests/base
tags:
- hf-adapt
---
# tiny

A test card.
"""


@pytest.fixture
def hub(monkeypatch, tmp_path):
    with LocalHub() as hub:
        hub_env(monkeypatch, hub, tmp_path)
        yield hub


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "upload"
    (root / "sub").mkdir(parents=True)
    (root / "README.md").write_bytes(README)
    (root / "config.json").write_text('{"r": 8}')
    (root / "x.safetensors").write_bytes(random.Random(0).randbytes(10 * 1024))
    (root / "sub" / "notes.txt").write_text("nested")
    return root


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _pushed(hub: LocalHub, folder: Path) -> HfApi:
    api = HfApi()
    api.create_repo(REPO, private=True)
    api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="first upload")
    return api


def test_hub_env_points_every_entry_point_at_the_local_hub(hub, tmp_path):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.file_download import hf_hub_url

    assert constants.ENDPOINT == hub.url and not constants.is_offline_mode()
    assert hf_hub_url(REPO, "a b.txt", revision="refs/pr/1") == f"{hub.url}/{REPO}/resolve/refs%2Fpr%2F1/a%20b.txt"
    assert constants.HF_HUB_CACHE.startswith(str(tmp_path))
    huggingface_hub.create_repo(REPO)  # module-level shortcut: an HfApi built at import
    assert hub.requests == ["POST /api/repos/create"]
    assert HfApi().whoami()["name"] == hub.user


def test_create_repo_stores_visibility_and_answers_409_when_it_exists(hub):
    api = HfApi()
    url = api.create_repo(REPO, private=True)
    assert url == f"{hub.url}/{REPO}" and url.repo_id == REPO
    assert hub.repo(REPO).private and hub.repo(REPO).visibility == "private"
    assert hub.repo(REPO).files() == {".gitattributes": GITATTRIBUTES}  # like the Hub's "initial commit"
    assert hub.repo(REPO).commits[0].summary == "initial commit"

    assert api.create_repo(REPO, exist_ok=True) == url
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(REPO)
    assert err.value.response.status_code == 409

    api.create_repo("hf-adapt-tests/open")
    assert not hub.repo("hf-adapt-tests/open").private
    api.update_repo_settings("hf-adapt-tests/open", private=True)
    assert hub.repo("hf-adapt-tests/open").private
    api.delete_repo("hf-adapt-tests/open")
    with pytest.raises(KeyError, match="no model repo"):
        hub.repo("hf-adapt-tests/open")


def test_upload_folder_commits_files_inline_and_reads_them_back(hub, folder, tmp_path):
    api = HfApi()
    api.create_repo(REPO, private=True)
    before = len(hub.requests)
    info = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="first upload",
                             commit_description="details")

    repo = hub.repo(REPO)
    assert hub.requests[before:] == [
        "POST /api/validate-yaml",  # a README.md is part of the upload: upload_folder checks it...
        "POST /api/validate-yaml",  # ...and create_commit again
        f"POST /api/models/{REPO}/preupload/main",
        f"POST /api/models/{REPO}/commit/main",
    ]
    assert info.oid == repo.branches["main"] == repo.commits[-1].sha and len(info.oid) == 40
    assert info.commit_url == f"{hub.url}/{REPO}/commit/{info.oid}" and info.pr_url is None
    assert (repo.commits[-1].summary, repo.commits[-1].description) == ("first upload", "details")
    assert repo.files("main") == {**_local_files(folder), ".gitattributes": GITATTRIBUTES}

    model = api.model_info(REPO)
    assert model.private and model.sha == info.oid
    assert sorted(s.rfilename for s in model.siblings) == sorted(repo.files())
    assert model.card_data.library_name == "peft" and model.card_data.base_model == "hf-adapt-tests/base"
    assert ModelCard.load(REPO).data.license == "apache-2.0"
    assert api.file_exists(REPO, "sub/notes.txt") and not api.file_exists(REPO, "missing.bin")
    assert sorted(api.list_repo_files(REPO)) == sorted(repo.files())

    path = hf_hub_download(REPO, "x.safetensors")
    assert Path(path).read_bytes() == (folder / "x.safetensors").read_bytes()
    assert path.startswith(str(tmp_path / "hf_home" / "hub"))  # the temp cache, not ~/.cache
    assert _local_files(Path(snapshot_download(REPO))) == repo.files()


def test_invalid_readme_metadata_is_rejected_before_anything_uploads(hub, folder):
    api = HfApi()
    api.create_repo(REPO)
    (folder / "README.md").write_text("---\nlicense: [unclosed\n---\n# card\n")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_folder(repo_id=REPO, folder_path=folder)
    assert not any("/preupload/" in r or "/commit/" in r for r in hub.requests)
    assert len(hub.repo(REPO).commits) == 1


def test_unchanged_files_are_not_committed_again(hub, folder):
    api = _pushed(hub, folder)
    sha = hub.repo(REPO).branches["main"]
    info = api.upload_folder(repo_id=REPO, folder_path=folder)  # preupload reports each remote blob oid
    assert info.oid == sha and hub.requests[-1] == f"GET /api/models/{REPO}/revision/main"
    assert len(hub.repo(REPO).commits) == 2


def test_branches_tags_and_pull_requests(hub, folder, tmp_path):
    api = _pushed(hub, folder)
    repo = hub.repo(REPO)
    first = repo.branches["main"]

    api.create_branch(REPO, branch="dev")
    api.create_branch(REPO, branch="dev", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_branch(REPO, branch="dev")
    assert err.value.response.status_code == 409
    api.create_tag(REPO, tag="v1", revision="main", tag_message="first release")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(REPO, tag="v1")
    assert err.value.response.status_code == 409
    assert repo.branches["dev"] == repo.tags["v1"] == first and repo.tag_messages["v1"] == "first release"

    pr = api.create_commit(REPO, [CommitOperationAdd("config.json", b'{"r": 16}'),
                                  CommitOperationDelete("sub/")],
                           commit_message="bigger rank", create_pr=True)
    assert (pr.pr_revision, pr.pr_num, pr.pr_url) == ("refs/pr/1", 1, f"{hub.url}/{REPO}/discussions/1")
    assert repo.pull_requests == {1: pr.oid} and repo.branches["main"] == first  # main untouched
    assert repo.commits[-1].parent == first and repo.commits[-1].ref == "refs/pr/1"
    second_pr = api.create_commit(REPO, [CommitOperationAdd("extra.txt", b"x")], commit_message="two",
                                  create_pr=True)
    assert second_pr.pr_num == 2 and repo.commits[-1].parent == first

    follow_up = api.create_commit(REPO, [CommitOperationAdd("extra.txt", b"y")], commit_message="on the PR",
                                  revision="refs/pr/1")
    assert repo.pull_requests[1] == follow_up.oid and repo.commits[-1].parent == pr.oid

    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert {r.name: r.target_commit for r in refs.branches} == {"main": first, "dev": first}
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", first)]
    assert [(p.ref, p.target_commit) for p in refs.pull_requests] == [("refs/pr/1", follow_up.oid),
                                                                      ("refs/pr/2", second_pr.oid)]
    assert api.list_repo_refs(REPO).pull_requests is None

    pr_files = _local_files(Path(snapshot_download(REPO, revision="refs/pr/1")))
    assert pr_files["config.json"] == b'{"r": 16}' and pr_files["extra.txt"] == b"y"
    assert "sub/notes.txt" not in pr_files
    assert f"GET /api/models/{REPO}/revision/refs/pr/1" in hub.requests  # sent as refs%2Fpr%2F1

    (folder / "config.json").write_text('{"r": 4}')
    second = api.upload_folder(repo_id=REPO, folder_path=folder, commit_message="second upload")
    assert repo.branches["main"] == second.oid != first
    assert repo.tags["v1"] == first
    assert Path(hf_hub_download(REPO, "config.json")).read_text() == '{"r": 4}'
    assert Path(hf_hub_download(REPO, "config.json", revision="v1")).read_text() == '{"r": 8}'
    tagged = _local_files(Path(snapshot_download(REPO, revision="v1", cache_dir=tmp_path / "fresh")))
    assert tagged == repo.files(first) and tagged["config.json"] == b'{"r": 8}'
    assert _local_files(Path(snapshot_download(REPO, revision=first[:10]))) == tagged
    assert [c.title for c in api.list_repo_commits(REPO)] == ["second upload", "first upload", "initial commit"]

    from_old = api.create_commit(REPO, [CommitOperationAdd("old.txt", b"o")], commit_message="from v1",
                                 create_pr=True, parent_commit=first[:7])  # a PR from an older commit
    assert from_old.pr_num == 3 and repo.commits[-1].parent == first


def test_missing_repo_revision_and_file_raise_the_client_errors(hub, folder):
    api = _pushed(hub, folder)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("hf-adapt-tests/nope")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("hf-adapt-tests/nope", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="v9")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="refs/pr/7")
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.bin")
    with pytest.raises(RevisionNotFoundError):  # commits go to existing branches only
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, revision="no-such-branch")
    with pytest.raises(RemoteEntryNotFoundError, match="doesn't exist"):
        api.delete_file("missing.bin", REPO)
    stale = hub.repo(REPO).commits[0].sha
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=REPO, parent_commit=stale)
    assert err.value.response.status_code == 412


def test_injected_503_on_commit_is_raised_not_retried(hub, folder):
    api = HfApi()
    api.create_repo(REPO)
    rule = hub.fail("POST", "/commit/", 503)
    with pytest.raises(HfHubHTTPError) as err:
        api.upload_folder(repo_id=REPO, folder_path=folder)
    assert err.value.response.status_code == 503 and rule.hits == 1
    assert sum("/commit/" in r for r in hub.requests) == 1  # the commit call has no backoff
    assert len(hub.repo(REPO).commits) == 1
    api.upload_folder(repo_id=REPO, folder_path=folder)  # the failure was used up
    assert len(hub.repo(REPO).commits) == 2


@pytest.mark.parametrize("status", [503, None])
def test_preupload_failures_are_retried_with_backoff(hub, folder, monkeypatch, status):
    waits = record_backoff(monkeypatch)
    api = HfApi()
    api.create_repo(REPO)
    rule = hub.fail("POST", "/preupload/", status, times=2)
    api.upload_folder(repo_id=REPO, folder_path=folder)
    assert waits == [1, 2] and rule.hits == 2 and sum("/preupload/" in r for r in hub.requests) == 3
    assert "x.safetensors" in hub.repo(REPO).files()


def test_xet_path_commits_to_a_draft_pr_and_retries_the_commit(hub, folder, monkeypatch):
    """Without HF_HUB_DISABLE_XET (and hf_xet installed) upload_folder takes the pipelined path: regular files
    still work, create_pr opens the PR first (POST .../discussions), and its commit call *is* retried."""
    pytest.importorskip("hf_xet")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    waits = record_backoff(monkeypatch)
    api = HfApi()
    api.create_repo(REPO)
    hub.fail("POST", "/commit/", 503)
    info = api.upload_folder(repo_id=REPO, folder_path=folder, create_pr=True, commit_message="via xet path")
    assert waits == [1] and info.pr_revision == "refs/pr/1"
    assert f"POST /api/models/{REPO}/discussions" in hub.requests
    repo = hub.repo(REPO)
    assert repo.discussions[1]["title"] == "via xet path" and repo.discussions[1]["pull_request"]
    assert repo.files("refs/pr/1") == {**_local_files(folder), ".gitattributes": GITATTRIBUTES}
    assert repo.files("main") == {".gitattributes": GITATTRIBUTES}


@pytest.mark.parametrize(("method", "path", "status", "outcome", "waits"), [
    ("HEAD", "/resolve/", 503, "ok", []),  # hf_hub_download asks HEAD again at once
    ("HEAD", "/resolve/", None, httpx2.RemoteProtocolError, []),
    ("GET", "/resolve/", 503, HfHubHTTPError, []),
    ("GET", "/resolve/", None, "ok", [1]),  # "Trying to resume download..." after 1 s
    ("GET", "/revision/", 503, LocalEntryNotFoundError, []),  # snapshot_download falls back to the empty cache
    ("GET", "/tree/", 503, "ok", [1]),  # listing goes through http_backoff
])
def test_download_failures_follow_the_client_retry_rules(monkeypatch, tmp_path, method, path, status, outcome,
                                                         waits):
    with LocalHub({REPO: {"config.json": b"{}"}}) as hub:
        hub_env(monkeypatch, hub, tmp_path)
        recorded = record_backoff(monkeypatch)
        rule = hub.fail(method, path, status)
        if outcome == "ok":
            assert Path(snapshot_download(REPO), "config.json").read_bytes() == b"{}"
        else:
            with pytest.raises(outcome):
                snapshot_download(REPO)
        assert rule.hits == 1 and recorded == waits


def test_dropped_connection_surfaces_as_a_network_error(hub, folder):
    api = HfApi()
    api.create_repo(REPO)
    hub.fail("POST", "/commit/", None)
    with pytest.raises(httpx2.TransportError):
        api.upload_folder(repo_id=REPO, folder_path=folder)
    assert len(hub.repo(REPO).commits) == 1


def test_wrong_or_missing_token_is_401_and_tokens_are_never_logged(hub, folder, monkeypatch):
    hub.require_token(DEFAULT_TOKEN)
    with pytest.raises(HfHubHTTPError, match="Invalid credentials") as err:
        HfApi(token="hf_wrong_token").create_repo(REPO)
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=False).create_repo(REPO)
    assert err.value.response.status_code == 401
    assert hub.auth_headers_seen == 1

    _pushed(hub, folder)  # HF_TOKEN from hub_env is the right one
    assert hub.repo(REPO).private
    with pytest.raises(RepositoryNotFoundError):  # a private repo without a token looks missing
        HfApi(token=False).model_info(REPO)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(REPO, "config.json", token=False)
    with pytest.raises(HfHubHTTPError) as err:
        hf_hub_download(REPO, "config.json", token="hf_wrong_token")
    assert err.value.response.status_code == 401
    assert HfApi().model_info(REPO).private
    assert not any("hf_wrong_token" in r or DEFAULT_TOKEN in r for r in hub.requests)


def test_folders_given_at_construction_are_served_read_only(monkeypatch, tmp_path, folder):
    with LocalHub({REPO: folder}) as hub:
        hub_env(monkeypatch, hub, tmp_path, token=None)
        local = Path(snapshot_download(REPO))
        assert _local_files(local) == _local_files(folder)  # no .gitattributes: the folder is the first commit
        assert any("/resolve/" in r and "x.safetensors" in r for r in hub.requests)
        assert hub.auth_headers_seen == 0
        assert hub.repo(REPO).commits[0].sha == hub.repo(REPO).branches["main"]
