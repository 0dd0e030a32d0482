"""baseline: TF-IDF of character n-grams + logistic regression, the classical model BERT has to beat.

The vectorizer learns its vocabulary and IDF from train only; each C in baseline.c_grid is fit
on train and scored on validation, and the C with the best validation accuracy (ties: the
smaller C, the stronger regularisation) is the one scored on test. Test never picks anything.

Writes models/baseline/ (the fitted vectorizer and classifier, model.skops, and model.json),
metrics/baseline.json and metrics/baseline/ (see zh_sentiment/report.py), plus
metrics/baseline/validation.csv: the validation accuracy of every C tried.
"""

import json
import os
import time

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from zh_sentiment.baseline import make_vectorizer, save_baseline
from zh_sentiment.errors import PipelineError, run
from zh_sentiment.explain import LinearExplainer, mistakes
from zh_sentiment.outputs import write_csv
from zh_sentiment.params import Baseline, load_params
from zh_sentiment.paths import BASELINE, CLEAN_DIR, LABELS_FILE, SPLITS, model_dir, model_reports
from zh_sentiment.progress import tqdm
from zh_sentiment.report import write_test_report


def read_split(split: str) -> tuple[list[str], np.ndarray]:
    frame = pd.read_csv(CLEAN_DIR / f"{split}.csv", dtype={"text": str}, keep_default_na=False)
    return frame["text"].tolist(), frame["label"].to_numpy()


def probabilities(model: LogisticRegression, x, num_labels: int) -> np.ndarray:
    """One column per label id, also for a label that train lacks (probability 0)."""
    full = np.zeros((x.shape[0], num_labels))
    full[:, model.classes_] = model.predict_proba(x)
    return full


def fit(x, y: np.ndarray, c: float, params: Baseline) -> LogisticRegression:
    return LogisticRegression(C=c, max_iter=params.max_iter).fit(x, y)


def choose_c(train: tuple, validation: tuple, params: Baseline) -> tuple[LogisticRegression, pd.DataFrame]:
    """The model of the C with the best validation accuracy, and every C's validation accuracy.

    One fit per C, in parallel on all cores: a sparse lbfgs fit keeps one core busy.
    """
    grid = sorted(params.c_grid)
    jobs = Parallel(n_jobs=min(len(grid), os.cpu_count() or 1), return_as="generator")(
        delayed(fit)(*train, c, params) for c in grid
    )
    rows, best, best_accuracy, best_model = [], None, -1.0, None
    for c, model in zip(grid, tqdm(jobs, total=len(grid), desc="baseline: C on validation", unit="C")):
        accuracy = float((model.predict(validation[0]) == validation[1]).mean())
        rows.append({"C": c, "validation_accuracy": round(accuracy, 6)})
        tqdm.write(f"baseline: C = {c}: validation accuracy {accuracy:.4f}")
        # strict, and unrounded against unrounded: an exact tie keeps the smaller C (1/3 beat its own rounding)
        if accuracy > best_accuracy:
            best, best_accuracy, best_model = rows[-1], accuracy, model
    table = pd.DataFrame(rows).assign(chosen=lambda frame: frame["C"] == best["C"])
    return best_model, table


def main() -> None:
    params = load_params().baseline
    label_names = json.loads(LABELS_FILE.read_text(encoding="utf-8"))["names"]
    (train_texts, y_train), (validation_texts, y_validation), (test_texts, y_test) = map(read_split, SPLITS)
    if len(np.unique(y_train)) < 2:
        raise PipelineError(
            f"{CLEAN_DIR / 'train.csv'}: every review has the label {label_names[y_train[0]]!r}; "
            "a classifier needs at least two classes in train. Check the data source."
        )
    start = time.perf_counter()
    vectorizer = make_vectorizer(params)
    try:
        x_train = vectorizer.fit_transform(train_texts)
    except ValueError as err:  # sklearn: "After pruning, no terms remain"
        raise PipelineError(
            f"baseline: no character n-gram is in at least baseline.min_df = {params.min_df} training reviews "
            f"({err}). Lower baseline.min_df."
        ) from None
    x_validation, x_test = vectorizer.transform(validation_texts), vectorizer.transform(test_texts)
    print(f"baseline: {x_train.shape[1]} character {params.ngram_range[0]}-{params.ngram_range[1]}-grams")

    model, table = choose_c((x_train, y_train), (x_validation, y_validation), params)
    write_csv(model_reports(BASELINE) / "validation.csv", table)
    best = table[table["chosen"]].iloc[0]
    print(f"baseline: C = {best['C']} chosen on validation, {time.perf_counter() - start:.1f} s to fit")
    p_test = probabilities(model, x_test, len(label_names))
    explain = mistakes(LinearExplainer(vectorizer, model, len(label_names)))
    headline = write_test_report(
        BASELINE, y_test, p_test, label_names, test_texts, best["validation_accuracy"], explain=explain
    )
    info = {
        "model": None,
        "max_length": None,  # reads every character
        "pooling": None,
        "precision": None,
        "num_labels": len(label_names),
        "label_names": label_names,
        "validation": {"accuracy": float(best["validation_accuracy"]), "C": float(best["C"])},
        "test": {key: value for key, value in headline.items() if key != "validation_accuracy"},
    }
    save_baseline(Pipeline([("tfidf", vectorizer), ("classifier", model)]), info, model_dir(BASELINE))


if __name__ == "__main__":
    run(main)
