"""Issue 17's feedback-log and manifest cases, in the matrix of ``tests/test_bad_inputs.py``.

Every case ends refused (an hf-adapt error naming the field, row or path at fault), counted (the bad
line skipped, one warning, a returned count) or loaded, never in a library's traceback nor a silent loss:

- the feedback log: a record appended after a crash tore the last line keeps its own line, so an
  acknowledged record is never lost; a record that cannot be written as JSON is refused by field and
  leaves the log as it was;
- manifests: every image path must resolve (symlinks followed) inside the manifest's folder or the
  ``image_root`` setting; a path outside is refused by row, before anything there is opened, so it
  can never reach the published ``examples/`` folder.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from hf_adapt.data import DataSpec, load_labelled
from hf_adapt.errors import ConfigError, DataError, HfAdaptError
from hf_adapt.feedback.log import FeedbackLog, read_feedback
from tests.test_bad_inputs import _RECORD, _png, _warnings

# ----------------------------------------------------------------------------- feedback log


def _torn_log(tmp: Path) -> Path:
    """Two whole records, then a third cut short by a crash: no closing brace, no newline."""
    path = tmp / "log.jsonl"
    whole = "".join(json.dumps({**_RECORD, "metadata": {"i": i}}) + "\n" for i in range(2))
    path.write_text(whole + json.dumps({**_RECORD, "metadata": {"i": 2}})[:25])
    return path


def _read_skipping(path: Path, caplog) -> tuple:
    with caplog.at_level(logging.WARNING, logger="hf_adapt"):
        log = read_feedback(path, on_bad_record="skip")
    return log, _warnings(caplog)


def test_record_after_a_torn_line_keeps_its_own_line(tmp_path, caplog):
    path = _torn_log(tmp_path)
    written = FeedbackLog(path).record("How was product 9?", "stale", "down", metadata={"i": 3})
    log, warnings = _read_skipping(path, caplog)
    assert log.records[-1] == written and [r["metadata"]["i"] for r in log.records] == [0, 1, 3]
    assert [b.line for b in log.bad] == [3] and "not a JSON object" in log.bad[0].reason  # counted once
    assert len(warnings) == 1 and re.search(r"skipped 1 bad feedback record\(s\): .*log\.jsonl:3: ", warnings[0])
    FeedbackLog(path).record("How was product 10?", "fine", "up")  # the log ends in a newline again: no blank line
    assert path.read_bytes().count(b"\n\n") == 0 and len(read_feedback(path, on_bad_record="skip")) == 4


@pytest.mark.parametrize("start", [pytest.param(json.dumps(_RECORD), id="whole-last-line-without-newline"),
                                   pytest.param("", id="empty-file")])
def test_record_after_a_file_without_final_newline_loads_every_record(start, tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text(start)
    written = FeedbackLog(path).record("How was product 2?", "too sweet", "down")
    log = read_feedback(path)  # on_bad_record="error": any bad line would raise
    assert log.records[-1] == written and len(log) == 1 + bool(start) and not log.bad
    assert log.where[-1] == f"log.jsonl:{1 + bool(start)}" and path.read_bytes().endswith(b"}\n")


class _Opaque:
    pass


def _looped() -> dict:
    loop: dict = {"step": 1}
    loop["again"] = loop
    return loop


UNWRITABLE = [
    pytest.param({"metadata": {"x": _Opaque()}}, r"metadata\.x is a _Opaque, which JSON cannot hold",
                 id="metadata-object"),
    pytest.param({"metadata": {"tags": {"a", "b"}}}, r"metadata\.tags is a set, which JSON cannot hold",
                 id="metadata-set"),
    pytest.param({"metadata": {"raw": b"\x00\x01"}}, r"metadata\.raw is a bytes, which JSON cannot hold",
                 id="metadata-bytes"),
    pytest.param({"metadata": {(1, 2): "pair"}}, r"metadata has a key \(1, 2\) \(tuple\); JSON keys are text",
                 id="metadata-tuple-key"),
    pytest.param({"metadata": {"latency": float("nan")}}, r"metadata\.latency is nan, which JSON cannot hold",
                 id="metadata-nan"),
    pytest.param({"metadata": {"scores": [0.1, float("inf")]}}, r"metadata\.scores\[1\] is inf", id="metadata-inf"),
    pytest.param({"metadata": {"trace": _looped()}}, r"metadata\.trace\.again contains itself", id="metadata-loop"),
    pytest.param({"prompt": "How was \ud800 it?"}, r"prompt holds a lone surrogate \('\\ud800' at character 8\)",
                 id="prompt-lone-surrogate"),
    pytest.param({"completion": [{"role": "assistant", "content": "ok \udfff"}],
                  "prompt": [{"role": "user", "content": "q"}]},
                 r"completion\[0\]\.content holds a lone surrogate", id="message-lone-surrogate"),
    pytest.param({"metadata": {"note": "\udc80"}}, r"metadata\.note holds a lone surrogate",
                 id="metadata-lone-surrogate"),
    pytest.param({"model": "org/bot\ud83d"}, r"model holds a lone surrogate", id="model-lone-surrogate"),
]


@pytest.mark.parametrize(("fields", "words"), UNWRITABLE)
def test_unwritable_record_is_refused_by_field_and_nothing_is_written(fields, words, tmp_path):
    path = _torn_log(tmp_path)  # a torn tail too: not even the newline that repairs it may be written
    before = path.read_bytes()
    with pytest.raises(HfAdaptError, match=words) as caught:
        FeedbackLog(path).record(**{**_RECORD, **fields})
    assert isinstance(caught.value, DataError) and f"not written to {path}" in str(caught.value)
    assert path.read_bytes() == before


# ----------------------------------------------------------------------------- manifest paths


def _tree(tmp: Path) -> Path:
    """``data/images`` holds a manifest of 12 PNGs; ``data/secret/a.png`` is a valid PNG beside it, outside."""
    folder = tmp / "data" / "images"
    for c in "ab":
        for i in range(6):
            _png(folder / c / f"{i}.png", seed=i)
    _png(tmp / "data" / "secret" / "a.png", seed=9)
    return folder


def _with_row(tmp: Path, value: str, row: int = 3) -> Path:
    folder = _tree(tmp)
    rows = [{"path": f"{c}/{i}.png", "label": c} for c in "ab" for i in range(6)]
    rows[row]["path"] = value
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _link_inside(tmp: Path, target: Path) -> Path:
    path = _with_row(tmp, "a/link.png")
    os.symlink(target, path.parent / "a" / "link.png")
    return path


def parent_folder_row(tmp):
    return _with_row(tmp, "../secret/a.png"), {}


def absolute_row_outside(tmp):
    return _with_row(tmp, str(tmp / "data" / "secret" / "a.png")), {}


def etc_passwd_row(tmp):
    """``../../../etc/passwd`` from a manifest three folders below ``tmp``: a real file there, never to be read."""
    folder = tmp / "x" / "y" / "z"
    (tmp / "etc").mkdir()
    (tmp / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n" * 20)
    rows = [{"path": f"{c}/{i}.png", "label": c} for c in "ab" for i in range(6)]
    for row in rows:
        _png(folder / row["path"])
    rows[3]["path"] = "../../../etc/passwd"
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder / "manifest.csv", {}


def system_file_row(tmp):
    return _with_row(tmp, "/etc/passwd"), {}


def symlink_pointing_outside(tmp):
    return _link_inside(tmp, tmp / "data" / "secret" / "a.png"), {}


def symlinked_folder_pointing_outside(tmp):
    path = _with_row(tmp, "more/a.png", row=7)
    os.symlink(tmp / "data" / "secret", path.parent / "more")
    return path, {}


def outside_row_with_skip(tmp):
    return _with_row(tmp, "../secret/a.png"), {"on_bad_image": "skip"}


def outside_row_in_a_given_split(tmp):
    path = _with_row(tmp, "../secret/a.png", row=8)
    frame = pd.read_csv(path)
    frame.iloc[[0, 1, 6, 7]].to_csv(path.parent / "test.csv", index=False)
    frame.drop(index=[0, 1, 6, 7]).to_csv(path.parent / "train.csv", index=False)
    files = {"train": str(path.parent / "train.csv"), "test": str(path.parent / "test.csv")}
    return None, {"source": "", "data_files": files}


REFUSED = [
    pytest.param(parent_folder_row, r"split 'train' manifest row 3: image path '\.\./secret/a\.png' resolves to "
                 r"\S*data/secret/a\.png, outside the manifest's folder \S*data/images; .*image_root: ",
                 id="parent-folder-row"),
    pytest.param(absolute_row_outside, r"manifest row 3: image path '/\S*/data/secret/a\.png' resolves to \S*, outside "
                 r"the manifest's folder", id="absolute-path-outside"),
    pytest.param(etc_passwd_row, r"manifest row 3: image path '\.\./\.\./\.\./etc/passwd' resolves to \S*/etc/passwd, "
                 r"outside", id="dot-dot-etc-passwd"),
    pytest.param(system_file_row, r"manifest row 3: image path '/etc/passwd' resolves to /etc/passwd, outside",
                 id="absolute-etc-passwd"),
    pytest.param(symlink_pointing_outside, r"manifest row 3: image path 'a/link\.png' resolves to \S*data/secret/a\.png"
                 r", outside .* symlinks are followed", id="symlink-inside-pointing-outside"),
    pytest.param(symlinked_folder_pointing_outside, r"manifest row 7: image path 'more/a\.png' resolves to "
                 r"\S*data/secret/a\.png", id="symlinked-folder-pointing-outside"),
    pytest.param(outside_row_with_skip, r"manifest row 3: image path '\.\./secret/a\.png' resolves to",
                 id="outside-row-is-not-skipped-but-refused"),
    pytest.param(outside_row_in_a_given_split, r"split 'train' manifest row 4: image path '\.\./secret/a\.png'",
                 id="outside-row-in-given-split-file"),
]


class _OpenSpy:
    """Records every file path opened through ``open`` (PIL, pydicom and ``is_dicom`` all go through it)."""

    def __init__(self, monkeypatch):
        self.paths: list[str] = []
        real = builtins.open

        def spy(file, *args, **kwargs):
            if isinstance(file, (str, os.PathLike)):
                self.paths.append(os.path.realpath(file))
            return real(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy)


@pytest.mark.parametrize(("make", "words"), REFUSED)
def test_manifest_path_outside_its_folder_is_refused_unread(make, words, tmp_path, monkeypatch):
    manifest, spec = make(tmp_path)
    spy = _OpenSpy(monkeypatch)
    with pytest.raises(HfAdaptError, match=words) as caught:
        load_labelled(DataSpec(**{"source": str(manifest), **spec}))
    assert isinstance(caught.value, DataError), type(caught.value)
    outside = [p for p in spy.paths if "/secret/" in p or p.endswith("/etc/passwd")]
    assert not outside, outside  # refused before any image outside was opened


def test_many_outside_rows_are_listed_together(tmp_path):
    folder = _tree(tmp_path)
    rows = [{"path": f"../secret/{i}.png" if i % 2 else f"a/{i % 6}.png", "label": "ab"[i % 2]} for i in range(16)]
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    with pytest.raises(DataError, match=r"split 'train': 8 of 16 manifest image paths lie outside .* manifest row 1: "
                                        r".*manifest row 9: .* \(and 3 more\)"):
        load_labelled(DataSpec(source=str(folder / "manifest.csv")))


# ----------------------------------------------------------------------------- allowed: loads


def test_image_root_allows_the_parent_folder(tmp_path):
    manifest = _with_row(tmp_path, "../secret/a.png")
    data = load_labelled(DataSpec(source=str(manifest), image_root=str(tmp_path / "data")))
    paths = [p for split in data.splits.values() for p in split["path"]]
    assert len(paths) == 12 and sum(os.path.realpath(p) == str((tmp_path / "data/secret/a.png").resolve())
                                    for p in paths) == 1
    symlinked = load_labelled(DataSpec(source=str(_link_inside(tmp_path / "l", tmp_path / "data/secret/a.png")),
                                       image_root=str(tmp_path)))
    assert sum(symlinked.origin["splits"].values()) == 12


def test_image_root_must_be_a_folder(tmp_path):
    manifest = _with_row(tmp_path, "a/0.png")
    with pytest.raises(ConfigError, match=r"image_root \S*nowhere is not a folder"):
        load_labelled(DataSpec(source=str(manifest), image_root=str(tmp_path / "nowhere")))


def test_paths_inside_the_manifest_folder_load(tmp_path):
    """Relative, absolute-inside, ``./`` and ``x/../`` paths and a symlink to a file inside all stay inside."""
    folder = _tree(tmp_path)
    rows = [{"path": f"{c}/{i}.png", "label": c} for c in "ab" for i in range(6)]
    rows[0]["path"] = str(folder / "a" / "0.png")
    rows[1]["path"] = "./a/1.png"
    rows[2]["path"] = "b/../a/2.png"
    os.symlink(folder / "a" / "3.png", folder / "a" / "alias.png")
    rows[3]["path"] = "a/alias.png"
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    data = load_labelled(DataSpec(source=str(folder / "manifest.csv")))
    assert data.kind == "image" and sum(data.origin["splits"].values()) == 12
    assert all(os.path.realpath(p).startswith(str(folder.resolve())) for s in data.splits.values() for p in s["path"])


def test_finetune_refuses_before_anything_reaches_examples(tmp_path):
    """The run stops at loading, so no image from outside can be written to the published ``examples/``."""
    from hf_adapt.config import config_from_dict
    from hf_adapt.recipes.finetune import FinetuneConfig, main

    manifest = _with_row(tmp_path, "../secret/a.png", row=11)
    out = tmp_path / "out"
    cfg = config_from_dict(FinetuneConfig, {"data": str(manifest), "label_column": "label", "text_template": None,
                                            "model_name_or_path": "no-such-model", "report_to": "none",
                                            "output_dir": str(out)})
    with pytest.raises(DataError, match=r"manifest row 11: image path '\.\./secret/a\.png' .*image_root: "):
        main(cfg)
    written = [p for p in tmp_path.rglob("*.png") if (tmp_path / "data") not in p.parents]
    assert not written, written
