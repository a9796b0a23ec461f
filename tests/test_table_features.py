"""hf_adapt.table_features and the hybrid backbone: the encoding a scorecard uses, fitted on training rows only and
saved; the rule for what training never saw; and an untrained hybrid that *is* the fitted logistic regression."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from hf_adapt.errors import ConfigError, DataError, ModelError
from hf_adapt.table_features import FILE, TableEncoder, TableInputs, fit_linear

KINDS = {"age": "number", "income": "number", "housing": "text", "owner": "bool"}
ROWS = [{"age": 30, "income": 1000.0, "housing": "rent", "owner": False},
        {"age": 50, "income": None, "housing": "own", "owner": True},
        {"age": 40, "income": 3000.0, "housing": None, "owner": True}]


def test_numbers_are_standardised_with_indicators_and_categories_one_hot():
    encoder = TableEncoder.fit(ROWS, KINDS)
    names = [name for _, name in encoder.features]
    assert names == ["age", "income", "income missing", "housing=missing", "housing=own", "housing=rent",
                     "owner=False", "owner=True"]
    encoded = encoder.encode(ROWS)
    assert encoded.shape == (3, encoder.width) and encoded.dtype == np.float32
    np.testing.assert_allclose(encoded[:, 0].mean(), 0, atol=1e-6)
    np.testing.assert_allclose(encoded[:, 0].std(), 1, atol=1e-6)
    # the missing income is the training median (2000), which standardises to 0 here; its indicator is set
    assert encoded[1, 1] == pytest.approx(0.0, abs=1e-6) and encoded[1, 2] > 0 > encoded[0, 2]
    assert encoded[2, 3] == 1 and encoded[0, 5] == 1 and encoded[1, 7] == 1


def test_unseen_values_follow_the_stated_rule():
    encoder = TableEncoder.fit(ROWS, KINDS)
    row = {"age": None, "income": None, "housing": "castle", "owner": True}
    encoded = encoder.encode([row])[0]
    names = [name for _, name in encoder.features]
    assert encoded[names.index("age")] == pytest.approx((40 - 40) / np.std([30, 50, 40]))  # the median
    categories = [i for i, n in enumerate(names) if n.startswith("housing=")]
    assert not encoded[categories].any()  # unknown: no category
    assert "unknown" in encoder.to_dict()["unknown"]


def test_an_unusable_column_is_refused_by_name():
    with pytest.raises(DataError, match="'when'"):
        TableEncoder.fit([{"when": [1, 2]}], {"when": "other"})
    with pytest.raises(DataError, match="'age' is empty"):
        TableEncoder.fit([{"age": None}, {"age": None}], {"age": "number"})


def test_the_encoding_round_trips_and_a_damaged_file_is_refused(tmp_path):
    encoder = TableEncoder.fit(ROWS, KINDS)
    encoder.save(tmp_path)
    again = TableEncoder.load(tmp_path)
    np.testing.assert_array_equal(again.encode(ROWS), encoder.encode(ROWS))
    raw = json.loads((tmp_path / FILE).read_text())
    del raw["numeric"][0]["median"]
    (tmp_path / FILE).write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="table-feature encoding"):
        TableEncoder.load(tmp_path)
    with pytest.raises(ModelError, match="missing"):
        TableEncoder.load(tmp_path / "nowhere")


def test_table_features_names_only_usable_columns(credit_sample):
    from hf_adapt.data import DataSpec, load_labelled

    data = load_labelled(DataSpec(source=str(credit_sample), label_column="creditability"))
    assert TableInputs.of("none", data) is None
    auto = TableInputs.of("auto", data)
    assert auto.columns == data.feature_columns and auto.kinds["age_in_years"] == "number"
    assert TableInputs.of(["age_in_years", "housing"], data).columns == ["age_in_years", "housing"]
    for bad, message in ((["age"], "lacks"), (["label"], "label"), ([], "non-empty"), ("some", "auto, none"),
                         (["housing", "housing"], "twice")):
        with pytest.raises(ConfigError, match=message):
            TableInputs.of(bad, data)


def test_an_untrained_hybrid_is_the_fitted_logistic_regression(tiny_bert, german_credit_csv):
    """The text head and the deep path start at zero and the wide path at logistic regression on the same
    training rows, so before any step the hybrid's probabilities are scikit-learn's baseline's."""
    import torch

    from hf_adapt.backbones import BackboneSpec, build_backbone
    from hf_adapt.backbones.hybrid import fit_hybrid
    from hf_adapt.baselines import baseline_logits
    from hf_adapt.data import DataSpec, load_labelled

    data = load_labelled(DataSpec(source=str(german_credit_csv), label_column="creditability", text_template=None))
    table = TableInputs.of("auto", data)
    train, test = table.rows(data.splits["train"]), table.rows(data.splits["test"])[:64]
    labels = list(data.splits["train"]["label"])
    backbone = fit_hybrid(build_backbone(BackboneSpec(str(tiny_bert), data.num_labels)), table, (train, labels),
                          data.num_labels, seed=0)
    model = backbone.model.eval()
    with torch.no_grad():
        logits = backbone.logits(model, backbone.preprocessor.collate(test, train=False)).numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame(train).assign(label=labels)
    expected = np.exp(baseline_logits("logistic_regression", frame, pd.DataFrame(test), data.feature_columns,
                                      data.num_labels))
    np.testing.assert_allclose(probs, expected, atol=2e-3)
    assert backbone.head_names == ["text.classifier", "table_wide", "table_deep"]


def test_fit_linear_gives_logits_whose_softmax_is_the_probability():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + rng.normal(scale=0.5, size=200) > 0).astype(int).tolist()
    weight, bias = fit_linear(x, y, 2, seed=0)
    assert not weight[0].any() and bias[0] == 0 and weight[1, 0] > 1
    # three labels, one absent from the rows: it starts improbable
    weight, bias = fit_linear(x, [0 if v < -0.5 else 1 for v in x[:, 0]], 3, seed=0)
    assert bias[2] < bias[:2].min() - 5 and not weight[2].any()


def test_what_would_break_the_encoding_or_leak_is_refused(credit_sample, tmp_path):
    from hf_adapt.data import DataSpec, load_labelled

    with pytest.raises(DataError, match="'income' holds an infinite number in training row 1"):
        TableEncoder.fit([{"income": 1.0}, {"income": float("inf")}], {"income": "number"})
    with pytest.raises(DataError, match="one class only"):
        fit_linear(np.zeros((3, 2)), [1, 1, 1], 2, seed=0)
    frame = pd.read_csv(credit_sample).assign(customer_id=lambda f: range(len(f)))
    frame.to_csv(tmp_path / "grouped.csv", index=False)
    data = load_labelled(DataSpec(source=str(tmp_path / "grouped.csv"), label_column="creditability",
                                  group_column="customer_id", feature_columns=["age_in_years", "housing"]))
    with pytest.raises(ConfigError, match="group column"):
        TableInputs.of(["age_in_years", "customer_id"], data)
    assert TableEncoder.fit([{"housing": "  "}], {"housing": "text"}).categorical[0]["categories"] == ["missing"]
