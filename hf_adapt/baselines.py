"""Simple reference models on the same rows, so a card's numbers have context.

Each is fitted on training rows only and scored on the rows the adapted model is scored on:
- ``logistic_regression`` (tables): one-hot categoricals and standardised numerics;
- ``hist_gradient_boosting`` (tables): scikit-learn's HistGradientBoostingClassifier with native
  categorical splits (ordinal-coded categoricals, raw numerics);
- ``tfidf_logistic_regression`` (texts): word 1-2-gram TF-IDF of the text column (sublinear tf), then logistic
  regression: the baseline a text classifier must beat.

For ``task: regression`` the same inputs feed regressors: ``ridge`` (tables, the linear baseline),
``hist_gradient_boosting`` (tables, HistGradientBoostingRegressor) and ``tfidf_ridge`` (texts). For
``task: multi_label`` the classifiers are fitted once per label (one-vs-rest: scikit-learn's
MultiOutputClassifier).
"""

from __future__ import annotations

import numpy as np

from hf_adapt.data import LabelledData

BASELINES = {"logistic_regression": "logistic regression", "hist_gradient_boosting": "gradient boosting",
             "tfidf_logistic_regression": "TF-IDF + logistic regression", "ridge": "ridge regression",
             "tfidf_ridge": "TF-IDF + ridge regression"}
READS = {"logistic_regression": "table", "hist_gradient_boosting": "table", "tfidf_logistic_regression": "text",
         "ridge": "table", "tfidf_ridge": "text"}
# task -> data kind -> the baseline of ``baseline: auto``; the names each task can fit
DEFAULTS = {"classification": {"table": "logistic_regression", "text": "tfidf_logistic_regression"},
            "regression": {"table": "ridge", "text": "tfidf_ridge"}}
DEFAULTS["multi_label"] = DEFAULTS["classification"]
DEFAULT = DEFAULTS["classification"]
# task -> data kind -> the baselines a card shows with ``baseline: auto`` (the default first)
AUTO = {"classification": {kind: [name] for kind, name in DEFAULTS["classification"].items()},
        "regression": {"table": ["ridge", "hist_gradient_boosting"], "text": ["tfidf_ridge"]}}
AUTO["multi_label"] = AUTO["classification"]
FITS = {"classification": ("logistic_regression", "hist_gradient_boosting", "tfidf_logistic_regression"),
        "regression": ("ridge", "hist_gradient_boosting", "tfidf_ridge")}
FITS["multi_label"] = FITS["classification"]


def baselines_for(kind: str, task: str = "classification") -> list[str]:
    """The baselines of ``task`` that read data of ``kind`` (none for images)."""
    return [name for name in FITS[task] if READS[name] == kind]


def baseline_columns(data: LabelledData) -> list[str]:
    """The columns a baseline reads: a table's feature columns, or a text dataset's text column."""
    return [data.input_column] if data.kind == "text" else list(data.feature_columns)


def _estimator(name: str, task: str, categorical: int, seed: int):
    """The scikit-learn model at the end of baseline ``name``'s pipeline (gradient boosting fits either task)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    if name in ("ridge", "tfidf_ridge"):
        return Ridge(alpha=1.0)
    if name in ("logistic_regression", "tfidf_logistic_regression"):
        estimator = LogisticRegression(max_iter=2000, random_state=seed)
    else:
        boosting = HistGradientBoostingRegressor if task == "regression" else HistGradientBoostingClassifier
        estimator = boosting(categorical_features=list(range(categorical)), random_state=seed)
    return per_label(estimator) if task == "multi_label" else estimator


def per_label(estimator):
    """:class:`PerLabel` over ``estimator``, built when scikit-learn is imported (it is a scikit-learn estimator)."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class PerLabel(ClassifierMixin, BaseEstimator):
        """One clone of a classifier per label column (as scikit-learn's MultiOutputClassifier), except that a label
        with one value in the training rows (never, or always, present) predicts its rate instead of failing to fit."""

        def __init__(self, estimator):
            self.estimator = estimator

        def fit(self, features, labels) -> PerLabel:
            from sklearn.base import clone

            labels = np.asarray(labels)
            self.fitted_ = [clone(self.estimator).fit(features, column) if len(np.unique(column)) > 1
                            else float(column.mean()) for column in labels.T]
            return self

        def predict_proba(self, features) -> list[np.ndarray]:
            """Per label, ``(rows, 2)`` probabilities of absent and present."""
            rows = features.shape[0]
            return [np.column_stack([np.full(rows, 1 - m), np.full(rows, m)]) if isinstance(m, float)
                    else m.predict_proba(features) for m in self.fitted_]

    return PerLabel(estimator)


def _pipeline(name: str, numeric: list[str], categorical: list[str], seed: int, task: str = "classification"):
    from sklearn.compose import make_column_transformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    if name not in FITS[task]:
        raise ValueError(f"unknown {task} baseline {name!r}; known: {list(FITS[task])}")
    estimator = _estimator(name, task, len(categorical), seed)
    if name in ("logistic_regression", "ridge"):
        # an empty cell (the model reads it as 'missing') becomes the median plus a was-missing flag
        scaled = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler())
        return make_pipeline(
            make_column_transformer((scaled, numeric), (OneHotEncoder(handle_unknown="ignore"), categorical)), estimator)
    if name == "hist_gradient_boosting":
        encode = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan)
        return make_pipeline(make_column_transformer((encode, categorical), ("passthrough", numeric)), estimator)
    from sklearn.feature_extraction.text import TfidfVectorizer

    (column,) = numeric + categorical
    return make_pipeline(
        make_column_transformer((TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), column)), estimator)


def fitted_baseline(name: str, train, columns: list[str], seed: int = 0, task: str = "classification"):
    """Baseline ``name`` of ``task`` fitted on ``train`` (a pandas frame with ``columns`` and a ``label`` column:
    class ids, or a regression target in its own unit)."""
    from pandas.api.types import is_numeric_dtype

    numeric = [c for c in columns if is_numeric_dtype(train[c])]
    categorical = [c for c in columns if c not in numeric]
    model = _pipeline(name, numeric, categorical, seed, task)
    labels = np.asarray(train["label"].tolist()) if task == "multi_label" else train["label"]  # rows of 0/1 flags
    return model.fit(train[columns], labels)


def baseline_logits(name: str, train, test, columns: list[str], num_labels: int, seed: int = 0) -> np.ndarray:
    """Log-probabilities of classification baseline ``name`` fitted on ``train`` and applied to ``test`` (pandas
    frames with ``columns`` and an integer ``label`` column), one column per label id."""
    from hf_adapt.tasks import Classification

    return Classification(num_labels).baseline_outputs(fitted_baseline(name, train, columns, seed), test[columns])


def baseline_outputs(name: str, train, test, columns: list[str], task, seed: int = 0) -> np.ndarray:
    """Baseline ``name`` fitted on ``train`` and applied to ``test``, as the model's outputs are: what ``task`` (a
    bound :class:`hf_adapt.tasks.Task`) scores with ``task.metrics`` against its encoded labels."""
    return task.baseline_outputs(fitted_baseline(name, train, columns, seed, task.name), test[columns])


def fit_baseline(name: str, data: LabelledData, seed: int = 0,
                 fit_on: tuple[str, ...] = ("train",), task=None) -> dict[str, float]:
    """Test metrics of baseline ``name`` fitted on the ``fit_on`` splits (those the model trained on); ``task``: the
    run's bound task (default: classification of ``data``)."""
    from hf_adapt.tasks import Classification

    task = task or Classification(data.num_labels)
    outputs, scorer = test_outputs(name, data, seed, fit_on, task)
    return scorer.metrics(outputs, np.asarray(task.encode(data.splits["test"]["label"])))


def test_outputs(name: str, data: LabelledData, seed: int, fit_on: tuple[str, ...], task):
    """Baseline ``name`` fitted on the ``fit_on`` splits, applied to the test split in its row order: outputs to
    score row by row beside the model's (a paired comparison), and the task that scores them. A multi-label
    baseline gets thresholds of its own, chosen on the validation split as the model's are (0.5 where it trained
    on the validation rows: cross-validation's refit)."""
    import pandas as pd

    train = pd.concat([data.splits[split].to_pandas() for split in fit_on], ignore_index=True)
    model = fitted_baseline(name, train, baseline_columns(data), seed, task.name)
    columns = baseline_columns(data)
    if task.name == "multi_label" and "validation" not in fit_on:
        valid = data.splits["validation"].to_pandas()
        task = task.tuned(task.baseline_outputs(model, valid[columns]),
                          np.asarray(task.encode(valid["label"].tolist())), "the validation split")
    elif task.name == "multi_label":
        task = type(task)(task.names)  # 0.5
    return task.baseline_outputs(model, data.splits["test"].to_pandas()[columns]), task
