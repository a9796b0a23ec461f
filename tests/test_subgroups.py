"""Subgroup metrics on real German Credit predictions, checked against scikit-learn on each subset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_adapt.errors import ConfigError
from hf_adapt.subgroups import group_values, limitation_sentences, subgroup_report

LABELS = ["bad", "good"]
AGE_BINS = [25, 35, 50]


@pytest.fixture(scope="module")
def credit(german_credit_csv):
    """Held-out rows of German Credit with a logistic regression's predictions from two numeric columns."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    frame = pd.read_csv(german_credit_csv)
    y = frame["creditability"].map(LABELS.index).to_numpy()
    x = frame[["duration_in_month", "credit_amount"]].to_numpy(dtype=float)
    train, test = train_test_split(np.arange(len(frame)), test_size=0.4, stratify=y, random_state=0)
    model = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    probs = model.predict_proba(x[test])
    return frame.iloc[test].reset_index(drop=True), y[test], probs.argmax(axis=1), probs


def _report(credit):
    rows, y_true, y_pred, probs = credit
    groups = {
        "age_in_years": group_values(rows["age_in_years"].tolist(), AGE_BINS, "age_in_years"),
        "personal_status_and_sex": group_values(rows["personal_status_and_sex"].tolist(), None,
                                                "personal_status_and_sex"),
    }
    return groups, subgroup_report(y_true, y_pred, probs, groups, LABELS, "good", bins={"age_in_years": AGE_BINS})


def test_group_values_bands_categories_and_missing():
    ages = [18, 24.5, 25, 34, 35, 49.9, 50, 75, None, float("nan")]
    assert group_values(ages, AGE_BINS, "age") == [
        "<25", "<25", "25 to <35", "25 to <35", "35 to <50", "35 to <50", ">=50", ">=50", "missing", "missing"
    ]
    assert group_values(["a", None, "", 3], None, "site") == ["a", "missing", "missing", "3"]
    assert group_values([1.0, 2.0, 2.0], None, "rooms") == ["1", "2", "2"]  # few distinct numbers: by value


def test_group_values_refuses_what_it_cannot_group_sensibly(german_credit_csv):
    import pandas as pd

    ages = pd.read_csv(german_credit_csv)["age_in_years"].tolist()
    with pytest.raises(ConfigError, match=r"'age_in_years' is numeric with \d+ distinct values.*sensitive_bins"):
        group_values(ages, None, "age_in_years")
    with pytest.raises(ConfigError, match="increasing"):
        group_values(ages, [50, 35], "age_in_years")
    with pytest.raises(ConfigError, match="not all numbers"):
        group_values(["male", "female"], [1], "sex")


def test_binary_report_matches_sklearn_on_each_group(credit):
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference
    from sklearn.metrics import accuracy_score, recall_score, roc_auc_score

    rows, y_true, y_pred, probs = credit
    groups, report = _report(credit)
    json.dumps(report, allow_nan=False)  # JSON-ready: no NaN, only plain types
    age = report["columns"]["age_in_years"]
    assert report["positive_label"] == "good" and report["n"] == len(y_true)
    assert list(age["groups"]) == ["<25", "25 to <35", "35 to <50", ">=50"]
    assert age["bins"] == AGE_BINS and age["overall"]["n"] == len(y_true)

    for column, names in groups.items():
        col = report["columns"][column]
        assert sum(row["n"] for row in col["groups"].values()) == len(y_true)
        tprs, judged = [], np.zeros(len(y_true), dtype=bool)
        for group, row in col["groups"].items():
            mask = np.array(names) == group
            assert row["n"] == mask.sum() and row["small"] == (mask.sum() < 30)
            assert row["accuracy"] == pytest.approx(accuracy_score(y_true[mask], y_pred[mask]))
            assert row["true_positive_rate"] == pytest.approx(recall_score(y_true[mask], y_pred[mask], pos_label=1))
            assert row["selection_rate"] == pytest.approx(np.mean(y_pred[mask] == 1))
            assert row["auroc"] == pytest.approx(roc_auc_score(y_true[mask], probs[mask, 1]))
            if not row["small"]:  # gaps compare only groups of at least 30 rows
                tprs.append(recall_score(y_true[mask], y_pred[mask], pos_label=1))
                judged |= mask
        gaps = col["gaps"]
        assert gaps["equal_opportunity_difference"] == pytest.approx(max(tprs) - min(tprs))
        # every group holds both classes here, so fairlearn's own functions must agree on the judged groups
        kept = np.array(names)[judged]
        assert gaps["demographic_parity_difference"] == pytest.approx(
            demographic_parity_difference(y_true[judged], y_pred[judged], sensitive_features=kept))
        assert gaps["equalized_odds_difference"] == pytest.approx(
            equalized_odds_difference(y_true[judged], y_pred[judged], sensitive_features=kept))


def test_positive_label_flips_the_rates(credit):
    rows, y_true, y_pred, probs = credit
    groups = {"age_in_years": group_values(rows["age_in_years"].tolist(), AGE_BINS, "age_in_years")}
    bad = subgroup_report(y_true, y_pred, probs, groups, LABELS, "bad")["columns"]["age_in_years"]
    mask = np.array(groups["age_in_years"]) == "<25"
    assert bad["groups"]["<25"]["true_positive_rate"] == pytest.approx(np.mean(y_pred[mask & (y_true == 0)] == 0))
    # AUROC is symmetric in the class it scores: the same only if the score column follows the positive label
    good = subgroup_report(y_true, y_pred, probs, groups, LABELS, "good")["columns"]["age_in_years"]
    assert bad["groups"]["<25"]["auroc"] == pytest.approx(good["groups"]["<25"]["auroc"])
    assert bad["groups"]["<25"]["selection_rate"] == pytest.approx(1 - good["groups"]["<25"]["selection_rate"])
    with pytest.raises(ConfigError, match="'ugly' is not one of the labels"):
        subgroup_report(y_true, y_pred, probs, groups, LABELS, "ugly")


def test_undefined_rates_are_none_and_left_out_of_gaps():
    # group b has no positives: its sensitivity is undefined, not 0 (each pattern repeated to 30+ rows per group)
    y_true = np.tile([1, 1, 0, 0, 0, 0], 15)
    y_pred = np.tile([1, 0, 1, 0, 1, 1], 15)
    report = subgroup_report(y_true, y_pred, None, {"site": ["a", "a", "a", "a", "b", "b"] * 15}, ["no", "yes"], None)
    site = report["columns"]["site"]
    assert site["groups"]["b"]["true_positive_rate"] is None and site["groups"]["a"]["true_positive_rate"] == 0.5
    assert site["gaps"]["equal_opportunity_difference"] is None  # one defined group: nothing to compare
    assert site["gaps"]["equalized_odds_difference"] == pytest.approx(1.0 - 0.5)  # FPR a 1/2, b 2/2
    assert "auroc" not in site["metric_names"] and report["positive_label"] == "yes"


def test_sentences_name_the_column_and_gap(credit):
    _, report = _report(credit)
    sentences = limitation_sentences(report, min_gap=0.05)
    for column, col in report["columns"].items():
        eo = col["gaps"]["equal_opportunity_difference"]
        matching = [s for s in sentences if s.startswith("Sensitivity") and f"for {column}" in s]
        assert len(matching) == (eo >= 0.05)
        if matching:
            assert f"is {eo:.2f} lower" in matching[0]
    small = [g for g, row in report["columns"]["personal_status_and_sex"]["groups"].items() if row["small"]]
    assert small, "the held-out split should leave some status/sex group under 30 rows"
    [small_sentence] = [s for s in sentences if "too small to judge" in s]
    assert all(f"{g!r} (n=" in small_sentence for g in small)
    assert not any("because" in s or "due to" in s for s in sentences)

    quiet = limitation_sentences(report, min_gap=0.99)
    assert quiet[0] == (f"Gaps in sensitivity and selection rate between the groups of age_in_years, "
                        f"personal_status_and_sex are all below 0.99 on this test set of {report['n']} rows.")


def test_multiclass_report_on_digits():
    from sklearn.datasets import load_digits
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.naive_bayes import GaussianNB

    digits = load_digits()
    x, y = digits.data, digits.target
    y_pred = GaussianNB().fit(x[::2], y[::2]).predict(x[1::2])
    y_true = y[1::2]
    parity = ["even" if i % 2 == 0 else "odd" for i in range(len(y_true))]
    report = subgroup_report(y_true, y_pred, None, {"parity": parity}, [str(d) for d in range(10)], "3")
    col = report["columns"]["parity"]
    assert report["positive_label"] is None and col["metric_names"] == ["accuracy", "macro_f1"]
    assert list(col["gaps"]) == ["accuracy_difference"]
    even = np.arange(len(y_true)) % 2 == 0
    accuracies = {}
    for group, mask in (("even", even), ("odd", ~even)):
        accuracies[group] = accuracy_score(y_true[mask], y_pred[mask])
        assert col["groups"][group]["accuracy"] == pytest.approx(accuracies[group])
        assert col["groups"][group]["macro_f1"] == pytest.approx(f1_score(y_true[mask], y_pred[mask], average="macro"))
    gap = abs(accuracies["even"] - accuracies["odd"])
    assert col["gaps"]["accuracy_difference"] == pytest.approx(gap)
    [sentence] = limitation_sentences(report, min_gap=0.0)
    assert sentence.startswith(f"Accuracy is {gap:.2f} lower for parity = ")
    assert limitation_sentences(report, min_gap=gap + 0.01)[0].startswith("Gaps in accuracy between the groups of parity")


def test_small_and_missing_groups_are_listed_but_not_compared():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, 100)
    y_pred = y_true.copy()
    y_pred[90:] = 1 - y_pred[90:]  # the 10 rows of the small group are all wrong
    sites = ["a"] * 50 + ["b"] * 40 + [None] * 10
    report = subgroup_report(y_true, y_pred, None, {"site": group_values(sites, None, "site")}, ["no", "yes"], None)
    site = report["columns"]["site"]
    assert site["groups"]["missing"]["n"] == 10 and site["groups"]["missing"]["accuracy"] == 0.0
    assert site["gaps"]["demographic_parity_difference"] is not None
    assert site["gaps"]["equal_opportunity_difference"] == 0.0  # a and b are both perfect
    sentences = " ".join(limitation_sentences(report))
    assert "too small to judge: site = 'missing' (n=10)" in sentences
    assert "for site = 'missing'" not in sentences  # never one side of a gap


def test_per_group_intervals_bracket_the_estimate_and_repeat(credit):
    rows, y_true, y_pred, probs = credit
    groups = {"age_in_years": group_values(rows["age_in_years"].tolist(), AGE_BINS, "age_in_years")}
    first = subgroup_report(y_true, y_pred, probs, groups, LABELS, "good", n_boot=50, seed=3)
    again = subgroup_report(y_true, y_pred, probs, groups, LABELS, "good", n_boot=50, seed=3)
    assert first == again  # seeded
    json.dumps(first, allow_nan=False)
    table = first["columns"]["age_in_years"]["groups"]
    for row in table.values():
        for metric in ("accuracy", "selection_rate", "auroc"):
            low, high = row["ci"][metric]
            assert low <= row[metric] <= high
    width = {name: row["ci"]["accuracy"][1] - row["ci"]["accuracy"][0] for name, row in table.items()}
    largest, smallest = max(table, key=lambda g: table[g]["n"]), min(table, key=lambda g: table[g]["n"])
    assert width[largest] < width[smallest]  # more rows, a narrower interval
    assert "ci" not in subgroup_report(y_true, y_pred, probs, groups, LABELS, "good")["columns"]["age_in_years"]["groups"]["<25"]
