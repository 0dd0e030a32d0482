"""What a re-run costs after a train param change, against a full `dvc repro`, in a real project.

A copy of this project (zh_sentiment.sandbox) on generated reviews and the benchmark's encoder;
full `dvc repro`, then train.batch_size halved and `dvc repro` again. At ChnSentiCorp's size only
embed grows much: its time there is estimated from this run's measured embed speed.
"""

import sys

import pandas as pd

from bench.common import Row, Setup, run_child
from zh_sentiment.sandbox import copy_project, edit_params, ran_stages

CHNSENTICORP_REVIEWS = 12_000


def write_reviews(setup: Setup, folder, n: int):
    folder.mkdir(parents=True)
    texts = setup.reviews(n)
    cut = {"train": (0, n * 8 // 10), "validation": (n * 8 // 10, n * 9 // 10), "test": (n * 9 // 10, n)}
    for split, (start, stop) in cut.items():
        labels = [i % 2 for i in range(stop - start)]  # balanced; speed does not depend on them
        pd.DataFrame({"text": texts[start:stop], "label": labels}).to_csv(folder / f"{split}.csv", index=False)
    return folder


def measure(setup: Setup) -> list[Row]:
    n = setup.scale.project_reviews
    data = write_reviews(setup, setup.scratch / "rerun-data", n)
    project = copy_project(setup.scratch / "rerun-project", {**setup.project_params(), "data.dataset": str(data)})
    dvc = [sys.executable, "-m", "dvc", "repro"]
    full, _, _ = run_child(dvc, project)
    batch_size = setup.params.train.batch_size
    edit_params(project / "params.yaml", {"train.batch_size": max(1, batch_size // 2)})
    rerun, _, output = run_child(dvc, project)
    embed_seconds, _ = setup.embedded
    tokens_per_review = setup.useful_tokens / len(setup.texts)
    full_embed = CHNSENTICORP_REVIEWS * tokens_per_review / (setup.useful_tokens / embed_seconds)
    return [
        Row(f"full `dvc repro`, {n} reviews", full, "s"),
        Row(
            f"re-run after train.batch_size {batch_size} → {max(1, batch_size // 2)}",
            rerun,
            "s",
            "stages run: " + ", ".join(ran_stages(output)),
        ),
        Row(f"re-run / full, {n} reviews", rerun / full, "%", "python and dvc start-up dominate both at this size"),
        Row(
            f"embed of {CHNSENTICORP_REVIEWS:,} reviews (estimated)",
            full_embed,
            "s",
            f"{tokens_per_review:.0f} tokens per review at this run's embed speed",
        ),
        Row("re-run / embed at that size", rerun / full_embed, "%", "what a train param change costs there"),
    ]
