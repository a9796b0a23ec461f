"""The bad-input matrix (issue 8): each recipe's loaders fed a catalogue of bad inputs.

Every case ends one of three ways, never in a library's traceback nor in a silent drop:
- refused: an hf-adapt error (``HfAdaptError``) whose message names the file, split, row, column or
  field at fault and what was expected;
- counted: the bad rows are skipped (or cut) and one warning, plus a returned count, says how many;
- loaded: odd but valid input (CMYK, 16-bit, a BOM, a declared encoding) reads correctly.

Data is built tiny in ``tmp_path``; the loaders are the ones the recipes call: ``load_labelled``
(finetune, continual), ``load_corpus`` / ``tokenize`` (pretrain), ``read_feedback`` and the
conversions (feedback), ``load_experiences`` (continual), the text preprocessor (finetune).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hf_adapt.data import DataSpec, load_labelled
from hf_adapt.errors import ConfigError, DataError, HfAdaptError
from hf_adapt.feedback.log import read_feedback

# ----------------------------------------------------------------------------- tiny data


def _texts(rows: int = 20) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"review number {i}" for i in range(rows)], "label": ["good", "bad"] * (rows // 2),
                         "num": np.arange(rows, dtype=float)})


def _csv(tmp: Path, frame: pd.DataFrame, name: str = "data.csv", **to_csv) -> Path:
    path = tmp / name
    frame.to_csv(path, index=False, **to_csv)
    return path


def _load(path: Path, **spec) -> Callable[[], Any]:
    return lambda: load_labelled(DataSpec(source=str(path), **spec))


def _load_files(files: dict[str, Path], **spec) -> Callable[[], Any]:
    return lambda: load_labelled(DataSpec(source="", data_files={k: str(v) for k, v in files.items()}, **spec))


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    return path


def _image_folder(tmp: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 6) -> Path:
    root = tmp / "images"
    for c in classes:
        for i in range(per_class):
            _png(root / c / f"{i}.png", seed=i)
    return root


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


def _manifest(tmp: Path, bad_path: str | None = "keep", rows: list[dict] | None = None) -> Path:
    """A manifest of 12 PNGs (path, label); row 3's path replaced by ``bad_path`` unless it is "keep"."""
    folder = _image_folder(tmp)
    rows = rows or [{"path": f"{c}/{i}.png", "label": c} for c in "ab" for i in range(6)]
    if bad_path != "keep":
        rows[3]["path"] = bad_path
    path = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- refused, by name


def truncated_png(tmp) -> Path:
    root = _image_folder(tmp)
    _truncated(root / "a" / "0.png")
    return root


def zero_byte_png(tmp) -> Path:
    root = _image_folder(tmp)
    (root / "b" / "2.png").write_bytes(b"")
    return root


def truncated_jpeg(tmp):
    root = _image_folder(tmp)
    (root / "a" / "photo.jpg").write_bytes(_jpeg_bytes()[:1500])
    return _load(root)


def text_named_png(tmp):
    path = _manifest(tmp, "a/notes.png")
    (path.parent / "a" / "notes.png").write_text("meeting notes, not a picture")
    return _load(path)


def not_a_dicom(tmp) -> Path:
    path = _manifest(tmp, "a/scan.dcm")
    (path.parent / "a" / "scan.dcm").write_text("patient list, not a scan")
    return path


def class_folder_without_images(tmp):
    root = _image_folder(tmp)
    (root / "c").mkdir()
    (root / "c" / "README.txt").write_text("images to come")
    return _load(root)


def empty_image_folder(tmp):
    (tmp / "images").mkdir()
    return _load(tmp / "images")


def unseen_class_folder(tmp):
    root = tmp / "images"
    for split, classes in (("train", "ab"), ("test", "abc")):
        for c in classes:
            for i in range(4):
                _png(root / split / c / f"{i}.png", seed=i)
    return _load(root)


def semicolon_csv(tmp):
    return _load(_csv(tmp, _texts(), sep=";"), text_column="text")


def tab_separated_csv(tmp):
    return _load(_csv(tmp, _texts(), sep="\t"), text_column="text")


def latin1_csv(tmp):
    path = tmp / "latin.csv"
    path.write_bytes(_texts().assign(text=[f"caf\u00e9 {i}" for i in range(20)]).to_csv(index=False).encode("latin-1"))
    return _load(path, text_column="text")


def latin1_late_row(tmp):
    frame = _texts()
    frame.loc[15, "text"] = "cr\u00e8me br\u00fbl\u00e9e"
    path = tmp / "late.csv"
    path.write_bytes(frame.to_csv(index=False).encode("latin-1"))  # the row check reads only the first rows
    return _load(path, text_column="text")


def malformed_jsonl_line(tmp):
    lines = [json.dumps({"text": f"t{i}", "label": "ab"[i % 2]}) for i in range(20)]
    lines[6] = '{"text": "cut short", "label": '
    path = tmp / "data.jsonl"
    path.write_text("\n".join(lines))
    return _load(path, text_column="text")


def malformed_json_array(tmp):
    rows = [{"text": f"t{i}", "label": "ab"[i % 2]} for i in range(20)]
    text = json.dumps(rows, indent=1).replace('"t7"', '"t7",,')
    path = tmp / "data.json"
    path.write_text(text)
    return _load(path, text_column="text")


def inf_in_numeric_column(tmp):
    frame = _texts()
    frame.loc[5, "num"] = np.inf
    return _load(_csv(tmp, frame), feature_columns=["num"])


def nan_in_pixel_column(tmp):
    frame = pd.DataFrame(np.random.default_rng(0).integers(0, 255, (20, 4)), columns=[f"p{i}" for i in range(4)])
    frame = frame.astype(float)
    frame.loc[7, "p2"] = np.nan
    frame["label"] = [0, 1] * 10
    return _load(_csv(tmp, frame), pixel_shape=[2, 2])


def unseen_label_in_test(tmp):
    test = _texts()
    test.loc[2, "label"] = "neutral"
    return _load_files({"train": _csv(tmp, _texts(), "train.csv"), "test": _csv(tmp, test, "test.csv")},
                       text_column="text")


def unseen_label_in_validation(tmp):
    valid = _texts()
    valid.loc[[4, 9], "label"] = "spam"
    return _load_files({"train": _csv(tmp, _texts(), "train.csv"), "valid": _csv(tmp, valid, "valid.csv")},
                       text_column="text")


def zero_byte_csv(tmp):
    (tmp / "data.csv").write_bytes(b"")
    return _load(tmp / "data.csv")


def header_only_csv(tmp):
    (tmp / "data.csv").write_text("text,label\n")
    return _load(tmp / "data.csv")


def blank_jsonl(tmp):
    (tmp / "data.jsonl").write_text("\n  \n")
    return _load(tmp / "data.jsonl")


def missing_label_column(tmp):
    return _load(_csv(tmp, _texts().rename(columns={"label": "sentiment"})), text_column="text")


def missing_text_column(tmp):
    return _load(_csv(tmp, _texts()), text_column="body")


def empty_text_cell(tmp):
    frame = _texts()
    frame.loc[4, "text"] = None
    return _load(_csv(tmp, frame), text_column="text")


def nan_label(tmp):
    frame = _texts()
    frame.loc[2, "label"] = None
    return _load(_csv(tmp, frame), text_column="text")


def single_class(tmp):
    return _load(_csv(tmp, _texts().assign(label="good")), text_column="text")


def parquet_numbers_as_text(tmp):
    path = tmp / "data.parquet"
    _texts().assign(text=range(20)).to_parquet(path)
    return _load(path, text_column="text")


def parquet_float_labels(tmp):
    path = tmp / "data.parquet"
    _texts().assign(label=np.linspace(0, 1, 20)).to_parquet(path)
    return _load(path, text_column="text")


def corrupt_parquet(tmp):
    (tmp / "data.parquet").write_bytes(b"PAR1 this is not a parquet file")
    return _load(tmp / "data.parquet")


def wrong_split_names(tmp):
    return _load_files({"training": _csv(tmp, _texts(), "a.csv"), "testing": _csv(tmp, _texts(), "b.csv")},
                       text_column="text")


def group_id_in_two_splits(tmp):
    def patients(first: int):
        return _texts().assign(patient_id=[f"P{first + i // 2}" for i in range(20)])

    files = {"train": _csv(tmp, patients(0), "train.csv"), "test": _csv(tmp, patients(9), "test.csv")}  # P9 in both
    return _load_files(files, text_column="text", group_column="patient_id")


def unknown_on_bad_image(tmp):
    return _load(_image_folder(tmp), on_bad_image="ignore")


def _feedback(tmp: Path, lines: list[str], name: str = "log.jsonl") -> Path:
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    return path


_RECORD = {"prompt": "How was product 1?", "completion": "great taste", "feedback": "up"}


def feedback_malformed_line(tmp):
    return lambda: read_feedback(_feedback(tmp, [json.dumps(_RECORD), '{"prompt": "How was', json.dumps(_RECORD)]))


def feedback_nan_score(tmp):
    return lambda: read_feedback(_feedback(tmp, [json.dumps(_RECORD), json.dumps({**_RECORD, "feedback": float("nan")})]))


def feedback_not_an_object(tmp):
    path = tmp / "log.json"
    path.write_text(json.dumps([_RECORD, "thumbs up"]))
    return lambda: read_feedback(path)


def feedback_corrupt_parquet(tmp):
    (tmp / "log.parquet").write_bytes(b"PAR1 truncated")
    return lambda: read_feedback(tmp / "log.parquet")


def _corpus(path: Path, **spec) -> Callable[[], Any]:
    from hf_adapt.data import load_corpus

    return lambda: load_corpus(DataSpec(source=str(path), **spec))


def pretrain_only_blank_lines(tmp):
    (tmp / "docs.txt").write_text("\n   \n\t\n")
    return _corpus(tmp / "docs.txt")


def pretrain_latin1_txt(tmp):
    (tmp / "docs.txt").write_bytes("caf\u00e9 au lait\nsecond document\n".encode("latin-1"))
    return _corpus(tmp / "docs.txt")


def pretrain_numbers_as_text(tmp):
    return _corpus(_csv(tmp, pd.DataFrame({"text": range(20)})))


def _experience(tmp: Path, entry: dict) -> Callable[[], Any]:
    from hf_adapt.config import config_from_dict
    from hf_adapt.continual.experiences import load_experiences
    from hf_adapt.recipes.continual import ContinualConfig

    path = _csv(tmp, _texts(40).assign(label=["a", "b", "c", "d"] * 10))
    cfg = config_from_dict(ContinualConfig, {"data": str(path), "label_column": "label", "text_column": "text",
                                             "text_template": None, "experiences": [entry],
                                             "output_dir": str(tmp / "out")})
    return lambda: load_experiences(cfg, [entry], [], 0, 0)


def continual_unknown_class(tmp):
    return _experience(tmp, {"name": "late", "classes": ["a", "zebra"]})


def continual_where_unknown_column(tmp):
    return _experience(tmp, {"name": "site-b", "where": {"site": ["B"]}})


def continual_filter_leaves_nothing(tmp):
    return _experience(tmp, {"name": "none", "where": {"text": ["no such review"]}})


REFUSED = [
    pytest.param(lambda tmp: _load(truncated_png(tmp)), r"images/a/0\.png\): unreadable image: truncated file",
                 id="truncated-png"),
    pytest.param(lambda tmp: _load(zero_byte_png(tmp)), r"images/b/2\.png\): unreadable image: not an image file",
                 id="zero-byte-png"),
    pytest.param(truncated_jpeg, r"photo\.jpg\): unreadable image: truncated file", id="truncated-jpeg"),
    pytest.param(text_named_png, r"manifest row 3 \(.*notes\.png\): unreadable image: not an image file",
                 id="text-file-named-png"),
    pytest.param(lambda tmp: _load(_manifest(tmp, "a/gone.png")),
                 r"split '\w+': 1 of \d+ image files not found: manifest row 3: .*a/gone\.png", id="manifest-missing-image"),
    pytest.param(lambda tmp: _load(_manifest(tmp, None)), r"manifest row 3: empty path", id="manifest-empty-path"),
    pytest.param(lambda tmp: _load(not_a_dicom(tmp)), r"manifest row 3 \(.*scan\.dcm\): not a DICOM file", id="dicom-that-is-not-dicom"),
    pytest.param(empty_image_folder, r"images holds neither split files .* nor class subfolders", id="empty-image-folder"),
    pytest.param(class_folder_without_images, r"class folder .*images/c holds no image files",
                 id="class-folder-without-images"),
    pytest.param(unseen_class_folder, r"split 'test' row \d+: label 'c' never appears in the train split "
                 r"\(4 such row", id="unseen-class-folder-in-test"),
    pytest.param(semicolon_csv, r"label column 'label' not found in split 'train'; columns are \['text;label;num'\]\. "
                 r".*data_kwargs: \{delimiter: ';'\}", id="csv-semicolon-delimiter"),
    pytest.param(tab_separated_csv, r"label column 'label' not found.*delimiter: '\\\\t'", id="csv-tab-delimiter"),
    pytest.param(latin1_csv, r"latin\.csv line 2 is not utf-8 text \(byte 0xe9\).*data_kwargs: \{encoding: latin-1\}",
                 id="csv-latin1"),
    pytest.param(latin1_late_row, r"late\.csv line 17 is not utf-8 text", id="csv-latin1-late-row"),
    pytest.param(malformed_jsonl_line, r"data\.jsonl line 7: not a JSON object", id="jsonl-malformed-line"),
    pytest.param(malformed_json_array, r"data\.json line \d+: not valid JSON", id="json-array-malformed"),
    pytest.param(inf_in_numeric_column, r"split 'train' row 5: column 'num' is inf \(1 such row", id="inf-in-numeric"),
    pytest.param(nan_in_pixel_column, r"split 'train' row 7: column 'p2' is nan", id="nan-in-pixel-column"),
    pytest.param(unseen_label_in_test, r"split 'test' row 2: label 'neutral' never appears in the train split",
                 id="unseen-label-in-test"),
    pytest.param(unseen_label_in_validation, r"split 'validation' row 4: label 'spam' never appears in the train split "
                 r"\(2 such row", id="unseen-label-in-validation"),
    pytest.param(zero_byte_csv, r"split 'train' is empty: .*data\.csv holds no rows", id="zero-byte-csv"),
    pytest.param(header_only_csv, r"split 'train' is empty: .*data\.csv holds no rows", id="header-only-csv"),
    pytest.param(blank_jsonl, r"split 'train' is empty: .*data\.jsonl holds no rows", id="blank-jsonl"),
    pytest.param(missing_label_column, r"label column 'label' not found in split 'train'; columns are "
                 r"\['text', 'sentiment', 'num'\]$", id="missing-label-column"),
    pytest.param(missing_text_column, r"text column 'body' not found; columns are", id="missing-text-column"),
    pytest.param(empty_text_cell, r"split 'train' row 4: text column 'text' is empty \(1 such row",
                 id="empty-text-cell"),
    pytest.param(nan_label, r"split 'train' row 2: label column 'label' is empty", id="nan-label"),
    pytest.param(single_class, r"single class", id="single-class"),
    pytest.param(parquet_numbers_as_text, r"split 'train' row 0: text column 'text' holds int 0, not text",
                 id="parquet-numbers-as-text"),
    pytest.param(parquet_float_labels, r"label column 'label' holds continuous values", id="parquet-float-labels"),
    pytest.param(corrupt_parquet, r"data\.parquet cannot be read as parquet", id="corrupt-parquet"),
    pytest.param(wrong_split_names, r"no train split; found \['testing', 'training'\]\. Name the splits train",
                 id="wrong-split-names"),
    pytest.param(group_id_in_two_splits, r"group column 'patient_id': 'P9' appears in splits \['train', 'test'\]",
                 id="group-id-in-two-splits"),
    pytest.param(unknown_on_bad_image, r"on_bad_image must be 'error' or 'skip', got 'ignore'",
                 id="unknown-on-bad-image"),
    pytest.param(feedback_malformed_line, r"log\.jsonl:2: not a JSON object", id="feedback-malformed-line"),
    pytest.param(feedback_nan_score, r"log\.jsonl:2: feedback score is nan", id="feedback-nan-score"),
    pytest.param(feedback_not_an_object, r"log\.json:2: a record must be a JSON object, got str",
                 id="feedback-not-an-object"),
    pytest.param(feedback_corrupt_parquet, r"log\.parquet:1: not a readable parquet file", id="feedback-corrupt-parquet"),
    pytest.param(pretrain_only_blank_lines, r"text column 'text' is empty in split 'train' of .*docs\.txt: none of "
                 r"its 3 rows holds text", id="pretrain-only-blank-lines"),
    pytest.param(pretrain_latin1_txt, r"docs\.txt line 1 is not utf-8 text \(byte 0xe9\)", id="pretrain-latin1-txt"),
    pytest.param(pretrain_numbers_as_text, r"split 'train' row 0: text column 'text' holds int 0, not text",
                 id="pretrain-numbers-as-text"),
    pytest.param(continual_unknown_class, r"experience 'late': classes \['zebra'\] are not labels of its data",
                 id="continual-unknown-class"),
    pytest.param(continual_where_unknown_column, r"experience 'site-b': where names column 'site', which the data lacks",
                 id="continual-where-unknown-column"),
    pytest.param(continual_filter_leaves_nothing, r"experience 'none' has no train rows after its classes/where filter",
                 id="continual-filter-leaves-nothing"),
]


@pytest.mark.parametrize(("make", "words"), REFUSED)
def test_bad_input_is_refused_by_name(make, words, tmp_path):
    attempt = make(tmp_path)
    with pytest.raises(HfAdaptError, match=words) as caught:
        attempt()
    assert isinstance(caught.value, (DataError, ConfigError)), type(caught.value)


# ----------------------------------------------------------------------------- skipped or cut, and counted


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("hf_adapt")]


def _skipped(root: Path, reason: str) -> tuple[Any, str]:
    data = load_labelled(DataSpec(source=str(root), on_bad_image="skip"))
    assert sum(data.origin["splits"].values()) == 11  # 12 rows, one skipped; every other row kept
    (counts,) = data.origin["skipped_images"].values()
    assert counts == {reason: 1}
    return data, rf"split '\w+': skipped 1 unreadable image \(1 {reason}\)"


def manifest_duplicate_rows(tmp):
    rows = [{"path": f"{c}/{i}.png", "label": c} for c in "ab" for i in range(6)]
    data = load_labelled(DataSpec(source=str(_manifest(tmp, rows=rows + [dict(rows[1])]))))
    assert data.origin["repeated_images"] == 1 and sum(data.origin["splits"].values()) == 13  # used as given
    return data, (r"1 repeated manifest row\(s\) name an image file listed before \(first: .*a/1\.png, split 'train' "
                  r"manifest row 1 and split 'train' manifest row 12\); .*group_column")


def skip_feedback_bad_lines(tmp):
    lines = [json.dumps(_RECORD), '{"prompt": "How was', json.dumps({**_RECORD, "feedback": "sideways"}),
             json.dumps(_RECORD)]
    log = read_feedback(_feedback(tmp, lines), on_bad_record="skip")
    assert len(log) == 2 and [(b.line, b.reason[:16]) for b in log.bad] == [(2, "not a JSON objec"),
                                                                             (3, "feedback must be")]
    return log, r"skipped 2 bad feedback record\(s\): .*log\.jsonl:2: .*log\.jsonl:3: "


def feedback_duplicate_records(tmp):
    from hf_adapt.feedback.convert import to_prompts, to_sft
    from hf_adapt.feedback.inspect import summarize

    fix = {**_RECORD, "feedback": "down", "correction": "crisp and fresh", "user_id": "sha256:ab"}
    log = read_feedback(_feedback(tmp, [json.dumps(fix)] * 3 + [json.dumps(_RECORD)]))
    assert summarize(log)["duplicates"] == 2
    assert to_sft(log.records).dropped["repeated examples"] == 2 and len(to_sft(log.records).rows) == 1
    assert to_prompts(log.records).dropped["repeated prompts"] == 3
    return log, None  # counted in the conversion's report (written with the run), not in a log line


def pretrain_blank_lines_among_text(tmp):
    from hf_adapt.data import load_corpus

    (tmp / "docs.txt").write_text("first document\n\n   \n" + "\n".join(f"document {i}" for i in range(12)) + "\n")
    corpus = load_corpus(DataSpec(source=str(tmp / "docs.txt")))
    assert corpus.origin["dropped_empty_rows"] == {"train": 2} and sum(corpus.origin["splits"].values()) == 13
    return corpus, r"dropped 2 rows whose text column 'text' is empty or missing \(train: 2\)"


def nan_in_numeric_column(tmp):
    frame = _texts()
    frame.loc[[3, 11], "num"] = np.nan
    data = load_labelled(DataSpec(source=str(_csv(tmp, frame)), feature_columns=["num"]))
    rendered = [text for split in ("train", "validation", "test") for text in data.inputs(split, "text")]
    assert sorted(rendered).count("num: missing") == 2 and len(rendered) == 20  # rendered, not dropped
    from hf_adapt.baselines import fit_baseline

    baseline = fit_baseline("logistic_regression", data, fit_on=("train", "validation"))  # imputes, then flags
    assert np.isfinite(list(baseline.values())).all()
    return data, r"empty numeric cells are rendered as 'missing' .*: column 'num' 2 of 20 rows"


def text_longer_than_max_length(tmp, tiny_bert):
    from hf_adapt.backbones import BackboneSpec, build_backbone

    backbone = build_backbone(BackboneSpec(name_or_path=str(tiny_bert), num_labels=2, max_length=16))
    long = " ".join(["good credit history"] * 20)
    texts = {"train": [long, "short one", long, "short two"], "validation": ["short three"], "test": [long]}
    assert backbone.preprocessor.check_inputs(texts) == {"train": 2, "validation": 0, "test": 1}
    assert backbone.preprocessor.collate(texts["train"], train=True)["input_ids"].shape[1] == 16  # truncated
    return backbone, (r"texts longer than max_length 16 tokens are truncated: train 2 of 4, validation 0 of 1, "
                      r"test 1 of 1")


def pretrain_document_longer_than_max_length(tmp, tiny_bert):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from hf_adapt.lm import tokenize

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    docs = Dataset.from_dict({"text": [" ".join(["credit"] * 40), "short", " ".join(["savings"] * 30), "also short"]})
    blocks = tokenize(docs, tokenizer, "text", "mlm", 16, packing=False)
    lengths = [len(ids) for ids in blocks["input_ids"]]
    assert lengths[0] == lengths[2] == 16 and max(lengths[1], lengths[3]) < 16
    assert blocks["input_ids"][0][-1] == tokenizer.sep_token_id  # cut by the tokenizer: the closing token stays
    assert blocks.column_names == ["input_ids", "special_tokens_mask"]
    return blocks, r"2 of 4 documents are longer than max_length 16 tokens and were truncated"


COUNTED = [
    pytest.param(lambda tmp: _skipped(truncated_png(tmp), "truncated"), id="skip-truncated-png"),
    pytest.param(lambda tmp: _skipped(zero_byte_png(tmp), "not an image"), id="skip-zero-byte-png"),
    pytest.param(lambda tmp: _skipped(_manifest(tmp, "a/gone.png"), "missing file"), id="skip-missing-manifest-image"),
    pytest.param(lambda tmp: _skipped(not_a_dicom(tmp), "not an image"), id="skip-dicom-that-is-not-dicom"),
    pytest.param(manifest_duplicate_rows, id="manifest-duplicate-rows"),
    pytest.param(skip_feedback_bad_lines, id="skip-feedback-bad-lines"),
    pytest.param(feedback_duplicate_records, id="feedback-duplicate-records"),
    pytest.param(pretrain_blank_lines_among_text, id="pretrain-blank-lines-dropped"),
    pytest.param(nan_in_numeric_column, id="nan-in-numeric-rendered-missing"),
]


@pytest.mark.parametrize("make", COUNTED)
def test_bad_rows_are_skipped_and_counted_once(make, tmp_path, caplog):
    """Each case asserts its counts; ``words`` is the one warning that reports them (None: a report counts them)."""
    with caplog.at_level(logging.WARNING, logger="hf_adapt"):
        _, words = make(tmp_path)
    messages = _warnings(caplog)
    assert len(messages) == (words is not None), messages  # one warning, however many rows
    assert words is None or re.search(words, messages[0]), messages


@pytest.mark.parametrize("make", [pytest.param(text_longer_than_max_length, id="text-longer-than-max-length"),
                                  pytest.param(pretrain_document_longer_than_max_length,
                                               id="pretrain-document-longer-than-max-length")])
def test_long_texts_are_truncated_with_one_counting_warning(make, tmp_path, tiny_bert, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_adapt"):
        _, words = make(tmp_path, tiny_bert)
    truncation = [m for m in _warnings(caplog) if "max_length" in m]
    assert len(truncation) == 1 and re.search(words, truncation[0]), truncation


# ----------------------------------------------------------------------------- odd but valid: loads


def test_cmyk_jpegs_load_as_rgb(tmp_path):
    colours = {"cyan": ((255, 0, 0, 0), (0, 255, 255)), "magenta": ((0, 255, 0, 0), (255, 0, 255))}
    for name, (cmyk, _) in colours.items():
        for i in range(6):
            path = tmp_path / "images" / name / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("CMYK", (16, 16), cmyk).save(path, quality=95)
    data = load_labelled(DataSpec(source=str(tmp_path / "images")))
    for split in ("train", "validation", "test"):
        for image, label in zip(data.inputs(split, "image"), data.splits[split]["label"]):
            assert image.mode == "RGB"
            expected = colours[data.labels[label]][1]
            assert np.abs(np.asarray(image, dtype=int) - expected).max() <= 8


def test_16_bit_pngs_load_scaled_not_clipped(tmp_path):
    for c in "ab":
        for i in range(6):
            path = tmp_path / "images" / c / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.arange(256, dtype=np.uint16).reshape(16, 16) * (100 + i) + 1000).save(path)
    data = load_labelled(DataSpec(source=str(tmp_path / "images")))
    images = [image for split in ("train", "validation", "test") for image in data.inputs(split, "image")]
    assert len(images) == 12
    for image in images:
        pixels = np.asarray(image)
        assert image.mode == "L" and pixels.min() == 0 and pixels.max() == 255 and len(np.unique(pixels)) == 256


def test_csv_with_a_utf8_bom_loads(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + _texts()[["label", "text"]].to_csv(index=False).encode())
    data = load_labelled(DataSpec(source=str(path), text_column="text"))
    assert data.splits["train"].column_names[:2] == ["label", "text"] and data.labels == ["bad", "good"]


def test_latin1_csv_loads_with_its_encoding_declared(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes(_texts().assign(text=[f"caf\u00e9 {i}" for i in range(20)]).to_csv(index=False).encode("latin-1"))
    data = load_labelled(DataSpec(source=str(path), text_column="text", load_kwargs={"encoding": "latin-1"}))
    assert all(text.startswith("caf\u00e9 ") for text in data.inputs("train", "text"))
