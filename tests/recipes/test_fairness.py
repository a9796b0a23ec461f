"""fairness: in the finetune recipe on real German Credit rows: group rules fitted on validation, saved, applied by
load_adapted (exactly the test decisions the card reports) and by a row that carries the column, the card's
before/after section, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import hf_adapt
from hf_adapt.errors import ConfigError
from tests.conftest import train_finetune

FAIRNESS = {"constraint": "demographic_parity", "sensitive_column": "age_in_years", "bins": [35]}


def test_group_rules_are_saved_applied_and_reported(tiny_bert, german_credit_csv, tmp_path):
    # all 1,000 rows: validation and test need both age bands in numbers
    out = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(german_credit_csv),
                         fairness=FAIRNESS, bootstrap_resamples=200, max_steps=20, card_examples=0)
    info = json.loads((out / "hf_adapt.json").read_text())["fairness"]
    results = json.loads((out / "fairness_results.json").read_text())
    assert set(info["rules"]) == {"<35", ">=35"} and info["used_as_input"] is True  # age is in the template
    assert set(results["test"]) >= {"accuracy", "demographic_parity_difference", "equalized_odds_difference"}
    # load_adapted on the run's own test rows gives exactly the decisions the card counted
    from hf_adapt.data import DataSpec, load_labelled
    from hf_adapt.options import QUICKSTART_TEMPLATE

    data = load_labelled(DataSpec(source=str(german_credit_csv), label_column="creditability",
                                  text_template=QUICKSTART_TEMPLATE))
    rows = data.splits["test"].to_pandas().drop(columns=["label"]).to_dict("records")
    truth = np.asarray(data.splits["test"]["label"]) == data.labels.index(info["positive_label"])
    predictor = hf_adapt.load_adapted(str(out))
    answers = predictor.predict(rows)
    decided = np.array([a["label"] == info["positive_label"] for a in answers])
    assert {a["group"] for a in answers} == {"<35", ">=35"}
    assert float((decided == truth).mean()) == pytest.approx(results["test"]["accuracy"]["after"])
    # a text without the column gets the plain decision, or the rule when sensitive= is given
    text = data.inputs("test", "text")[0]
    assert "group" not in predictor.predict(text)[0]
    assert predictor.predict([text], sensitive=[rows[0]["age_in_years"]])[0]["label"] == answers[0]["label"]
    card = (out / "README.md").read_text()
    assert "### Bias mitigation" in card and "What the constraint costs: accuracy" in card
    assert "`age_in_years` is also a model input" in card


def test_fairness_refusals(tiny_bert, credit_sample, tmp_path):
    with pytest.raises(ConfigError, match="replaces the single operating point"):
        train_finetune(tmp_path / "a", model_name_or_path=str(tiny_bert), data=str(credit_sample), fairness=FAIRNESS,
                       operating_point="youden")
    with pytest.raises(ConfigError, match="does not combine with cv_folds"):
        train_finetune(tmp_path / "b", model_name_or_path=str(tiny_bert), data=str(credit_sample), fairness=FAIRNESS,
                       cv_folds=3)
    with pytest.raises(ConfigError, match="'shoe_size' is not a column"):
        train_finetune(tmp_path / "c", model_name_or_path=str(tiny_bert), data=str(credit_sample),
                       fairness={**FAIRNESS, "sensitive_column": "shoe_size"})
    assert not any((tmp_path / name).exists() for name in "abc")
    frame = pd.read_csv(credit_sample)
    assert "shoe_size" not in frame
