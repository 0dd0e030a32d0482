"""The baseline model's folder: a fitted scikit-learn pipeline (TF-IDF vectorizer + logistic regression)
saved with skops, which loads it without unpickling arbitrary objects: only types skops trusts
(scikit-learn's and numpy's own) are rebuilt, and anything else in the file is refused."""

from pathlib import Path

import numpy as np
import skops.io
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.model_folder import describe, write_info
from zh_sentiment.outputs import atomic_dir
from zh_sentiment.params import Baseline
from zh_sentiment.paths import BASELINE, BASELINE_FILE, INFO_FILE

STEPS = (("tfidf", TfidfVectorizer), ("classifier", LogisticRegression))


def make_vectorizer(params: Baseline) -> TfidfVectorizer:
    """The baseline's features (also the label_issues stage's): TF-IDF of character n-grams.
    sublinear_tf: a character repeated ten times is not ten times the evidence."""
    return TfidfVectorizer(
        analyzer="char", ngram_range=tuple(params.ngram_range), min_df=params.min_df, sublinear_tf=True
    )


def save_baseline(pipeline: Pipeline, info: dict, folder: Path) -> dict:
    with atomic_dir(folder) as out:
        skops.io.dump(pipeline, out / BASELINE_FILE)
        record = describe(BASELINE, info, out, extra=(BASELINE_FILE,))
        write_info(out, record)
    return record


def load_baseline(folder: Path) -> Pipeline:
    path = folder / BASELINE_FILE
    if not path.is_file():
        raise PipelineError(f"{folder} has no {BASELINE_FILE}: copy the whole model folder again, or train it again.")
    return baseline_from_bytes(path.read_bytes(), path)


def baseline_from_bytes(data: bytes, path: Path) -> Pipeline:
    """The fitted pipeline saved in `data`, the bytes of `path`."""
    try:
        untrusted = skops.io.get_untrusted_types(data=data)
        if untrusted:
            raise PipelineError(
                f"{path} holds types this project does not load ({', '.join(untrusted[:5])}): it was not written "
                "by the baseline stage. Train the baseline again (`dvc repro`)."
            )
        pipeline = skops.io.loads(data)  # trusted=None: the default-trusted types only
    except PipelineError:
        raise
    except Exception as err:
        raise PipelineError(
            f"{path} is truncated, corrupt or not a model saved by this project ({first_line(err)}). "
            "Train the baseline again (`dvc repro`), or copy the model folder again."
        ) from None
    steps = getattr(pipeline, "steps", None)
    if not isinstance(pipeline, Pipeline) or [(n, type(s)) for n, s in steps] != list(STEPS):
        raise PipelineError(f"{path} is not the baseline's TF-IDF + logistic regression pipeline: train it again.")
    return pipeline


def check_classes(classes: np.ndarray, num_labels: int, path: Path) -> None:
    """The classifier's classes are label ids, as the stage fits them: distinct ids 0..num_labels-1 in order
    (all of them, but for one that train lacked: the stage scores it 0)."""
    ids = classes.tolist()
    if classes.dtype.kind not in "iu" or ids != sorted(set(ids)) or not set(ids) <= set(range(num_labels)):
        raise PipelineError(
            f"{path} predicts the classes {ids[:10]}, not label ids of the {num_labels} labels "
            f"{path.parent / INFO_FILE} names (0 to {num_labels - 1}): the two files come from different "
            "trainings. Copy the whole model folder again, or train the baseline again (`dvc repro`)."
        )
