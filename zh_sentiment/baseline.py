"""The baseline model's folder: a fitted scikit-learn pipeline (TF-IDF vectorizer + logistic regression)
saved with skops, which loads it without unpickling arbitrary objects: only types skops trusts
(scikit-learn's and numpy's own) are rebuilt, and anything else in the file is refused."""

from pathlib import Path

import skops.io
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.model_folder import describe, write_info
from zh_sentiment.outputs import atomic_dir
from zh_sentiment.paths import BASELINE, BASELINE_FILE

STEPS = (("tfidf", TfidfVectorizer), ("classifier", LogisticRegression))


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
    try:
        untrusted = skops.io.get_untrusted_types(file=path)
        if untrusted:
            raise PipelineError(
                f"{path} holds types this project does not load ({', '.join(untrusted[:5])}): it was not written "
                "by the baseline stage. Train the baseline again (`dvc repro`)."
            )
        pipeline = skops.io.load(path)  # trusted=None: the default-trusted types only
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
