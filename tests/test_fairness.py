"""Group decision rules from fairlearn's ThresholdOptimizer: on fresh draws of a biased scorer they shrink the
gaps they target, the same input always gets the same decision, the gaps match fairlearn's own functions, and
bad settings are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hf_adapt.errors import ConfigError, DataError
from hf_adapt.fairness import GroupRules, check_fairness, compare, draws, fit_group_rules, gaps


def _draw(n: int, seed: int):
    """Scores that favour group a by 0.15 at every true label: a scorer biased the way post-processing can fix."""
    rng = np.random.default_rng(seed)
    groups = rng.choice(["a", "b"], n, p=[0.7, 0.3])
    positive = rng.integers(0, 2, n).astype(bool)
    scores = np.clip(rng.normal(0.35 + 0.25 * positive + 0.15 * (groups == "a"), 0.15), 0, 1)
    return scores, positive, list(groups)


@pytest.mark.parametrize("constraint, measure", [("equalized_odds", "equalized_odds_difference"),
                                                 ("demographic_parity", "demographic_parity_difference"),
                                                 ("true_positive_rate_parity", "equal_opportunity_difference")])
def test_rules_shrink_the_gap_they_target_on_fresh_rows(constraint, measure):
    scores, positive, groups = _draw(1500, 0)
    rules = fit_group_rules(constraint, "group", None, scores, positive, groups)
    scores, positive, groups = _draw(1500, 1)
    keys = [f"input {i}" for i in range(1500)]
    after = rules.decide(scores, groups, keys)
    result = compare(positive, scores >= 0.5, after, groups, resamples=100)
    assert result[measure]["after"] < result[measure]["before"] / 3
    assert result[measure]["change_interval"][1] < 0  # the whole interval of the change is below zero
    assert result["accuracy"]["before"] - result["accuracy"]["after"] < 0.05  # at a small cost
    again = GroupRules.from_dict(json.loads(json.dumps(rules.to_dict())))
    assert (again.decide(scores, groups, keys) == after).all()  # saved and reloaded: the same decisions


def test_the_draw_is_fixed_by_the_input():
    assert draws("a row") == draws("a row") and draws("a row") != draws("another row")
    assert all(0 <= value < 1 for value in draws("x"))


def test_gaps_match_fairlearn():
    from fairlearn.metrics import demographic_parity_difference, equal_opportunity_difference, equalized_odds_difference

    rng = np.random.default_rng(2)
    groups = rng.choice(["a", "b", "c"], 400)
    positive = rng.integers(0, 2, 400).astype(bool)
    decided = rng.uniform(size=400) < 0.4 + 0.2 * (groups == "a")
    ours = gaps(positive, decided, list(groups))
    assert ours["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(positive, decided, sensitive_features=groups))
    assert ours["equal_opportunity_difference"] == pytest.approx(
        equal_opportunity_difference(positive, decided, sensitive_features=groups))
    assert ours["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(positive, decided, sensitive_features=groups))


def test_bad_settings_and_unknown_groups_are_refused():
    with pytest.raises(ConfigError, match="constraint 'fair' is not one of"):
        check_fairness({"constraint": "fair", "sensitive_column": "sex"})
    with pytest.raises(ConfigError, match="unknown key"):
        check_fairness({"constraint": "equalized_odds", "sensitive_column": "sex", "target": 1})
    with pytest.raises(ConfigError, match="sensitive_column"):
        check_fairness({"constraint": "equalized_odds"})
    scores, positive, groups = _draw(300, 3)
    with pytest.raises(DataError, match="one group"):
        fit_group_rules("equalized_odds", "group", None, scores, positive, ["a"] * 300)
    rules = fit_group_rules("equalized_odds", "group", None, scores, positive, groups)
    with pytest.raises(DataError, match=r"group\(s\) \['c'\] had no rows on validation"):
        rules.decide(scores[:1], ["c"], ["x"])
