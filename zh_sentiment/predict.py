"""zh-sentiment predict: classify new reviews with a trained model (by default the best on validation).

    zh-sentiment predict "这家酒店很干净" "书的质量太差了"
    zh-sentiment predict --input reviews.csv --output predictions.csv [--text-column text]
    zh-sentiment predict --input labelled.csv --label-column label     # also score the model on the file
    zh-sentiment predict --input reviews.tsv --columns label,text       # a file without a header row
    cat reviews.txt | zh-sentiment predict -
    zh-sentiment predict --input reviews/ --output scored/ --id-column id   # a corpus: docs/corpus.md
    zh-sentiment predict --explain "这家酒店很干净"                   # and why: its strongest characters marked

Everything it needs (encoder, max_length, pooling, label names) comes from the model folder,
not from params.yaml, so a trained models/ folder works anywhere. Texts get the same
normalisation as in the clean stage; empty reviews are skipped and counted, and reviews that
were truncated or that the model's vocabulary hardly knows are noted per review.
"""

import argparse
import codecs
import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.metrics import confusion_matrix

from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.explain import DEFAULT_STEPS, MAX_STEPS, explainer_for, incomplete_note
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
    parser.add_argument(
        "--input", type=Path, help="CSV or TSV file of reviews; or a folder or glob of CSV/TSV/JSONL/Parquet files"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where to write the input rows with their predictions (CSV); for a folder or glob, a folder of shards",
    )
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
    add_corpus_options(parser)
    parser.add_argument(
        "--explain",
        action="store_true",
        help="say why: print each review with its strongest characters marked, or with --output add an "
        "attributions column (docs/explain.md); for the BERT models about 12x the cost of predicting, at 32 steps",
    )
    parser.add_argument(
        "--explain-steps",
        type=steps_type,
        help=f"--explain: integrated-gradient steps for the BERT models (default: {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="what runs the model: torch, onnx or onnx-int8 (zh-sentiment export writes them), or auto: the fastest "
        "of those the model folder has, measured once on this machine (default: auto; docs/onnx.md)",
    )
    args = parser.parse_args(argv)
    if args.explain_steps is not None and not args.explain:
        parser.error("--explain-steps goes with --explain")
    args.explain_steps = args.explain_steps or DEFAULT_STEPS
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


def add_corpus_options(parser: argparse.ArgumentParser) -> None:
    """Options for scoring a corpus (zh_sentiment/corpus/, docs/corpus.md)."""
    corpus = parser.add_argument_group("a corpus: --input a folder or glob, --output a folder of shards")
    corpus.add_argument("--id-column", help="column that identifies each row in the output (default: file and row)")
    # no defaults here: an option given at all asks for the corpus path (corpus/run.py fills in the defaults)
    corpus.add_argument("--processes", type=positive, help="processes scoring in parallel (default: 1)")
    corpus.add_argument("--rows-per-shard", type=positive, help="rows per output shard (default: 10000)")
    corpus.add_argument("--output-format", choices=("parquet", "csv"), help="of the shards (default: parquet)")
    corpus.add_argument("--ray", metavar="ADDRESS", help="score on this Ray cluster (auto: the one Ray finds)")
    corpus.add_argument("--actors-per-node", type=positive, help="with --ray: model copies per node (default: 1)")
    corpus.add_argument("--cpus-per-actor", type=positive, help="with --ray (default: 1)")
    corpus.add_argument("--gpus-per-actor", type=float, help="with --ray (default: 0)")


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return int(text)


CORPUS_OPTIONS = (
    "id_column",
    "processes",
    "rows_per_shard",
    "output_format",
    "ray",
    "actors_per_node",
    "cpus_per_actor",
    "gpus_per_actor",
)


def corpus_mode(args: argparse.Namespace) -> bool:
    """A folder, glob, JSONL or Parquet input, a folder output, or a corpus option given: the corpus path."""
    if not args.input:
        return False
    return (
        args.input.is_dir()
        or any(char in str(args.input) for char in "*?[")
        or args.input.suffix.lower() in (".jsonl", ".parquet")
        or bool(args.output and args.output.is_dir())
        or any(getattr(args, option) is not None for option in CORPUS_OPTIONS)
    )


def steps_type(text: str) -> int:
    """An argparse type: integrated-gradient steps, 1..MAX_STEPS."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_STEPS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number from 1 to {MAX_STEPS}")
    return int(text)


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
    if corpus_mode(args):
        if not args.output:
            raise PipelineError(f"--input {args.input}: give --output FOLDER, where the scored shards go.")
        if args.label_column:
            raise PipelineError("--label-column scores one CSV/TSV file; a folder or glob of inputs has no report.")
        if args.explain:
            raise PipelineError(
                "--explain takes reviews as arguments or one CSV/TSV file: explaining costs about 12 predictions "
                "per review, too much for a corpus. Explain a sample of it instead."
            )
        from zh_sentiment.corpus.run import score_corpus  # pyarrow, and Ray with --ray, only when asked for

        return score_corpus(args)
    if args.output:
        check_output(args.output, args.input)
    texts, table = read_reviews(args)
    folder, reason = (args.model_dir, "given with --model-dir") if args.model_dir else choose_model(name=args.model)
    classifier = load_model(folder, args.device, args.precision, args.runtime)
    print(f"predict: model {folder} ({classifier.kind}): {reason}", file=sys.stderr)
    print(f"predict: runtime {classifier.runtime}: {classifier.runtime_reason}", file=sys.stderr)
    explainer = explainer_for(classifier) if args.explain else None  # before any work: int8 cannot explain
    names = classifier.label_names
    if table is not None:
        added = (*ADDED_COLUMNS, *(f"probability_{n}" for n in names), *(["attributions"] if args.explain else []))
        clash = [name for name in added if name in table.columns]
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
    explanations = {}
    if args.explain:  # offsets into the reviews as given: the file's cells, else the texts printed
        given = table[args.text_column].fillna("").astype(str).tolist() if args.output else texts
        explanations = explain_reviews(explainer, given, kept, best, args.explain_steps)
        for i, explanation in explanations.items():
            if not explanation.complete():
                notes[i] = [*notes[i], Note("incomplete_explanation", incomplete_note(explanation))]
    if args.label_column:
        y_true = label_ids(table[args.label_column].tolist(), names, f"--input {args.input}, --label-column")
        print(score_file(y_true[kept], probabilities[kept], names))
    if args.output:
        write_predictions(
            args.output, table, texts, probabilities, notes, names, explanations if args.explain else None
        )
        print(f"predict: {len(kept)} reviews -> {args.output}")
    elif args.explain:
        for i in kept:
            print(f"{names[best[i]]}\t{probabilities[i, best[i]]:.4f}\t{marked(texts[i], explanations[i])}")
            for note in notes[i]:
                print(f"\t[{note.code}] {note.message}")
    elif not args.label_column:
        for i in kept:
            codes = ", ".join(note.code for note in notes[i])
            print(f"{names[best[i]]}\t{probabilities[i, best[i]]:.4f}\t{texts[i]}" + (f"\t[{codes}]" if codes else ""))


def explain_reviews(explainer, reviews: list[str], kept: list[int], labels, steps: int) -> dict:
    """Each kept review's explanation toward the label predicted for it, by row."""
    with tqdm(total=len(kept), unit="review", desc="explain", disable=len(kept) <= 4) as bar:
        found = {}
        for i in kept:
            found[i] = explainer.explain(reviews[i], steps, int(labels[i]))
            bar.update()
    return found


MARKED = 5  # characters (tokens) marked per review by --explain


def marked(text: str, explanation) -> str:
    """`text` with its MARKED strongest spans in brackets, signed: [+好] supports the label, [-差] speaks against
    it; neighbours of the same sign share a bracket."""
    signs = {}
    for span in explanation.strongest(MARKED):
        signs.update({i: "+" if span.score > 0 else "-" for i in range(span.start, span.end)})
    out, open_sign = [], None
    for i, char in enumerate(text):
        sign = signs.get(i)
        if sign != open_sign:
            out.append(("]" if open_sign else "") + (f"[{sign}" if sign else ""))
            open_sign = sign
        out.append(char)
    return "".join(out) + ("]" if open_sign else "")


def write_predictions(
    path: Path, table: pd.DataFrame, texts: list[str], probabilities, notes, names, explanations: dict | None = None
) -> None:
    """The input rows with predicted, probability, probability_<label> and notes; empty reviews get none.
    With `explanations` (by row), an attributions column: each review's spans as JSON."""
    empty = np.array([not text for text in texts])
    rounded = np.where(empty[:, None], np.nan, probabilities.round(4))
    columns = {
        "predicted": np.where(empty, "", np.array(names)[probabilities.argmax(1)]),
        "probability": rounded.max(1),
        **{f"probability_{name}": rounded[:, i] for i, name in enumerate(names)},
        "notes": ["empty review" if skip else "; ".join(n.message for n in found) for found, skip in zip(notes, empty)],
    }
    if explanations is not None:
        columns["attributions"] = [
            json.dumps([span.record() for span in explanations[i].spans], ensure_ascii=False)
            if i in explanations
            else ""
            for i in range(len(texts))
        ]
    try:
        write_csv(path, table.assign(**columns))
    except OSError as err:  # write_csv leaves no .tmp behind
        raise PipelineError(f"--output {path}: cannot write it ({first_line(err)}).") from err
