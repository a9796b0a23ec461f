"""Train data larger than memory (``streaming: true``): the train split is read while the model trains, as a
``datasets`` ``IterableDataset``, each process its own share of it; validation and test load whole.

The first :data:`PROBE_ROWS` train rows are read once, before training, so the data's kind (table, text, image) is
detected and its rows checked as :func:`~hf_adapt.data.load_labelled` checks in-memory data; every later row is
checked when training reaches it, and a bad one stops the run naming the file, its row and the column. The label
names come from the validation and test splits and those first rows: a train row with any other label is refused.

Order: a seeded shuffle buffer over the process's share, reshuffled (seed + pass) on each pass, the share read again
and again until ``max_steps``, so every process trains the same number of steps however unequal the shares. The
position is a count of examples, so a resumed run skips to where the saved one stopped.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from hf_adapt.data.files import held_out_folders, image_listing, load_raw, stream_formats, stream_sources
from hf_adapt.data.labelled import LabelledData, load_labelled, row_input
from hf_adapt.data.rows import is_missing
from hf_adapt.data.spec import DataSpec
from hf_adapt.data.splits import label_key
from hf_adapt.errors import ConfigError, DataError

PROBE_ROWS = 1000  # the first train rows read whole before training: the data's kind, its checks, label names
ROW = "__hf_adapt_row__"  # each streamed row's 0-based number in the train split, for messages


@dataclass
class StreamedTrain:
    """The train split as a stream, and what messages and the card say about it."""

    rows: Any  # datasets.IterableDataset of the train rows, each with ROW
    source: str  # the train file or folder
    probe_rows: int  # the first rows read before training


def load_streamed(spec: DataSpec) -> tuple[LabelledData, StreamedTrain]:
    """The validation and test splits loaded whole and checked, with the first train rows standing in for the
    train split in ``LabelledData`` (``origin["streamed"]`` says so), and the train split as a stream."""
    from datasets import Dataset, DatasetDict, Features, IterableDataset, Value
    from datasets import Image as ImageFeature

    train, held_spec = stream_sources(spec)
    if isinstance(train, dict):  # a table file
        from datasets import load_dataset

        fmt, kwargs = stream_formats(train, spec)
        rows = load_dataset(fmt, data_files=train, split="train", streaming=True, **kwargs)
        rows = rows.map(_number, with_indices=True)  # one file, one shard: the index is the file's row
        held, source = load_raw(held_spec), train["train"]
    else:  # class folders: the files are listed, and read one at a time
        listed = image_listing(train)
        if not listed:
            raise DataError(f"split 'train' is empty: {train} holds no image files in class subfolders")
        features = Features({"image": ImageFeature(decode=False), "label": Value("string"), ROW: Value("int64")})
        # a list in gen_kwargs is one shard per file (so a shuffle permutes all the files), and an index from map
        # would count within a shard: each row carries its position in the listing instead
        numbered = [(position, path, label) for position, (path, label) in enumerate(listed)]
        rows = IterableDataset.from_generator(_listed_images, gen_kwargs={"listed": numbered}, features=features)
        held, source = held_out_folders(Path(held_spec.source), spec), str(train)
    try:
        probe = list(itertools.islice(rows, PROBE_ROWS))
    except Exception as err:  # datasets/pyarrow raise many kinds
        raise DataError(f"could not read train file {source}: {type(err).__name__}: {err}") from err
    if not probe:
        raise DataError(f"split 'train' is empty: {source} holds no rows")
    columns = Features({k: v for k, v in rows.features.items() if k != ROW}) if rows.features else None
    raw = {"train": Dataset.from_list([{k: v for k, v in row.items() if k != ROW} for row in probe], features=columns),
           **{split: _label_text(ds, spec.label_column) for split, ds in held.items()}}
    data = load_labelled(replace(spec, streamed=True), raw=DatasetDict(raw))
    if data.kind == "image" and data.input_column is not None and isinstance(train, dict):
        raise ConfigError("streaming: true reads images from class folders (train/, validation/, test/); a manifest "
                          "of image paths does not stream in this version: train without streaming, or lay the "
                          "images out in class folders")
    data.origin["splits"]["train"] = None  # not known until read
    data.origin["split_method"] = f"given: train streamed from {source}, validation and test loaded whole"
    data.origin["streamed"] = {"train_source": source, "probe_rows": len(probe)}
    counts = data.origin.get("label_counts")
    if counts and "train" in counts:  # of the first rows only
        counts[f"first {len(probe)} train rows"] = counts.pop("train")
    return data, StreamedTrain(rows, source, len(probe))


def _listed_images(listed: list[tuple[int, str, str]]):
    for position, path, label in listed:
        yield {"image": {"bytes": None, "path": path}, "label": label, ROW: position}


def _number(row: dict[str, Any], index: int) -> dict[str, int]:
    return {ROW: index}


def _label_text(dataset, column: str):
    """A split whose label column is a ``ClassLabel`` (an image folder) with the class names instead of ids, as the
    streamed rows carry them."""
    from datasets import Features, Value

    feature = dataset.features.get(column)
    if type(feature).__name__ != "ClassLabel":
        return dataset
    names = feature.names
    return dataset.cast_column(column, Value("int64")).map(
        lambda batch: {column: [names[i] for i in batch[column]]}, batched=True,
        features=Features({**dataset.features, column: Value("string")}))


class RowReader:
    """A streamed train row as ``(model input, label id)``, read as the in-memory path reads rows."""

    def __init__(self, data: LabelledData, input_kind: str, label_column: str, source: str, probe_rows: int):
        self.data, self.input_kind, self.label_column, self.source = data, input_kind, label_column, source
        self.index = {name: i for i, name in enumerate(data.labels)}
        self.probe_rows = probe_rows

    def __call__(self, row: dict[str, Any]) -> tuple[Any, int]:
        where = f"train file {self.source} row {row[ROW]}"
        value = row.get(self.label_column)
        if is_missing(value):
            raise DataError(f"{where}: label column {self.label_column!r} is empty")
        if isinstance(value, float) and not value.is_integer():
            raise DataError(f"{where}: label {value!r} in column {self.label_column!r} is not a class (a whole "
                            "number or a name); a number to predict is task: regression, which does not stream")
        label = self.index.get(label_key(value))
        if label is None:
            raise DataError(f"{where}: label {value!r} in column {self.label_column!r} is not one of the labels "
                            f"{self.data.labels} (those of the validation and test splits and the first "
                            f"{self.probe_rows} train rows); the model has no output for it: add rows of it to the "
                            "validation split, or drop these rows")
        return row_input(row, self.input_kind, self.data, where), label


class TrainStream(torch.utils.data.IterableDataset):
    """One process's share of the train split as ``(position, (input, label))``, without end: a seeded shuffle
    buffer over the share, reshuffled on each pass. :meth:`seek` sets where the next iteration starts."""

    def __init__(self, streamed: StreamedTrain, reader: RowReader, seed: int, buffer_size: int, rank: int = 0,
                 world_size: int = 1):
        from datasets.distributed import split_dataset_by_node

        self.rows = split_dataset_by_node(streamed.rows, rank, world_size) if world_size > 1 else streamed.rows
        self.reader, self.seed, self.buffer_size = reader, seed, buffer_size
        self.where = f"{streamed.source}: process {rank} of {world_size}"
        self.start = 0

    def seek(self, examples: int) -> None:
        """Start the next iteration after ``examples`` examples of the sequence."""
        self.start = examples

    def __iter__(self):
        skip, position = self.start, self.start
        for epoch in itertools.count():
            rows = self.rows.shuffle(seed=self.seed, buffer_size=self.buffer_size)
            rows.set_epoch(epoch)
            read = 0
            for row in rows:
                read += 1
                if skip:
                    skip -= 1
                    continue
                yield position, self.reader(row)
                position += 1
            if not read:
                raise DataError(f"{self.where}: this process's share of the train split is empty; give more rows "
                                "than processes")
