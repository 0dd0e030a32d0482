"""Peak memory of the embed stage on N and 2N reviews: it streams batches, so it should not grow with N
beyond the tokens and features it holds."""

import sys

import pandas as pd

from bench.common import Row, Setup, run_child
from zh_sentiment.paths import CLEAN_DIR, FEATURES_DIR, SPLITS, TOKENS_DIR
from zh_sentiment.sandbox import copy_project

MIB = 2**20


def embed_peak(setup: Setup, texts: list[str], name: str) -> tuple[float, float]:
    """Peak RSS of `python -m stages.embed` on `texts` (tokenized first), and the MiB of tokens and features."""
    project = copy_project(setup.scratch / name, setup.project_params())
    (project / CLEAN_DIR).mkdir(parents=True)
    for split in SPLITS:
        pd.DataFrame({"text": texts, "label": 0}).to_csv(project / CLEAN_DIR / f"{split}.csv", index=False)
    run_child([sys.executable, "-m", "stages.tokenize"], project)
    _, peak, _ = run_child([sys.executable, "-m", "stages.embed"], project)
    data = sum(f.stat().st_size for folder in (TOKENS_DIR, FEATURES_DIR) for f in (project / folder).iterdir())
    return peak / MIB, data / MIB


def measure(setup: Setup) -> list[Row]:
    texts = setup.texts[: setup.scale.memory_reviews]
    peak_n, data_n = embed_peak(setup, texts, "memory-n")
    peak_2n, data_2n = embed_peak(setup, texts * 2, "memory-2n")
    return [
        Row(f"embed stage peak RSS, {len(texts)} reviews per split", peak_n, "MiB"),
        Row(f"embed stage peak RSS, {2 * len(texts)} reviews per split", peak_2n, "MiB"),
        Row(
            "peak RSS growth N → 2N, beyond tokens and features",
            peak_2n - peak_n - (data_2n - data_n),
            "MiB",
            "~0: memory does not grow with the dataset",
        ),
    ]
