"""Experiences from config: each a dataset, or a class subset or row filter of one, with its own splits.

An entry is a dict::

    {name: digits-0-1, classes: [0, 1]}                 # class subset of the run's data
    {name: store-b, where: {product: [B001, B002]}}      # rows whose column takes one of these values
    {name: scanner-2, data: path/to/other.csv}           # its own source (any data field of the recipe)

With ``task: multi_label``, ``classes`` names the labels an experience annotates (new findings read on
the rows it keeps): its rows are not filtered by them, and a row's other labels are not annotated there
(neither trained on nor scored). Without ``classes`` it annotates every label of its data.

Rows are split once per source (stratified, seeded), and experiences cut from the same
source take their rows from those splits, so no test row of one experience trains another.
Label ids in the run's label map are given in order of first appearance, so the classes
learnt so far always form a prefix of the head.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hf_adapt.continual.base import Experience
from hf_adapt.errors import ConfigError, DataError

SCENARIOS = ("class", "domain", "task")
# data fields an experience may set for its own source (those of FinetuneConfig)
DATA_FIELDS = ("data", "data_files", "data_kwargs", "data_subset", "data_revision", "label_column", "label_columns",
               "label_separator", "text_column", "image_column", "feature_columns", "text_template", "pixel_shape",
               "max_train_samples", "max_eval_samples", "train_fraction", "train_samples_per_class")
# what reading an experience's rows depends on: recorded with it, so a later version re-reads the same rows
SPEC_FIELDS = (*DATA_FIELDS, "validation_size", "test_size", "seed")
KEYS = ("name", "classes", "where", *SPEC_FIELDS)


def check_entries(entries: list[Any]) -> None:
    """Shape checks that need no data: called from the config, so a bad entry fails before anything loads."""
    if not isinstance(entries, list) or not entries:
        raise ConfigError("experiences: give a list of at least one experience, e.g. "
                          "[{name: a, classes: [0, 1]}, {name: b, classes: [2, 3]}]")
    names = []
    for i, entry in enumerate(entries):
        where = f"experiences[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where} must be a dict with a name, got {entry!r}")
        unknown = sorted(set(entry) - set(KEYS))
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {list(KEYS)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where} needs a name (a non-empty string)")
        if name in names:
            raise ConfigError(f"{where}: experience name {name!r} is used twice")
        names.append(name)
        if "classes" in entry and (not isinstance(entry["classes"], list) or not entry["classes"]):
            raise ConfigError(f"experience {name!r}: classes must be a non-empty list of labels")
        filters = entry.get("where", {})
        if not isinstance(filters, dict) or any(not isinstance(v, list) or not v for v in filters.values()):
            raise ConfigError(f"experience {name!r}: where must map column names to non-empty lists of values, "
                              f"e.g. {{product: [B001, B002]}}")


def load_experiences(cfg, entries: list[dict[str, Any]], label_names: list[str], first_task: int,
                     trained_at: int | None) -> list[Experience]:
    """Load the data of ``entries`` and cut the experiences from it.

    ``label_names`` is the run's label map so far; it is extended in place with labels seen for
    the first time. ``trained_at`` is the matrix row of the first entry (entries follow one per
    row), or None for already-learnt experiences (a parent's: row 0).
    """
    from hf_adapt.data import DataSpec, load_labelled

    loaded: dict[str, Any] = {}
    experiences = []
    for i, entry in enumerate(entries):
        name = entry["name"]
        overrides = {k: entry[k] for k in SPEC_FIELDS if k in entry}
        try:
            resolved = dataclasses.replace(cfg, **overrides)
        except ConfigError as err:
            raise ConfigError(f"experience {name!r}: {err}") from err
        spec = DataSpec.from_config(resolved)
        key = repr(spec)
        if key not in loaded:
            try:
                loaded[key] = load_labelled(spec)
            except DataError as err:
                raise DataError(f"experience {name!r}: {err}") from err
        data = loaded[key]
        splits = _cut(name, data, entry)
        multi_label = data.task == "multi_label"
        present = (_annotated(name, data, entry) if multi_label
                   else sorted({label for split in splits.values() for label in split["label"]}))
        for label in present:
            if data.labels[label] not in label_names:
                label_names.append(data.labels[label])
        remap = {label: label_names.index(data.labels[label]) for label in present}
        if multi_label:  # each row's positives among the labels this experience annotates
            labels = {s: [sorted(remap[j] for j, flag in enumerate(row) if flag and j in remap) for row in split["label"]]
                      for s, split in splits.items()}
        else:
            labels = {s: [remap[x] for x in split["label"]] for s, split in splits.items()}
        experiences.append(Experience(
            name=name, task=first_task + i, classes=sorted(remap.values()), labels=labels,
            splits=splits, data=data, trained_at=0 if trained_at is None else trained_at + i,
            description={"source": str(data.origin["source"]), "where": entry.get("where"),
                         "rows": {s: len(split) for s, split in splits.items()},
                         "data_config": {"classes": entry.get("classes"), "where": entry.get("where"),
                                         **{k: getattr(resolved, k) for k in SPEC_FIELDS}}},
        ))
    return experiences


def _class_ids(name: str, data, entry: dict[str, Any]) -> list[int] | None:
    """The ids in its data of an experience's ``classes`` (None when it names none); an unknown one is refused."""
    if not entry.get("classes"):
        return None
    wanted = [str(c) for c in entry["classes"]]
    unknown = [c for c in wanted if c not in data.labels]
    if unknown:
        raise DataError(f"experience {name!r}: classes {unknown} are not labels of its data; labels are {data.labels}")
    return sorted(data.labels.index(c) for c in wanted)


def _annotated(name: str, data, entry: dict[str, Any]) -> list[int]:
    """A multi-label experience's labels (ids in its data): its ``classes``, else every label of its data. Its rows
    are annotated for these alone; a row's other labels are neither learnt nor scored in this experience."""
    ids = _class_ids(name, data, entry)
    return list(range(len(data.labels))) if ids is None else ids


def _cut(name: str, data, entry: dict[str, Any]) -> dict[str, Any]:
    splits = dict(data.splits)
    ids = None if data.task == "multi_label" else _class_ids(name, data, entry)  # multi-label: classes pick labels
    if ids is not None:
        keep = set(ids)
        splits = {s: d.filter(lambda row: row["label"] in keep) for s, d in splits.items()}
    for column, values in (entry.get("where") or {}).items():
        if column not in data.splits["train"].column_names:
            raise DataError(f"experience {name!r}: where names column {column!r}, which the data lacks; "
                            f"columns are {data.splits['train'].column_names}")
        allowed = {str(v) for v in values}
        splits = {s: d.filter(lambda row, c=column, ok=allowed: str(row[c]) in ok) for s, d in splits.items()}
    for split, rows in splits.items():
        if len(rows) == 0:
            raise DataError(f"experience {name!r} has no {split} rows after its classes/where filter")
    return splits


SOURCE_FIELDS = ("data", "data_files", "data_subset", "data_revision", "data_kwargs")
SPLIT_FIELDS = ("seed", "validation_size", "test_size", "max_eval_samples")


def check_splits(experiences: list[Experience]) -> None:
    """Experiences cut from one source must split it alike, or one's test rows could train another
    (a parent's experiences are re-read with the parent's own split settings)."""
    first: dict[str, Experience] = {}
    for e in experiences:
        config = e.description["data_config"]
        key = repr([config.get(k) for k in SOURCE_FIELDS])
        other = first.setdefault(key, e)
        differ = [k for k in SPLIT_FIELDS if config.get(k) != other.description["data_config"].get(k)]
        if differ:
            raise ConfigError(f"experiences {other.name!r} and {e.name!r} read the same data with different "
                              f"{', '.join(differ)}; rows one tests on could train the other. Use the same "
                              f"{', '.join(differ)} (an update: the parent's, "
                              f"{ {k: other.description['data_config'].get(k) for k in differ} })")


def check_scenario(scenario: str, experiences: list[Experience], label_names: list[str], parent_labels: list[str] | None) -> None:
    """Refuse a stream the scenario cannot mean."""
    if scenario == "domain":
        reference = parent_labels or [label_names[c] for c in experiences[0].classes]
        origin = "the parent model" if parent_labels else f"experience {experiences[0].name!r}"
        for e in experiences:
            extra = [label_names[c] for c in e.classes if label_names[c] not in reference]
            if extra:
                shared = [label_names[c] for c in e.classes if label_names[c] in reference]
                how = "disjoint from" if not shared else "not all in"
                raise ConfigError(f"domain-incremental experiences share one label space, but experience {e.name!r} has "
                                  f"labels {extra} {how} those of {origin} ({reference}); use scenario: class for new labels")
    if parent_labels is not None and label_names[: len(parent_labels)] != parent_labels:
        raise ConfigError(f"the parent's label map {parent_labels} conflicts with this run's {label_names}")
