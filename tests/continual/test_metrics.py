"""The accuracy matrix's derived numbers on hand-computed cases, and the release gate."""

from __future__ import annotations

import pytest

from hf_adapt.continual.metrics import describe_regressions, gate, markdown_table, summarize

NAMES = ["a", "b", "c"]


def test_class_incremental_matrix():
    matrix = [
        [0.5, None, None],  # before
        [0.9, None, None],  # after a
        [0.6, 0.8, None],  # after b
        [0.3, 0.7, 0.95],  # after c
    ]
    s = summarize(matrix, [1, 2, 3], NAMES, "accuracy")
    assert s["average"] == pytest.approx((0.3 + 0.7 + 0.95) / 3)
    assert s["forgetting"] == pytest.approx({"a": 0.9 - 0.3, "b": 0.8 - 0.7})
    assert s["average_forgetting"] == pytest.approx((0.6 + 0.1) / 2)
    assert s["max_forgetting"] == pytest.approx(0.6)
    assert s["backward_transfer"] == pytest.approx(((0.3 - 0.9) + (0.7 - 0.8)) / 2)
    assert s["forward_transfer"] is None  # later classes are unknown before they are learnt
    assert s["average_per_row"] == pytest.approx([None, 0.9, 0.7, (0.3 + 0.7 + 0.95) / 3])


def test_forgetting_is_measured_from_the_best_row_and_forward_transfer_from_row_zero():
    matrix = [
        [0.5, 0.5, 0.5],
        [0.7, 0.55, 0.6],
        [0.8, 0.9, 0.65],  # a improved after b: its peak is here
        [0.75, 0.9, 0.9],
    ]
    s = summarize(matrix, [1, 2, 3], NAMES, "accuracy")
    assert s["forgetting"] == pytest.approx({"a": 0.8 - 0.75, "b": 0.0})
    assert s["peak_row"] == {"a": 2, "b": 2}
    assert s["backward_transfer"] == pytest.approx(((0.75 - 0.7) + (0.9 - 0.9)) / 2)
    assert s["forward_transfer"] == pytest.approx(((0.55 - 0.5) + (0.65 - 0.5)) / 2)


def test_lower_is_better_metrics_count_increases_as_forgetting():
    matrix = [[1.0, 1.0], [0.2, 0.9], [0.5, 0.3]]
    s = summarize(matrix, [1, 2], ["a", "b"], "log_loss")
    assert s["forgetting"] == pytest.approx({"a": 0.3})
    assert s["backward_transfer"] == pytest.approx(-0.3)


def test_parent_experiences_count_from_row_zero():
    # a parent's experience (learnt before the run: row 0) and one new experience
    matrix = [[0.8, 0.4], [0.7, 0.9]]
    s = summarize(matrix, [0, 1], ["old", "new"], "accuracy")
    assert s["forgetting"] == pytest.approx({"old": 0.1})
    assert s["average"] == pytest.approx(0.8)


def test_gate_names_each_regression():
    matrix = [[0.5, None, None], [0.9, None, None], [0.85, 0.8, None], [0.3, 0.78, 0.95]]
    s = summarize(matrix, [1, 2, 3], NAMES, "accuracy")
    rows = ["before", "a", "b", "c"]
    assert gate(s, None, NAMES, matrix, rows)["passed"]
    assert gate(s, 0.7, NAMES, matrix, rows)["passed"]
    result = gate(s, 0.05, NAMES, matrix, rows)
    assert not result["passed"]
    assert [r["experience"] for r in result["regressions"]] == ["a"]  # b lost 0.02: under the bar
    assert result["regressions"][0]["best_after"] == "a"
    assert describe_regressions(result, "accuracy") == "a lost 0.6000 accuracy (0.9000 after a -> 0.3000 now)"


def test_markdown_table_marks_undefined_cells():
    table = markdown_table([[0.5, None], [0.25, 1.0]], ["before", "a"], ["a", "b"])
    assert table.splitlines()[2] == "| before | 0.500 | – |"
    assert table.splitlines()[3] == "| a | 0.250 | 1.000 |"


def test_an_undefined_metric_fails_the_gate_instead_of_passing_it():
    # AUROC of an experience whose test rows hold one class is NaN: the recipe stores None
    matrix = [[0.5, None], [None, None], [None, 0.9]]
    s = summarize(matrix, [1, 2], ["one-class", "b"], "auroc")
    assert s["undefined"] == ["one-class"] and s["forgetting"] == {}
    result = gate(s, 0.05, ["one-class", "b"], matrix, ["before", "one-class", "b"])
    assert not result["passed"]
    assert describe_regressions(result, "auroc") == "one-class: auroc undefined on its test rows (e.g. AUROC over one class)"
