"""label_issues: rank the train and validation reviews whose label is likely wrong (zh_sentiment/label_issues.py).

Reads data/clean (texts, labels, label names) and the cached features data/features/<split>.safetensors.
Writes metrics/data/label_issues.csv (split, id, text, given_label, suggested_label, quality; worst
first: the reviews still to read) and metrics/data/label_issues.json (how many are flagged per split, how
many of those were decided already, and how accurate each model's out-of-fold predictions were, which says
how far to trust the flags).
A reviewer's decisions go to data/label_fixes.csv, which clean applies (README, "Fix the labels"); a review
decided there (relabeled, or kept as labelled) is left out of the report, so that it is read once.
"""

import json

import numpy as np
import pandas as pd
from safetensors.numpy import load_file

from zh_sentiment.errors import PipelineError, run
from zh_sentiment.label_fixes import read_decisions, review_id
from zh_sentiment.label_issues import features_model, find_issues, make_folds, out_of_fold, tfidf_model
from zh_sentiment.outputs import write_csv, write_json
from zh_sentiment.params import load_params
from zh_sentiment.paths import (
    CLEAN_DIR,
    FEATURES_DIR,
    LABEL_FIXES,
    LABEL_ISSUES_COUNTS,
    LABEL_ISSUES_REPORT,
    LABELS_FILE,
)

REVIEWED = ("train", "validation")  # test is never looked at to choose anything


def read_reviews() -> pd.DataFrame:
    """train and validation's reviews (split, text, label), in data/clean's order, which the features share."""
    frames = []
    for split in REVIEWED:
        frame = pd.read_csv(CLEAN_DIR / f"{split}.csv", dtype={"text": str}, keep_default_na=False)
        frames.append(frame.assign(split=split))
    return pd.concat(frames, ignore_index=True)


def read_features(reviews: pd.DataFrame) -> np.ndarray:
    parts = []
    for split in REVIEWED:
        cached = load_file(FEATURES_DIR / f"{split}.safetensors")
        if not np.array_equal(cached["labels"], reviews.loc[reviews["split"] == split, "label"].to_numpy()):
            raise PipelineError(
                f"{FEATURES_DIR / f'{split}.safetensors'} does not hold the reviews of {CLEAN_DIR / f'{split}.csv'} "
                "(other labels or another order): it is from an older run. Run `dvc repro` to embed them again."
            )
        parts.append(cached["features"].astype(np.float64))
    return np.concatenate(parts)


def main() -> None:
    params = load_params()
    settings = params.label_issues
    names = json.loads(LABELS_FILE.read_text(encoding="utf-8"))["names"]
    reviews = read_reviews()
    labels = reviews["label"].to_numpy()
    folds = make_folds(labels, settings, names)
    print(f"label_issues: {len(reviews)} reviews of {' and '.join(REVIEWED)}, {settings.folds} folds")

    probs, accuracy = {}, {}
    for model in settings.models:
        if model == "frozen_head":
            pipeline, x = features_model(settings), read_features(reviews)
        else:
            pipeline, x = tfidf_model(settings, params.baseline), reviews["text"].tolist()
        probs[model] = out_of_fold(pipeline, x, labels, folds, len(names), model)
        accuracy[model] = float((probs[model].argmax(1) == labels).mean())
        print(f"label_issues: {model}: out-of-fold accuracy {accuracy[model]:.4f}")
    average = np.mean(list(probs.values()), axis=0)
    accuracy["average"] = float((average.argmax(1) == labels).mean())

    flagged, quality = find_issues(labels, average)
    decided = {decision.id for decision in read_decisions(LABEL_FIXES, names)}  # clean has checked them
    flagged_ids = reviews["text"].iloc[flagged].map(review_id).to_numpy()
    not_decided = ~np.isin(flagged_ids, list(decided))
    undecided = flagged[not_decided]
    issues = reviews.iloc[undecided].reset_index(drop=True)
    write_csv(
        LABEL_ISSUES_REPORT,
        pd.DataFrame(
            {
                "split": issues["split"],
                "id": flagged_ids[not_decided],
                "text": issues["text"],
                "given_label": [names[i] for i in labels[undecided]],
                "suggested_label": [names[i] for i in average[undecided].argmax(1)],
                "quality": quality[undecided].round(6),
            }
        ),
    )
    counts = {"models": list(settings.models), "folds": settings.folds, "out_of_fold_accuracy": accuracy}
    flagged_rows = reviews.iloc[flagged]
    for split in REVIEWED:
        in_split = flagged_rows[flagged_rows["split"] == split]
        total, to_read = int((reviews["split"] == split).sum()), int((issues["split"] == split).sum())
        counts[split] = {
            "reviews": total,
            "flagged": len(in_split),
            "flagged_share": round(len(in_split) / total, 6),
            "flagged_by_given_label": {name: int((in_split["label"] == i).sum()) for i, name in enumerate(names)},
            "flagged_decided": len(in_split) - to_read,
        }
        print(f"label_issues: {split}: {len(in_split)} of {total} reviews flagged, {to_read} not yet decided")
    write_json(LABEL_ISSUES_COUNTS, counts)
    print(f"label_issues: the flagged reviews not decided in {LABEL_FIXES}, worst first, are in {LABEL_ISSUES_REPORT}")


if __name__ == "__main__":
    run(main)
