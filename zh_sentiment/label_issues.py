"""Likely label errors: out-of-fold probabilities from cheap models, ranked by cleanlab's confident learning.

Every review of train and validation gets predicted probabilities from models that never saw it
(stratified k-fold over both splits together, the same folds for every model):
- frozen_head: logistic regression on the cached frozen-encoder features, standardized (the linear head's
  model, fit by lbfgs in seconds instead of epochs of AdamW);
- baseline: the baseline's TF-IDF of character n-grams (its ngram_range and min_df) + logistic regression.
Their probabilities are averaged: the average of two different models is more accurate and better calibrated
than either alone, and confident learning is only as good as the probabilities it is given.
cleanlab.filter.find_label_issues (its default, prune_by_noise_rate) flags the reviews whose given label the
probabilities contradict, as many per class as it estimates the noise to be; each is scored by its label
quality (cleanlab's self_confidence: the averaged probability of the given label, 0 = surely wrong).
"""

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from zh_sentiment.baseline import make_vectorizer
from zh_sentiment.errors import PipelineError
from zh_sentiment.params import Baseline, LabelIssues
from zh_sentiment.progress import tqdm


def make_folds(labels: np.ndarray, params: LabelIssues, names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) of each fold; every class in every fold."""
    counts = np.bincount(labels, minlength=len(names))
    if counts.min() < params.folds:
        rarest = int(counts.argmin())
        raise PipelineError(
            f"label_issues.folds = {params.folds}, but only {counts[rarest]} review(s) of train and validation "
            f"have the label '{names[rarest]}': each fold needs one. Lower label_issues.folds, or add reviews."
        )
    splitter = StratifiedKFold(n_splits=params.folds, shuffle=True, random_state=params.seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def features_model(params: LabelIssues) -> Pipeline:
    return Pipeline([("scale", StandardScaler()), ("classifier", LogisticRegression(C=params.c, max_iter=1000))])


def tfidf_model(params: LabelIssues, baseline: Baseline) -> Pipeline:
    classifier = LogisticRegression(C=params.c, max_iter=baseline.max_iter)
    return Pipeline([("tfidf", make_vectorizer(baseline)), ("classifier", classifier)])


def out_of_fold(model: Pipeline, x, labels: np.ndarray, folds: list, num_labels: int, name: str) -> np.ndarray:
    """Each row's probabilities from the model fit on the other folds."""
    probs = np.zeros((len(labels), num_labels))
    for fit_rows, held_rows in tqdm(folds, desc=f"label_issues: {name}", unit="fold"):
        try:
            model.fit(select(x, fit_rows), labels[fit_rows])
        except ValueError as err:  # sklearn's TF-IDF: "After pruning, no terms remain"
            raise PipelineError(
                f"label_issues: {name} cannot be fit on a fold ({err}). With few reviews, lower baseline.min_df "
                "or label_issues.folds."
            ) from None
        probs[held_rows] = model.predict_proba(select(x, held_rows))
    return probs


def select(x, rows: np.ndarray):
    return [x[i] for i in rows] if isinstance(x, list) else x[rows]


def find_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The flagged rows, worst first, and every row's label quality."""
    quality = get_label_quality_scores(labels, probs, method="self_confidence")
    flagged = np.flatnonzero(find_label_issues(labels, probs, n_jobs=1))  # one process: nothing to clean up
    return flagged[np.argsort(quality[flagged], kind="stable")], quality
