"""The card's baseline follows the data: TF-IDF + logistic regression for text datasets (as tables get logistic
regression), on the same split and, under cross-validation, the same folds; a baseline that cannot read the data
is refused before training."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hf_adapt.errors import ConfigError
from tests.conftest import train_finetune


@pytest.fixture(scope="module")
def texts(credit_sample, tmp_path_factory):
    """Credit rows as free text (purpose, duration, history) labelled good or bad: a real text task."""
    frame = pd.read_csv(credit_sample)
    path = tmp_path_factory.mktemp("texts") / "texts.csv"
    pd.DataFrame({"note": [f"{r['purpose']}, {r['duration_in_month']} months, {r['credit_history']}"
                           for r in frame.to_dict("records")], "creditability": frame["creditability"]}).to_csv(path, index=False)
    return path


def test_a_text_dataset_gets_a_tfidf_baseline(tiny_bert, texts, tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from hf_adapt.data import DataSpec, load_labelled

    out = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(texts), text_column="note",
                         bootstrap_resamples=0)
    baseline = json.loads((out / "train_results.json").read_text())["baseline"]["tfidf_logistic_regression"]
    # the same numbers by hand, on the split the run made
    data = load_labelled(DataSpec(source=str(texts), text_column="note", label_column="creditability"))
    train, test = data.splits["train"].to_pandas(), data.splits["test"].to_pandas()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(max_iter=2000, random_state=0).fit(vectorizer.fit_transform(train["note"]), train["label"])
    scores = model.predict_proba(vectorizer.transform(test["note"]))[:, 1]
    assert baseline["auroc"] == pytest.approx(roc_auc_score(test["label"], scores))
    card = (out / "README.md").read_text()
    assert "TF-IDF + logistic regression on the same text column 'note'" in card


def test_cross_validation_scores_the_tfidf_baseline_on_the_same_folds(tiny_bert, texts, tmp_path):
    out = train_finetune(tmp_path / "out", model_name_or_path=str(tiny_bert), data=str(texts), text_column="note",
                         cv_folds=3, bootstrap_resamples=0)
    folds = json.loads((out / "cv_results.json").read_text())["folds"]
    assert all(set(fold["baselines"]) == {"tfidf_logistic_regression"} for fold in folds)


def test_a_baseline_that_cannot_read_the_data_is_refused(tiny_bert, texts, credit_sample, tmp_path):
    with pytest.raises(ConfigError, match="logistic_regression reads table data; this data is text "
                                          r"\(use tfidf_logistic_regression\)"):
        train_finetune(tmp_path / "a", model_name_or_path=str(tiny_bert), data=str(texts), text_column="note",
                       baseline="logistic_regression")
    with pytest.raises(ConfigError, match="tfidf_logistic_regression reads text data; this data is table"):
        train_finetune(tmp_path / "b", model_name_or_path=str(tiny_bert), data=str(credit_sample),
                       baseline="tfidf_logistic_regression")
