"""Simple reference models on the same splits, so a card's numbers have context."""

from __future__ import annotations

import numpy as np

from hf_adapt.data import LabelledData
from hf_adapt.metrics import classification_metrics


def logistic_regression(data: LabelledData, seed: int = 0) -> dict[str, float]:
    """One-hot categoricals + standardised numerics -> logistic regression; test metrics.

    Fitted on train only and scored on test, the same rows the adapted model is scored on.
    """
    from sklearn.compose import make_column_transformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train = data.splits["train"].to_pandas()
    test = data.splits["test"].to_pandas()
    columns = data.feature_columns
    from pandas.api.types import is_numeric_dtype

    numeric = [c for c in columns if is_numeric_dtype(train[c])]
    categorical = [c for c in columns if c not in numeric]
    model = make_pipeline(
        make_column_transformer(
            (StandardScaler(), numeric),
            (OneHotEncoder(handle_unknown="ignore"), categorical),
        ),
        LogisticRegression(max_iter=2000, random_state=seed),
    )
    model.fit(train[columns], train["label"])
    # predict_proba columns follow model.classes_; align to all label ids
    probs = np.full((len(test), data.num_labels), 1e-7)
    probs[:, model.classes_] = model.predict_proba(test[columns])
    return classification_metrics(np.log(probs), test["label"].to_numpy())
