"""Simple reference models on the same rows, so a card's numbers have context.

Each is fitted on training rows only and scored on the rows the adapted model is scored on:
- ``logistic_regression`` (tables): one-hot categoricals and standardised numerics;
- ``hist_gradient_boosting`` (tables): scikit-learn's HistGradientBoostingClassifier with native
  categorical splits (ordinal-coded categoricals, raw numerics);
- ``tfidf_logistic_regression`` (texts): word 1-2-gram TF-IDF of the text column (sublinear tf), then logistic
  regression: the baseline a text classifier must beat.
"""

from __future__ import annotations

import numpy as np

from hf_adapt.data import LabelledData
from hf_adapt.metrics import classification_metrics

BASELINES = {"logistic_regression": "logistic regression", "hist_gradient_boosting": "gradient boosting",
             "tfidf_logistic_regression": "TF-IDF + logistic regression"}
READS = {"logistic_regression": "table", "hist_gradient_boosting": "table", "tfidf_logistic_regression": "text"}
DEFAULT = {"table": "logistic_regression", "text": "tfidf_logistic_regression"}  # baseline: auto


def baselines_for(kind: str) -> list[str]:
    """The baselines that read data of ``kind`` (none for images)."""
    return [name for name, reads in READS.items() if reads == kind]


def baseline_columns(data: LabelledData) -> list[str]:
    """The columns a baseline reads: a table's feature columns, or a text dataset's text column."""
    return [data.input_column] if data.kind == "text" else list(data.feature_columns)


def _pipeline(name: str, numeric: list[str], categorical: list[str], seed: int):
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    if name == "logistic_regression":
        from sklearn.linear_model import LogisticRegression

        # an empty cell (the model reads it as 'missing') becomes the median plus a was-missing flag
        scaled = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler())
        return make_pipeline(
            make_column_transformer((scaled, numeric), (OneHotEncoder(handle_unknown="ignore"), categorical)),
            LogisticRegression(max_iter=2000, random_state=seed),
        )
    if name == "hist_gradient_boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        encode = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)
        return make_pipeline(
            make_column_transformer((encode, categorical), ("passthrough", numeric)),
            HistGradientBoostingClassifier(categorical_features=list(range(len(categorical))), random_state=seed),
        )
    if name == "tfidf_logistic_regression":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        (column,) = numeric + categorical
        return make_pipeline(
            make_column_transformer((TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), column)),
            LogisticRegression(max_iter=2000, random_state=seed),
        )
    raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")


def baseline_logits(name: str, train, test, columns: list[str], num_labels: int, seed: int = 0) -> np.ndarray:
    """Log-probabilities of baseline ``name`` fitted on ``train`` and applied to ``test`` (pandas frames
    with ``columns`` and an integer ``label`` column), one column per label id."""
    from pandas.api.types import is_numeric_dtype

    numeric = [c for c in columns if is_numeric_dtype(train[c])]
    categorical = [c for c in columns if c not in numeric]
    model = _pipeline(name, numeric, categorical, seed)
    model.fit(train[columns], train["label"])
    # predict_proba columns follow model.classes_; align to all label ids
    probs = np.full((len(test), num_labels), 1e-7)
    probs[:, model.classes_] = model.predict_proba(test[columns])
    return np.log(probs)


def fit_baseline(name: str, data: LabelledData, seed: int = 0,
                 fit_on: tuple[str, ...] = ("train",)) -> dict[str, float]:
    """Test metrics of baseline ``name`` fitted on the ``fit_on`` splits (those the model trained on)."""
    import pandas as pd

    train = pd.concat([data.splits[split].to_pandas() for split in fit_on], ignore_index=True)
    test = data.splits["test"].to_pandas()
    logits = baseline_logits(name, train, test, baseline_columns(data), data.num_labels, seed)
    return classification_metrics(logits, test["label"].to_numpy())
