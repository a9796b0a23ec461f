"""Labels and splits: label names and ids, carved splits (stratified, or grouped so no patient is in two), label
budgets, and grouped cross-validation folds."""

from __future__ import annotations

from typing import Any

from hf_adapt.data.files import SPLIT_NAMES
from hf_adapt.data.rows import format_value, is_missing
from hf_adapt.data.spec import DataSpec
from hf_adapt.errors import DataError


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def has_classes(labels) -> bool:
    """Whether ``labels`` are class ids (stratify on them) rather than a numeric regression target or a multi-label
    row's 0/1 vector (both split at random)."""
    import numpy as np

    labels = np.asarray(labels)
    return labels.ndim == 1 and labels.dtype.kind in "iub"


def label_names(dataset_dict, column: str) -> list[str]:
    """Sorted label names over all splits; refuses missing, mixed-type or continuous labels."""
    first = next(iter(dataset_dict.values()))
    feature = first.features.get(column)
    if feature is not None and type(feature).__name__ == "ClassLabel":
        for split, dataset in dataset_dict.items():
            ids = dataset[column]
            bad = [i for i, v in enumerate(ids) if not 0 <= v < len(feature.names)]
            if bad:
                raise DataError(f"split {split!r} row {bad[0]}: label {ids[bad[0]]} is not one of the "
                                f"{len(feature.names)} classes ({len(bad)} such rows; -1 marks unlabelled rows)")
        return list(feature.names)
    seen: dict[Any, tuple[str, int]] = {}
    for split, dataset in dataset_dict.items():
        for row, value in enumerate(dataset[column]):
            if is_missing(value):
                raise DataError(f"split {split!r} row {row}: label column {column!r} is empty")
            seen.setdefault(value, (split, row))
    kinds = {("number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__) for v in seen}
    strings = [v for v in seen if isinstance(v, str)]
    if len(kinds) == 1 and strings and 0 < sum(map(_looks_numeric, strings)) < len(strings):
        kinds = {"number", "str"}
    if len(kinds) > 1:
        examples = {}
        for value, where in seen.items():
            kind = "number" if isinstance(value, (int, float)) or (isinstance(value, str) and _looks_numeric(value)) else type(value).__name__
            examples.setdefault(kind, (value, where))
        described = ", ".join(f"{k} {v!r} (split {w[0]!r} row {w[1]})" for k, (v, w) in examples.items())
        raise DataError(f"label column {column!r} mixes types: {described}")
    values = list(seen)
    if any(isinstance(v, float) for v in values):
        if not all(float(v).is_integer() for v in values):
            raise DataError(f"label column {column!r} holds continuous values; classification needs classes")
        values = sorted({int(v) for v in values})
    if len(values) < 2:
        raise DataError(f"label column {column!r} has a single class {values}; need at least 2")
    return [str(v) for v in sorted(values)]


def label_key(value) -> str:
    """A label value as its name in :func:`label_names` (2.0 and 2 are class "2")."""
    return str(int(value)) if isinstance(value, float) else str(value)


def encode_labels(dataset, column: str, names: list[str]):
    index = {name: i for i, name in enumerate(names)}

    def encode(batch):
        return {"label": [index[label_key(value)] for value in batch[column]]}

    if type(dataset.features.get(column)).__name__ == "ClassLabel":
        return dataset.rename_column(column, "label") if column != "label" else dataset
    encoded = dataset.map(encode, batched=True, remove_columns=[column] if column != "label" else None)
    return encoded.cast_column("label", _int_feature())


def _int_feature():
    from datasets import Value

    return Value("int64")


# ----------------------------------------------------------------------------- splits


def _group_ids(values) -> list[str]:
    return [format_value(v) for v in values]


def _group_noun(column: str) -> str:
    """'patient_id' -> 'patient': how messages name one group."""
    for suffix in ("_id", "_ids", "id"):
        if column.lower().endswith(suffix) and len(column) > len(suffix):
            return column[: -len(suffix)].rstrip("_ ")
    return f"{column} group"


def _grouped_split(dataset, fraction: float, seed: int, name: str, column: str):
    """One fold of a seeded, shuffled ``StratifiedGroupKFold`` held out (share ~ 1/round(1/fraction)).

    Falls back to ``GroupShuffleSplit`` (groups kept whole, labels not stratified) only when
    stratification is impossible: a class with a single row, or fewer groups than folds.
    """
    import warnings

    import numpy as np
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    labels = np.asarray(dataset["label"])
    groups = np.asarray(_group_ids(dataset[column]))
    indices = np.arange(len(labels))
    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError(f"cannot carve a {name} split grouped by {column!r}: all {len(labels)} rows belong to "
                        f"one {_group_noun(column)} ({groups[0]!r})")
    n_splits = max(2, round(1 / fraction))
    counts = np.bincount(labels) if has_classes(labels) else np.zeros(1)
    if counts[counts > 0].size and counts[counts > 0].min() >= 2 and n_groups >= n_splits:
        with warnings.catch_warnings():  # "least populated class has only n members": still the best split
            warnings.simplefilter("ignore", UserWarning)
            folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
            keep, held = next(folds.split(indices, labels, groups))
        how = f"1 of {n_splits} label-stratified group folds"
    else:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        keep, held = next(splitter.split(indices, labels, groups))
        how = (f"{fraction:.0%} of the {column} groups (not stratified: "
               + ("too few rows or groups per class)" if has_classes(labels) else "a numeric target)"))
    if len(keep) == 0 or len(held) == 0:
        raise DataError(f"cannot carve a {name} split grouped by {column!r} out of {n_groups} groups")
    return dataset.select(sorted(keep)), dataset.select(sorted(held)), how


def _check_disjoint_groups(splits: dict[str, Any], column: str) -> None:
    """Named splits must not share a group: a patient in train and test leaks into the score."""
    where: dict[str, list[str]] = {}
    for split, dataset in splits.items():
        for gid in dict.fromkeys(_group_ids(dataset[column])):
            where.setdefault(gid, []).append(split)
    shared = {gid: names for gid, names in where.items() if len(names) > 1}
    if shared:
        gid, names = next(iter(shared.items()))
        raise DataError(
            f"group column {column!r}: {gid!r} appears in splits {names}; {len(shared)} "
            f"{column} value(s) are in more than one split, so the splits are not independent. "
            f"Give every {_group_noun(column)} one split, or give only a train split and let the splits be carved"
        )


def group_folds(labels, groups, k: int, seed: int, names: list[str] | None = None):
    """``k`` seeded, shuffled cross-validation folds as ``[(train_idx, held_idx), ...]`` numpy arrays.

    ``StratifiedKFold`` over ``labels`` when ``groups`` is None; ``StratifiedGroupKFold`` otherwise,
    so no group (patient) is in a fold's train and held-out rows at once. ``names`` maps integer
    labels to class names for messages.

    Raises:
        DataError: ``k`` < 2, or a class with fewer rows (or groups) than ``k``.
    """
    import warnings

    import numpy as np
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    labels = np.asarray(labels)
    if k < 2:
        raise DataError(f"cross-validation needs at least 2 folds, got {k}")
    if not has_classes(labels):  # a numeric target: plain (grouped) k-fold, shuffled and seeded
        if len(labels) < k or (groups is not None and len(np.unique(_group_ids(groups))) < k):
            raise DataError(f"{k}-fold cross-validation needs at least {k} rows (and groups); lower cv_folds")
        indices = np.arange(len(labels))
        if groups is None:
            return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(indices))
        return list(GroupKFold(n_splits=k, shuffle=True, random_state=seed).split(indices, groups=_group_ids(groups)))
    def label_name(value) -> str:
        value = value.item() if hasattr(value, "item") else value
        return repr(names[value]) if names else repr(value)

    indices = np.arange(len(labels))
    if groups is None:
        values, counts = np.unique(labels, return_counts=True)
        for value, count in zip(values, counts):
            if count < k:
                raise DataError(f"{k}-fold cross-validation needs at least {k} rows of every class; class "
                                f"{label_name(value)} has {count}. Lower cv_folds or add rows")
        splits = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(indices, labels)
        return [(train, held) for train, held in splits]
    groups = np.asarray(_group_ids(groups))
    if len(groups) != len(labels):
        raise DataError(f"group_folds: {len(groups)} group ids for {len(labels)} labels")
    if len(np.unique(groups)) < k:
        raise DataError(f"{k}-fold cross-validation needs at least {k} groups; the data has "
                        f"{len(np.unique(groups))}. Lower cv_folds")
    for value in np.unique(labels):
        count = len(np.unique(groups[labels == value]))
        if count < k:
            raise DataError(f"{k}-fold grouped cross-validation needs every class in at least {k} groups; class "
                            f"{label_name(value)} is in {count}. Lower cv_folds or add groups")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        splits = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed).split(indices, labels, groups)
        return [(train, held) for train, held in splits]


def _stratified_split(dataset, fraction: float, seed: int, name: str):
    import numpy as np
    from sklearn.model_selection import train_test_split

    labels = np.asarray(dataset["label"])
    indices = np.arange(len(labels))
    stratify = None  # a numeric (regression) target is split at random
    if has_classes(labels):
        counts = np.bincount(labels)
        stratify = labels if counts[counts > 0].min() >= 2 else None
    try:
        keep, held = train_test_split(indices, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as err:
        raise DataError(f"cannot carve a {fraction:.0%} {name} split out of {len(labels)} rows: {err}") from err
    return dataset.select(sorted(keep)), dataset.select(sorted(held))


def label_budget(labels, fraction: float | None, per_class: int | None, seed: int,
                 names: list[str] | None = None):
    """Row indices of a stratified, seeded label budget: ``per_class`` rows of every class, or
    ``fraction`` of each class's rows (at least one).

    Each class's rows are drawn in one seeded order and the budget takes its head, so smaller
    budgets are subsets of larger ones: a study's label-budget curve compares nested sets.
    """
    import numpy as np

    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rows[rng.permutation(len(rows))]
        if per_class is not None:
            if per_class > len(rows):
                name = names[label] if names else label
                raise DataError(f"train_samples_per_class {per_class} is larger than the {len(rows)} training "
                                f"rows of class {name!r}; lower it, or use train_fraction")
            take = per_class
        else:
            take = max(1, round(fraction * len(rows)))
        chosen.append(rows[:take])
    return np.sort(np.concatenate(chosen))


def make_splits(dataset_dict, spec: DataSpec) -> tuple[dict[str, Any], str]:
    """Named splits as given; missing test/validation carved from train (stratified, seeded).

    With ``spec.group_column`` carved splits keep each group (patient) whole
    (``StratifiedGroupKFold``, one fold held out) and given splits must not share a group.
    Label budgets and ``max_samples`` then pick rows, not groups, inside the train split: they
    cannot mix groups across splits.
    """
    splits = {SPLIT_NAMES.get(k, k): v for k, v in dataset_dict.items()}
    if "train" not in splits:
        raise DataError(f"no train split; found {sorted(splits)}. Name the splits train, validation (or valid, val, "
                        "dev) and test")
    how = []
    column = spec.group_column
    total = len(splits["train"])
    if column and len(splits) > 1:
        _check_disjoint_groups(splits, column)

    def carve(fraction: float, name: str, share: float) -> None:
        if column:
            splits["train"], splits[name], method = _grouped_split(splits["train"], fraction, spec.seed, name, column)
            how.append(f"{name}: {method}, {len(splits[name]) / total:.0%} of the rows (seed {spec.seed})")
        else:
            splits["train"], splits[name] = _stratified_split(splits["train"], fraction, spec.seed, name)
            way = "stratified" if has_classes(splits[name]["label"]) else "random"
            how.append(f"{name}: {way} {share:.0%} of the data (seed {spec.seed})")

    if "test" not in splits:
        carve(spec.test_size, "test", spec.test_size)
    if "validation" not in splits:
        share = spec.validation_size / (1 - spec.test_size) if len(how) else spec.validation_size
        carve(share, "validation", spec.validation_size)
    if column:
        how.append(f"grouped by {column}: no {_group_noun(column)} in two splits")
    splits = {k: splits[k] for k in ("train", "validation", "test")}
    limit = spec.max_samples.get("train")  # first: the pool a label budget draws from, so budgets stay stratified
    if limit is not None and len(splits["train"]) > limit:
        splits["train"] = splits["train"].shuffle(seed=spec.seed).select(range(limit))
    if spec.train_fraction is not None or spec.train_samples_per_class is not None:
        rows = label_budget(splits["train"]["label"], spec.train_fraction, spec.train_samples_per_class, spec.seed,
                            spec.class_names)
        splits["train"] = splits["train"].select(rows)
        budget = (f"{spec.train_samples_per_class} per class" if spec.train_samples_per_class is not None
                  else f"{spec.train_fraction:.0%} of each class")
        how.append(f"train: label budget of {budget} (stratified, seed {spec.seed})")
    for name, dataset in splits.items():
        limit = spec.max_samples.get(name)
        if limit is not None and len(dataset) > limit:
            splits[name] = dataset.shuffle(seed=spec.seed).select(range(limit))
        if len(splits[name]) == 0:
            raise DataError(f"split {name!r} is empty")
    return splits, "; ".join(how) or "named splits used as given"
