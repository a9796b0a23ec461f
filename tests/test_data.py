"""Loading, splitting, rendering and the bad-input checks that run before any training."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hf_adapt.data import DataSpec, load_labelled, render_row
from hf_adapt.errors import DataError


def _credit(credit_sample, **kw) -> DataSpec:
    return DataSpec(source=str(credit_sample), label_column="creditability", **kw)


def test_one_file_gets_a_stratified_seeded_split(credit_sample):
    data = load_labelled(_credit(credit_sample))
    sizes = data.origin["splits"]
    assert sizes["test"] == 60 and sizes["validation"] == pytest.approx(30, abs=1) and sum(sizes.values()) == 200
    assert data.labels == ["bad", "good"]
    # stratified: the 30 % bad share holds in every split
    for split in ("train", "validation", "test"):
        counts = data.label_counts(split)
        assert counts["bad"] / sum(counts.values()) == pytest.approx(0.3, abs=0.02)
    again = load_labelled(_credit(credit_sample))
    assert again.splits["test"]["credit_amount"] == data.splits["test"]["credit_amount"]
    other = load_labelled(_credit(credit_sample, seed=7))
    assert other.splits["test"]["credit_amount"] != data.splits["test"]["credit_amount"]


def test_named_splits_are_used_as_given(credit_sample, tmp_path):
    frame = pd.read_csv(credit_sample)
    files = {}
    for name, part in zip(("train", "validation", "test"), (frame[:120], frame[120:160], frame[160:])):
        files[name] = str(tmp_path / f"{name}.csv")
        part.to_csv(files[name], index=False)
    data = load_labelled(DataSpec(source="", data_files=files, label_column="creditability"))
    assert data.origin["splits"] == {"train": 120, "validation": 40, "test": 40}
    assert data.origin["split_method"] == "named splits used as given"
    # a folder of split files works the same way
    folder = load_labelled(DataSpec(source=str(tmp_path), label_column="creditability"))
    assert folder.origin["splits"] == data.origin["splits"]


def test_rows_render_as_text(credit_sample):
    row = {"age": 35, "purpose": "car (new)", "amount": 1200.0, "note": None}
    assert render_row(row, ["age", "purpose", "amount", "note"], None) == \
        "age: 35, purpose: car (new), amount: 1200, note: missing"
    assert render_row(row, ["age", "purpose"], "{age} years old, wants a {purpose}") == "35 years old, wants a car (new)"
    data = load_labelled(_credit(credit_sample, text_template="{purpose}; {credit_amount} DM"))
    first = data.inputs("train", "text")[0]
    assert first.endswith(" DM") and ";" in first


def test_image_folder_labels_and_images(digits_folder):
    data = load_labelled(DataSpec(source=str(digits_folder), validation_size=0.2, test_size=0.2))
    assert data.kind == "image" and data.labels == ["0", "1", "2"]
    images = data.inputs("test", "image")
    assert images[0].size == (32, 32)
    with pytest.raises(DataError, match="holds images but the backbone takes text"):
        data.inputs("test", "text")


def test_pixel_table_becomes_images(tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data[:150] * 16, columns=[f"p{i}" for i in range(64)])
    frame["label"] = digits.target[:150]
    path = tmp_path / "pixels.csv"
    frame.to_csv(path, index=False)
    data = load_labelled(DataSpec(source=str(path), pixel_shape=[8, 8]))
    assert data.kind == "image" and len(data.labels) == 10
    assert data.inputs("train", "image")[0].size == (8, 8)
    with pytest.raises(DataError, match=r"pixel_shape \[28, 28\] needs 784 pixel columns, found 64"):
        load_labelled(DataSpec(source=str(path), pixel_shape=[28, 28]))


# ----------------------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_labelled(DataSpec(source=str(tmp_path / "nope.csv")))


def test_missing_label_column(credit_sample):
    with pytest.raises(DataError, match=r"label column 'target' not found in split 'train'; columns are \["):
        load_labelled(DataSpec(source=str(credit_sample), label_column="target"))


def test_mixed_label_types(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"text": f"t{i}", "label": 1 if i % 2 else "good"} for i in range(20)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(DataError, match="mixes types"):
        load_labelled(DataSpec(source=str(path)))
    csv = tmp_path / "mixed.csv"
    pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["1", "good"] * 10}).to_csv(csv, index=False)
    with pytest.raises(DataError, match="mixes types"):
        load_labelled(DataSpec(source=str(csv)))


def test_missing_label_value_names_the_row(tmp_path):
    path = tmp_path / "gap.csv"
    pd.DataFrame({"text": list("abcdef"), "label": ["x", "y", None, "x", "y", "x"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="row 2: label column 'label' is empty"):
        load_labelled(DataSpec(source=str(path)))


def test_empty_split(credit_sample, tmp_path):
    frame = pd.read_csv(credit_sample)
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame[:0].to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(DataError, match="split 'test' .*is empty"):
        load_labelled(DataSpec(source=str(tmp_path), label_column="creditability"))


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        load_labelled(DataSpec(source=str(tmp_path / "empty.csv")))


def test_unreadable_image_is_named(digits_folder, tmp_path):
    import shutil

    root = tmp_path / "digits"
    shutil.copytree(digits_folder, root)
    bad = root / "1" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"broken\.png.*unreadable image"):
        load_labelled(DataSpec(source=str(root)))


def test_single_class_is_refused(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"text": list("abcd"), "label": ["x"] * 4}).to_csv(path, index=False)
    with pytest.raises(DataError, match="single class"):
        load_labelled(DataSpec(source=str(path)))


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_parquet_and_json_files(credit_sample, tmp_path, suffix):
    frame = pd.read_csv(credit_sample)
    path = tmp_path / f"credit{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    data = load_labelled(_credit(path))
    assert data.labels == ["bad", "good"] and sum(data.origin["splits"].values()) == len(frame)


def test_unlabelled_rows_are_refused(digits_folder, tmp_path):
    from datasets import ClassLabel, Dataset

    frame = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": [0, 1] * 9 + [-1, 1]})
    path = tmp_path / "ds"
    Dataset.from_pandas(frame).cast_column("label", ClassLabel(names=["a", "b"])).to_parquet(str(path) + ".parquet")
    # parquet keeps ClassLabel metadata; the -1 (unlabelled) row is named
    with pytest.raises(DataError, match=r"row 18: label -1 is not one of the 2 classes"):
        load_labelled(DataSpec(source=str(path) + ".parquet"))


def test_label_budget_is_stratified_seeded_and_nested(credit_sample):
    from dataclasses import replace

    full = load_labelled(_credit(credit_sample))
    train_ids = lambda data: list(zip(*(data.splits["train"][c] for c in ("duration_in_month", "credit_amount", "age_in_years"))))  # noqa: E731
    all_rows = set(train_ids(full))
    small = load_labelled(replace(_credit(credit_sample), train_samples_per_class=5))
    large = load_labelled(replace(_credit(credit_sample), train_samples_per_class=20))
    assert small.label_counts("train") == {"bad": 5, "good": 5}
    assert large.label_counts("train") == {"bad": 20, "good": 20}
    assert set(train_ids(small)) <= set(train_ids(large)) <= all_rows  # nested, drawn from the train split
    again = load_labelled(replace(_credit(credit_sample), train_samples_per_class=5))
    assert train_ids(again) == train_ids(small)  # same seed, same rows
    other = load_labelled(replace(_credit(credit_sample), train_samples_per_class=5, seed=7))
    assert train_ids(other) != train_ids(small)
    # validation and test are untouched by the budget
    assert small.origin["splits"]["test"] == full.origin["splits"]["test"]
    assert small.splits["validation"]["credit_amount"] == full.splits["validation"]["credit_amount"]

    half = load_labelled(replace(_credit(credit_sample), train_fraction=0.5))
    counts, full_counts = half.label_counts("train"), full.label_counts("train")
    assert all(abs(counts[k] - full_counts[k] / 2) <= 0.5 for k in counts)  # each class halved: stratified
    assert "label budget of 50% of each class" in half.origin["split_method"]


def test_label_budget_larger_than_a_class_is_refused(credit_sample):
    from dataclasses import replace

    with pytest.raises(DataError, match=r"train_samples_per_class 500 is larger than the \d+ training rows of class 'bad'"):
        load_labelled(replace(_credit(credit_sample), train_samples_per_class=500))


def test_label_budget_draws_from_the_max_train_samples_pool(credit_sample):
    data = load_labelled(_credit(credit_sample, max_samples={"train": 60}, train_samples_per_class=10))
    assert data.label_counts("train") == {"bad": 10, "good": 10}  # the limit makes the pool; the budget stays stratified
