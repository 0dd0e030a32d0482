"""zh-sentiment predict: classify new reviews with a trained model (by default the best on validation).

    zh-sentiment predict "这家酒店很干净" "书的质量太差了"
    zh-sentiment predict --input reviews.csv --output predictions.csv [--text-column text]
    zh-sentiment predict --input labelled.csv --label-column label     # also score the model on the file
    zh-sentiment predict --input reviews.tsv --columns label,text       # a file without a header row
    cat reviews.txt | zh-sentiment predict -

Everything it needs (encoder, max_length, pooling, label names) comes from the model folder,
not from params.yaml, so a trained models/ folder works anywhere. Texts get the same
normalisation as in the clean stage; empty reviews are skipped and counted, and reviews that
were truncated or that the model's vocabulary hardly knows are noted per review.
"""

import argparse
import codecs
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.metrics import confusion_matrix

from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.inference import MODEL_NAMES, Note, choose_model, load_model
from zh_sentiment.metrics import classification_metrics
from zh_sentiment.outputs import write_csv
from zh_sentiment.params import Embed, check_value
from zh_sentiment.progress import tqdm
from zh_sentiment.runtime import RUNTIMES
from zh_sentiment.tables import codec_for, read_table, require_columns
from zh_sentiment.text import normalize_text

CHUNK = 2048  # reviews tokenized and scored together: bounds memory on large files
ADDED_COLUMNS = ("predicted", "probability", "notes")  # and probability_<label> per class


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zh-sentiment predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("texts", nargs="*", help="reviews to classify; '-' reads one review per line from stdin")
    parser.add_argument("--input", type=Path, help="CSV or TSV file of reviews")
    parser.add_argument("--output", type=Path, help="where to write the input rows with their predictions (CSV)")
    parser.add_argument(
        "--text-column", default="text", help="column of --input that holds the reviews (default: text)"
    )
    parser.add_argument(
        "--label-column",
        help="column of --input with the true labels (names or ids): also print accuracy, macro F1, confusion",
    )
    parser.add_argument(
        "--columns",
        type=lambda value: [name.strip() for name in value.split(",")],
        help="--input has no header row; these are its columns in order, e.g. label,text",
    )
    parser.add_argument(
        "--encoding", default="auto", help="encoding of --input (default: auto: UTF-8/16/32, GBK/GB18030 or Big5)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--model",
        choices=MODEL_NAMES,
        help="which trained model in models/ (default: the one with the best validation accuracy)",
    )
    which.add_argument("--model-dir", type=Path, help="a trained model folder, wherever it is")
    # checked as embed.batch_size, embed.device and embed.precision are in params.yaml
    parser.add_argument(
        "--batch-size", type=as_embed("batch_size", int), default=32, help="reviews per encoder batch (default: 32)"
    )
    parser.add_argument(
        "--device", type=as_embed("device"), default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)"
    )
    parser.add_argument(
        "--precision",
        type=as_embed("precision"),
        help="encoder precision: auto, fp32, bf16, fp16 or int8, as embed.precision "
        "(default: the one the model was trained with, in model.json)",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="what runs the model: torch, onnx or onnx-int8 (zh-sentiment export writes them), or auto: the fastest "
        "of those the model folder has, measured once on this machine (default: auto; docs/onnx.md)",
    )
    args = parser.parse_args(argv)
    if not args.texts and not args.input:
        parser.error("give reviews as arguments, '-' to read them from stdin, or --input FILE")
    if args.texts and args.input:
        parser.error("give reviews as arguments (or '-' for stdin), or --input FILE, not both")
    if args.encoding != "auto":
        try:
            codecs.lookup(args.encoding)
        except LookupError:
            parser.error(f"--encoding {args.encoding}: unknown encoding; use auto, utf-8, gb18030, big5, ...")
    if args.output and not args.input:
        parser.error("--output goes with --input")
    if args.label_column and not args.input:
        parser.error("--label-column goes with --input")
    return args


def check_output(path: Path, input_path: Path) -> None:
    """Before any inference: a path that cannot be written would fail only once all the work is done,
    and the input is never overwritten."""
    if path.is_dir():
        raise PipelineError(f"--output {path} is a folder; give a file name, e.g. {path / 'predictions.csv'}.")
    if path.exists() and input_path.exists() and path.samefile(input_path):
        raise PipelineError(
            f"--output {path} is the --input file: predict never overwrites its input. Give another file name."
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # write_csv creates the missing folders
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise PipelineError(f"--output {path}: cannot write in {folder}/. Choose a folder you can write to.")
    if path.exists() and not os.access(path, os.W_OK):
        raise PipelineError(f"--output {path}: the file exists and is read-only. Choose another name.")


def not_a_text_table(data: bytes) -> str | None:
    """What a file that is no CSV/TSV text looks like, from its first bytes, else None."""
    if data.startswith(b"PK\x03\x04"):
        return "a zip archive, e.g. an Excel .xlsx workbook renamed to .csv, not CSV/TSV text"
    if data.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "an old Excel .xls workbook (or another OLE file), not CSV/TSV text"
    return None


def decode(data: bytes, encoding: str, where: str) -> str:
    """`data` as text, decoded as a file's would be; `where` names it in messages."""
    problem = not_a_text_table(data)
    if problem:
        raise PipelineError(f"{where} is {problem}. Save it as CSV (UTF-8) or as tab-separated text.")
    try:
        return data.decode(codec_for(data, where, encoding, "--encoding"))
    except PipelineError:
        if b"\0" in data[:4096] and encoding == "auto":
            raise PipelineError(
                f"{where} looks like a binary file, not review text (it holds NUL bytes). "
                "Give a CSV or TSV text file, or --encoding if it is text in UTF-16/UTF-32."
            ) from None
        raise


def read_stdin(encoding: str) -> str:
    """stdin as bytes, decoded with the same detection as a file (a GBK pipe is common on Chinese Windows)."""
    data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode("utf-8")
    return decode(data, encoding, "stdin")


def as_embed(key: str, convert=str):
    """An argparse type: the option's text converted, then checked by the params schema's embed.<key>."""

    def check(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
        try:
            return check_value(Embed, key, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None

    return check


def read_reviews(args: argparse.Namespace) -> tuple[list[str], pd.DataFrame | None]:
    """The normalised texts ("" for an empty review: skipped, and counted), and the input table of a file."""
    if args.input:
        if not args.input.is_file():
            raise PipelineError(f"--input {args.input}: no such file.")
        decode(args.input.read_bytes(), args.encoding, f"--input {args.input}")  # clear messages first
        table = read_table(args.input, args.encoding, args.columns, "--encoding", "--columns")
        wanted = {"--text-column": args.text_column}
        if args.label_column:
            wanted["--label-column"] = args.label_column
        require_columns(list(table.columns), wanted, str(args.input), "--columns")
        raw = table[args.text_column].fillna("").tolist()
    elif args.texts == ["-"]:
        table, raw = None, read_stdin(args.encoding).splitlines()
    else:
        table, raw = None, args.texts
    texts = [normalize_text(str(text))[0] for text in raw]
    if not any(texts):
        raise PipelineError("no reviews to classify: every one given is empty.")
    return texts, table


def say_skipped(texts: list[str], where: str) -> None:
    empty = [i + 1 for i, text in enumerate(texts) if not text]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        print(f"predict: {len(empty)} empty review(s) skipped ({where} {shown}).", file=sys.stderr)


def say_notes(notes: list[list[Note]], where: str) -> None:
    """One line per kind of note: how many reviews, and which."""
    for code, what in (
        ("truncated", "truncated to the model's max_length"),
        ("all_unknown", "made only of characters the model does not know: their labels are guesses"),
        ("unknown_tokens", "with over 5% characters the model does not know"),
    ):
        rows = [i + 1 for i, review in enumerate(notes) if any(note.code == code for note in review)]
        if rows:
            shown = ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")
            print(f"predict: {len(rows)} review(s) {what} ({where} {shown}).", file=sys.stderr)


def label_ids(values: list, names: list[str], where: str) -> np.ndarray:
    """True labels given as names (as the model's label_names) or as ids 0..k-1."""
    ids, bad = [], []
    for row, value in enumerate(values, start=1):
        text = "" if pd.isna(value) else str(value).strip()  # an empty cell, or one a short row lacks
        if text in names:
            ids.append(names.index(text))
        elif text.isdigit() and int(text) < len(names):
            ids.append(int(text))
        else:
            bad.append(f"row {row}: {text!r}" if text else f"row {row}: (empty)")
    if bad:
        raise PipelineError(
            f"{where}: {len(bad)} label(s) the model does not have ({', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}). Labels are {', '.join(names)} or their ids 0..{len(names) - 1}."
        )
    return np.array(ids)


def score_file(y_true: np.ndarray, probabilities: np.ndarray, names: list[str]) -> str:
    """Accuracy, macro F1 (and ROC AUC) and the confusion matrix, as a report to print."""
    metrics = classification_metrics(y_true, probabilities)
    matrix = pd.DataFrame(
        confusion_matrix(y_true, probabilities.argmax(1), labels=list(range(len(names)))),
        index=[f"actual {name}" for name in names],
        columns=[f"predicted {name}" for name in names],
    )
    shown = ", ".join(f"{key} {metrics[key]:.4f}" for key in ("accuracy", "f1_macro", "roc_auc") if key in metrics)
    return f"scored {metrics['n']} labelled reviews: {shown}\n{matrix.to_string()}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.output:
        check_output(args.output, args.input)
    texts, table = read_reviews(args)
    folder, reason = (args.model_dir, "given with --model-dir") if args.model_dir else choose_model(name=args.model)
    classifier = load_model(folder, args.device, args.precision, args.runtime)
    print(f"predict: model {folder} ({classifier.kind}): {reason}", file=sys.stderr)
    print(f"predict: runtime {classifier.runtime}: {classifier.runtime_reason}", file=sys.stderr)
    names = classifier.label_names
    if table is not None:
        clash = [name for name in (*ADDED_COLUMNS, *(f"probability_{n}" for n in names)) if name in table.columns]
        if args.output and clash:
            raise PipelineError(
                f"--input {args.input} already has the column(s) {', '.join(clash)}, which --output would "
                "overwrite: rename them in the file first."
            )
    where = "row" if args.input else "line" if args.texts == ["-"] else "review"
    say_skipped(texts, where)
    kept = [i for i, text in enumerate(texts) if text]
    logits, notes = np.zeros((len(texts), len(names)), dtype=np.float32), [[] for _ in texts]
    with tqdm(total=len(kept), unit="review", desc="predict", disable=len(kept) <= args.batch_size) as bar:
        for start in range(0, len(kept), CHUNK):
            chunk = kept[start : start + CHUNK]
            chunk_logits, chunk_notes = classifier.score([texts[i] for i in chunk], args.batch_size)
            logits[chunk] = chunk_logits
            for i, review_notes in zip(chunk, chunk_notes):
                notes[i] = review_notes
            bar.update(len(chunk))
    say_notes(notes, where)
    probabilities = softmax(logits, axis=1)
    best = probabilities.argmax(1)
    if args.label_column:
        y_true = label_ids(table[args.label_column].tolist(), names, f"--input {args.input}, --label-column")
        print(score_file(y_true[kept], probabilities[kept], names))
    if args.output:
        write_predictions(args.output, table, texts, probabilities, notes, names)
        print(f"predict: {len(kept)} reviews -> {args.output}")
    elif not args.label_column:
        for i in kept:
            codes = ", ".join(note.code for note in notes[i])
            print(f"{names[best[i]]}\t{probabilities[i, best[i]]:.4f}\t{texts[i]}" + (f"\t[{codes}]" if codes else ""))


def write_predictions(path: Path, table: pd.DataFrame, texts: list[str], probabilities, notes, names) -> None:
    """The input rows with predicted, probability, probability_<label> and notes; empty reviews get none."""
    empty = np.array([not text for text in texts])
    rounded = np.where(empty[:, None], np.nan, probabilities.round(4))
    columns = {
        "predicted": np.where(empty, "", np.array(names)[probabilities.argmax(1)]),
        "probability": rounded.max(1),
        **{f"probability_{name}": rounded[:, i] for i, name in enumerate(names)},
        "notes": ["empty review" if skip else "; ".join(n.message for n in found) for found, skip in zip(notes, empty)],
    }
    try:
        write_csv(path, table.assign(**columns))
    except OSError as err:  # write_csv leaves no .tmp behind
        raise PipelineError(f"--output {path}: cannot write it ({first_line(err)}).") from err
