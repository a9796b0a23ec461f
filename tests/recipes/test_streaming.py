"""``streaming: true``: the train split read while training, as a ``datasets`` ``IterableDataset`` (German Credit
rows in three files): each process's share, its seeded order, where a resumed stream starts, what is refused, and a
fine-tune run end to end and resumed."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import train_finetune


@pytest.fixture(scope="module")
def credit_files(tmp_path_factory, german_credit_csv) -> dict[str, str]:
    """German Credit in three files: 600 train, 150 validation and 150 test rows."""
    import pandas as pd

    frame = pd.read_csv(german_credit_csv).sample(frac=0.9, random_state=0)
    folder = tmp_path_factory.mktemp("credit_files")
    files = {"train": frame.iloc[:600], "validation": frame.iloc[600:750], "test": frame.iloc[750:]}
    for split, rows in files.items():
        rows.to_csv(folder / f"{split}.csv", index=False)
    return {split: str(folder / f"{split}.csv") for split in files}


def _streamed(credit_files, **spec):
    from hf_adapt.data import DataSpec
    from hf_adapt.data.stream import load_streamed

    return load_streamed(DataSpec(source="", label_column="creditability", data_files=credit_files, **spec))


def _share(streamed, data, rank=0, world=1, seed=0, buffer=100, label_column="creditability"):
    from hf_adapt.data.stream import RowReader, TrainStream

    reader = RowReader(data, "text", label_column, streamed.source, streamed.probe_rows)
    return TrainStream(streamed, reader, seed, buffer, rank, world)


def _positions_and_texts(share, n):
    return [(position, text) for position, (text, _) in itertools.islice(share, n)]


def test_the_train_split_streams_split_by_process_in_a_seeded_order_from_any_position(credit_files):
    data, streamed = _streamed(credit_files)
    assert data.kind == "table" and data.labels == ["bad", "good"]
    assert data.origin["streamed"] == {"train_source": credit_files["train"], "probe_rows": 600}
    assert data.origin["splits"] == {"train": None, "validation": 150, "test": 150}

    first = _positions_and_texts(_share(streamed, data), 700)  # past the end: the split is read again
    texts = [text for _, text in first]
    assert [p for p, _ in first] == list(range(700))
    assert len(set(texts[:600])) == len(set(data.inputs("train", "text"))), "one pass reads every row once"
    assert texts[600:] != texts[:100], "the second pass is shuffled anew"
    assert _positions_and_texts(_share(streamed, data), 700) == first, "seeded"
    assert [t for _, t in _positions_and_texts(_share(streamed, data, seed=1), 50)] != texts[:50]

    resumed = _share(streamed, data)
    resumed.seek(550)
    assert _positions_and_texts(resumed, 150) == first[550:], "a seek lands where the sequence was"

    shares = [[t for _, t in _positions_and_texts(_share(streamed, data, rank, 2), 300)] for rank in (0, 1)]
    assert not set(shares[0]) & set(shares[1]), "two processes read different rows"
    assert len(set(shares[0]) | set(shares[1])) == len(set(texts[:600]))


def test_each_row_is_read_once_however_often_the_run_evaluates():
    """An evaluation every 20 steps must not re-open the stream: that would read the rows trained on so far
    again, reads growing with max_steps squared over eval_steps."""
    from datasets import IterableDataset
    from torch import nn

    from hf_adapt.data.stream import StreamedTrain, TrainStream, _number
    from hf_adapt.loop import LoopSettings, fit, make_loader
    from hf_adapt.runtime import make_accelerator

    reads = [0]

    def rows():
        for i in range(100_000):
            reads[0] += 1
            yield {"x": float(i % 7), "label": i % 2}

    def task(model, batch):
        logits = model(batch["inputs"])
        return {"loss": nn.functional.cross_entropy(logits, batch["labels"]), "logits": logits}

    stream = IterableDataset.from_generator(rows).map(_number, with_indices=True)
    share = TrainStream(StreamedTrain(stream, "memory", 0), lambda row: (torch.tensor([row["x"]]), row["label"]), 0, 10)
    read = {}
    for eval_steps in (200, 20):
        reads[0] = 0
        loader = make_loader(share, lambda items, train=False: torch.stack(items), 8, train=True, seed=0)
        settings = LoopSettings(num_train_epochs=1, max_steps=200, eval_steps=eval_steps, metric_for_best_model="loss",
                                restore_best=False)
        _, result = fit(make_accelerator("no", 1, "none"), nn.Linear(1, 2), task, loader, None, settings,
                        evaluate_fn=lambda *args: {"loss": 0.0})
        assert result.steps == 200
        read[eval_steps] = reads[0]
    assert read[20] == read[200] < 1700  # 1600 examples trained on, plus the shuffle buffer and prefetch


def test_a_train_row_with_an_unknown_label_is_refused_by_file_row_and_column(credit_files, tmp_path):
    import pandas as pd

    from hf_adapt.errors import DataError

    frame = pd.read_csv(credit_files["train"])
    big = pd.concat([frame, frame], ignore_index=True)
    big.loc[1030, "creditability"] = "maybe"  # after the first 1000 rows
    big.to_csv(tmp_path / "train.csv", index=False)
    data, streamed = _streamed({**credit_files, "train": str(tmp_path / "train.csv")})
    assert data.labels == ["bad", "good"], "the probe's first 1000 rows hold no 'maybe'"
    with pytest.raises(DataError, match=r"train\.csv row 1030: label 'maybe' in column 'creditability' is not one "
                                        r"of the labels \['bad', 'good'\]"):
        list(itertools.islice(_share(streamed, data, buffer=1), 1200))


def test_a_train_row_with_a_fractional_label_is_refused_not_rounded(credit_files, tmp_path):
    import pandas as pd

    from hf_adapt.errors import DataError

    files = {}
    for split in ("train", "validation", "test"):
        frame = pd.read_csv(credit_files[split])
        frame = pd.concat([frame, frame], ignore_index=True) if split == "train" else frame
        frame["grade"] = (frame.index % 3 + 1).astype(float)
        if split == "train":
            frame.loc[1030, "grade"] = 2.7  # after the first 1000 rows; 2.0 would be class "2"
        frame.to_csv(tmp_path / f"{split}.csv", index=False)
        files[split] = str(tmp_path / f"{split}.csv")
    from hf_adapt.data import DataSpec
    from hf_adapt.data.stream import load_streamed

    data, streamed = load_streamed(DataSpec(source="", label_column="grade", data_files=files))
    assert data.labels == ["1", "2", "3"]
    with pytest.raises(DataError, match=r"train\.csv row 1030: label 2\.7 in column 'grade' is not a class"):
        list(itertools.islice(_share(streamed, data, buffer=1, label_column="grade"), 1200))


def test_streamed_rows_become_the_inputs_the_in_memory_path_makes(credit_files, tmp_path):
    """Rendered table rows, and pixel rows reshaped to images: with a shuffle buffer of one row the stream reads
    the file in order, so its inputs are the in-memory path's for the same rows."""
    import numpy as np
    import pandas as pd

    data, streamed = _streamed(credit_files)
    share = _share(streamed, data, buffer=1)
    assert [text for _, text in _positions_and_texts(share, 600)] == data.inputs("train", "text")

    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame(digits.data[:90].astype(int), columns=[f"p{i}" for i in range(64)])
    frame["label"] = digits.target[:90]
    files = {}
    for split, rows in (("train", slice(0, 60)), ("validation", slice(60, 75)), ("test", slice(75, 90))):
        frame.iloc[rows].to_csv(tmp_path / f"{split}.csv", index=False)
        files[split] = str(tmp_path / f"{split}.csv")
    from hf_adapt.data import DataSpec
    from hf_adapt.data.stream import RowReader, TrainStream, load_streamed

    data, streamed = load_streamed(DataSpec(source="", label_column="label", pixel_shape=[8, 8], data_files=files))
    share = TrainStream(streamed, RowReader(data, "image", "label", streamed.source, streamed.probe_rows), 0, 1)
    streamed_images = [image for _, (image, _) in itertools.islice(share, 60)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(streamed_images, data.inputs("train", "image"), strict=True))


@pytest.mark.parametrize(("values", "message"), [
    ({}, "streaming: true needs max_steps"),
    ({"max_steps": 4, "cv_folds": 3}, "cv_folds: 3 does not apply to streaming: true"),
    ({"max_steps": 4, "class_weights": "balanced"}, "class_weights: 'balanced' does not apply"),
    ({"max_steps": 4, "task": "regression"}, "task: 'regression' does not apply"),
    ({"max_steps": 4, "baseline": "logistic_regression"}, "baseline: logistic_regression is fitted on the whole"),
    ({"max_steps": 4, "table_features": "auto"}, "table_features: 'auto' does not apply"),
    ({"streaming": False, "eval_steps": 4}, "eval_steps applies to streaming: true"),
])
def test_settings_that_need_the_whole_train_split_are_refused_by_name(values, message):
    from hf_adapt.config import config_from_dict
    from hf_adapt.errors import ConfigError
    from hf_adapt.recipes.finetune import FinetuneConfig

    with pytest.raises(ConfigError, match=message):
        config_from_dict(FinetuneConfig, {"streaming": True, **values})


def test_a_stream_needs_given_validation_and_test_splits(credit_files):
    from hf_adapt.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cannot carve validation and test from it.*found split\(s\) \['train'\]"):
        _streamed({"train": credit_files["train"]})


def _stream_run(out, tiny_bert, credit_files, **values):
    return train_finetune(out, model_name_or_path=str(tiny_bert), base_model_id="hf-adapt-tests/tiny-bert",
                          data_files=credit_files, streaming=True, max_steps=12, eval_steps=6,
                          bootstrap_resamples=0, logging_steps=2, **values)


def test_finetune_streams_by_max_steps_evaluates_every_eval_steps_and_says_so(tiny_bert, credit_files, tmp_path):
    from huggingface_hub import ModelCard

    out = _stream_run(tmp_path / "out", tiny_bert, credit_files)
    results = json.loads((out / "train_results.json").read_text())
    assert results["steps"] == 12
    assert [(h["epoch"], h["step"]) for h in results["history"]] == [(1, 6), (2, 12)]
    assert results["streamed"]["examples_seen"] == 12 * 16
    assert results["baseline"] is None, "auto: no baseline is fitted on a stream"
    card = ModelCard.load(out / "README.md")
    assert "train streamed (`streaming: true`): 192 training examples seen in 12 optimiser steps" in card.text
    assert json.loads((out / "eval_results.json").read_text())["auroc"] > 0


def test_a_resumed_stream_ends_with_the_weights_of_an_uninterrupted_run(tiny_bert, credit_files, tmp_path):
    reference = _stream_run(tmp_path / "reference", tiny_bert, credit_files, checkpointing_steps=4)
    checkpoints = tmp_path / "reference.checkpoints"
    state = json.loads((checkpoints / "train" / "step-8" / "loop_state.json").read_text())
    assert state["consumed"] == 8 and state["epoch"] == 2, "saved mid-epoch, 8 batches into the stream"
    out = tmp_path / "again"
    shutil.copytree(checkpoints, tmp_path / "again.checkpoints")
    step_8 = tmp_path / "again.checkpoints" / "train" / "step-8"
    _stream_run(out, tiny_bert, credit_files, checkpointing_steps=4, resume_from_checkpoint=str(step_8))
    ours, theirs = load_file(out / "adapter_model.safetensors"), load_file(reference / "adapter_model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    history = [json.loads((o / "train_results.json").read_text())["history"] for o in (out, reference)]
    assert history[0] == history[1]


def _launch_two(tiny_bert, files: dict[str, str], out: Path, *extra: str):
    """``recipes/finetune.py`` streaming on two CPU processes under ``accelerate launch`` (gloo)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               str(repo / "recipes" / "finetune.py"), "--model_name_or_path", str(tiny_bert),
               "--base_model_id", "hf-adapt-tests/tiny-bert", "--data_files", json.dumps(files), "--streaming", "true",
               "--max_steps", "45", "--eval_steps", "15", "--per_device_train_batch_size", "8",
               "--output_dir", str(out), "--report_to", "none", "--bootstrap_resamples", "0", *extra]
    # teardown of gloo groups has hung before: a hard timeout keeps CI from stalling
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=270)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "train_results.json").read_text())


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_two_processes_stream_unequal_shares_for_the_same_steps_and_resume(tiny_bert, credit_files, tmp_path):
    """601 train rows: shares of 301 and 300 rows, each read more than once in 45 steps of 8; the process whose
    share ends first reads it again instead of leaving the other waiting at a collective. Resumed from step 20
    (mid-epoch), both processes continue where they were, to the same weights."""
    import pandas as pd

    train = tmp_path / "train.csv"
    frame = pd.read_csv(credit_files["train"])
    pd.concat([frame, frame.iloc[:1]]).to_csv(train, index=False)
    files = {**credit_files, "train": str(train)}
    reference = tmp_path / "reference"
    results = _launch_two(tiny_bert, files, reference, "--checkpointing_steps", "20", "--checkpoints_total_limit", "3")
    assert results["num_processes"] == 2 and results["steps"] == 45
    assert [h["step"] for h in results["history"]] == [15, 30, 45]
    assert results["streamed"]["examples_seen"] == 45 * 8 * 2

    shutil.copytree(tmp_path / "reference.checkpoints", tmp_path / "again.checkpoints")
    step_20 = tmp_path / "again.checkpoints" / "train" / "step-20"
    resumed = _launch_two(tiny_bert, files, tmp_path / "again", "--checkpointing_steps", "20", "--checkpoints_total_limit", "3",
                          "--resume_from_checkpoint", str(step_20))
    assert resumed["history"] == results["history"]
    ours = load_file(tmp_path / "again" / "adapter_model.safetensors")
    theirs = load_file(reference / "adapter_model.safetensors")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_an_image_folder_streams_its_train_class_folders_dicom_included(tiny_timm_convnet, tmp_path):
    """Real digits as PNGs in train/, validation/ and test/ class folders, and a real CT slice (DICOM, which
    ``imagefolder`` would skip) among the train images: the stream lists the files and opens each when reached."""
    import numpy as np
    from PIL import Image
    from pydicom.data import get_testdata_file
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = tmp_path / "digits"
    for label in range(3):
        rows = np.flatnonzero(digits.target == label)[:30]
        for split, chosen in (("train", rows[:20]), ("validation", rows[20:25]), ("test", rows[25:])):
            folder = root / split / str(label)
            folder.mkdir(parents=True)
            for i in chosen:
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).resize((32, 32)).save(folder / f"{i}.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "train" / "0" / "ct.dcm")
    from hf_adapt.data import DataSpec
    from hf_adapt.data.stream import RowReader, TrainStream, load_streamed

    data, streamed = load_streamed(DataSpec(source=str(root), label_column="label"))
    assert data.kind == "image" and data.labels == ["0", "1", "2"] and streamed.probe_rows == 61
    share = TrainStream(streamed, RowReader(data, "image", "label", streamed.source, 61), 0, 100)
    images = [image for _, (image, _) in itertools.islice(share, 61)]
    assert sorted({image.size for image in images}) == [(32, 32), (128, 128)], "the CT slice is read, not skipped"
    from hf_adapt.data.files import image_listing
    from hf_adapt.data.stream import ROW

    listing = image_listing(root / "train")  # a row number in a message is the file's place in the listing
    rows = list(itertools.islice(streamed.rows, 61))
    assert sorted(row[ROW] for row in rows) == list(range(61))
    assert all(row["image"]["path"] == listing[row[ROW]][0] for row in rows)

    out = train_finetune(tmp_path / "img", model_name_or_path=str(tiny_timm_convnet), data=str(root),
                         label_column="label", reset_head=True, image_size=32, streaming=True, max_steps=6,
                         per_device_train_batch_size=8, metric_for_best_model="accuracy", bootstrap_resamples=0,
                         adapter={"peft_type": "LORA", "r": 4, "lora_alpha": 8})
    results = json.loads((out / "train_results.json").read_text())
    assert results["steps"] == 6 and results["streamed"]["examples_seen"] == 48
