"""zh-sentiment predict: classify new reviews with the trained model in models/.

    zh-sentiment predict "这家酒店很干净" "书的质量太差了"
    zh-sentiment predict --input reviews.csv --output predictions.csv [--text-column text]
    zh-sentiment predict --input reviews.tsv --columns label,text   # a file without a header row
    cat reviews.txt | zh-sentiment predict -

Everything it needs (encoder, max_length, pooling, label names) comes from the
model folder, not from params.yaml, so a trained models/ folder works anywhere.
Texts get the same normalisation as in the clean stage.
"""

import argparse
import codecs
import os
import sys
from pathlib import Path

import pandas as pd
import torch
from transformers.utils import logging as transformers_logging

from zh_sentiment.classifier import check_encoder, encoder_location, load_classifier
from zh_sentiment.encoder import (
    choose_device,
    choose_precision,
    embed,
    encode_texts,
    load_encoder,
    load_tokenizer,
    use_all_cores,
)
from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.outputs import write_csv
from zh_sentiment.params import Embed, check_value
from zh_sentiment.paths import FINETUNED, FROZEN_HEAD, INFO_FILE, model_dir
from zh_sentiment.progress import tqdm
from zh_sentiment.tables import codec_for, read_table, require_columns
from zh_sentiment.text import normalize_text

CHUNK = 2048  # reviews tokenized and embedded together: bounds memory on large files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zh-sentiment predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("texts", nargs="*", help="reviews to classify; '-' reads one review per line from stdin")
    parser.add_argument("--input", type=Path, help="CSV or TSV file of reviews")
    parser.add_argument("--output", type=Path, help="where to write the input rows with their predictions (CSV)")
    parser.add_argument(
        "--text-column", default="text", help="column of --input that holds the reviews (default: text)"
    )
    parser.add_argument(
        "--columns",
        type=lambda value: [name.strip() for name in value.split(",")],
        help="--input has no header row; these are its columns in order, e.g. label,text",
    )
    parser.add_argument(
        "--encoding", default="auto", help="encoding of --input (default: auto: UTF-8/16/32, GBK/GB18030 or Big5)"
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="trained model folder (default: models/finetuned when it exists, else models/frozen_head)",
    )
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
    if args.model_dir is None:
        finetuned = model_dir(FINETUNED)
        args.model_dir = finetuned if (finetuned / INFO_FILE).exists() else model_dir(FROZEN_HEAD)
    return args


def check_output(path: Path) -> None:
    """Before any inference: a path that cannot be written would fail only once all the work is done."""
    if path.is_dir():
        raise PipelineError(f"--output {path} is a folder; give a file name, e.g. {path / 'predictions.csv'}.")
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
    """The normalised texts, and the input table when reading a file."""
    if args.input:
        if not args.input.is_file():
            raise PipelineError(f"--input {args.input}: no such file.")
        decode(args.input.read_bytes(), args.encoding, f"--input {args.input}")  # clear messages first
        table = read_table(args.input, args.encoding, args.columns, "--encoding", "--columns")
        require_columns(list(table.columns), {"--text-column": args.text_column}, str(args.input), "--columns")
        raw = table[args.text_column].fillna("").tolist()
    elif args.texts == ["-"]:
        table, raw = None, [line for line in read_stdin(args.encoding).splitlines() if line.strip()]
    else:
        table, raw = None, args.texts
    texts = [normalize_text(str(text))[0] for text in raw]
    empty = [i + 1 for i, text in enumerate(texts) if not text]
    if empty:
        where = f"{args.input}, column '{args.text_column}'" if args.input else "the reviews given"
        shown = ", ".join(map(str, empty[:10])) + (" ..." if len(empty) > 10 else "")
        raise PipelineError(
            f"{where}: {len(empty)} review(s) without text (row 1 = first review): {shown}. "
            "Fill them in or remove them."
        )
    if not texts:
        raise PipelineError("no reviews to classify.")
    return texts, table


def choose_settings(device_name: str, requested: str | None, recorded: str) -> tuple[torch.device, str]:
    """The device, and the precision: the one the head was trained with unless --precision says otherwise.

    Features in another precision differ (int8 against fp32: centred cosine 0.89), so an override warns.
    """
    if requested is None and recorded == "int8" and device_name == "auto":
        device_name = "cpu"  # int8 (dynamic quantization) runs on the CPU only
    device = choose_device(device_name, "--device")
    precision = choose_precision(requested or recorded, device, "predict")
    if precision != recorded:
        print(
            f"predict: warning: encoder precision {precision} (--precision) differs from the {recorded} the head "
            "was trained with (model.json): predictions may differ from the evaluated ones.",
            file=sys.stderr,
        )
    return device, precision


def predict(
    texts: list[str], model_dir: Path, batch_size: int, device_name: str, precision: str | None = None
) -> tuple[torch.Tensor, list[str]]:
    """Class probabilities (one row per text) and the class names."""
    transformers_logging.disable_progress_bar()  # the "Loading weights" bar on every call is noise in a CLI
    head, info = load_classifier(model_dir)
    info_file = model_dir / INFO_FILE
    source = f"'model' in {info_file}"
    location = encoder_location(info, model_dir)
    print(f"predict: model {model_dir} ({info['kind']})", file=sys.stderr)
    tokenizer = load_tokenizer(location, source)
    device, precision = choose_settings(device_name, precision, info["precision"])
    use_all_cores()
    encoder = load_encoder(location, device, precision, source)
    check_encoder(info, location, info_file)
    config = encoder.config
    if head.in_features != config.hidden_size:
        raise PipelineError(
            f"{model_dir / 'head.pt'} takes {head.in_features} features but the encoder at {location} gives "
            f"{config.hidden_size}. Copy the whole model folder again, or train the model again."
        )
    if info["max_length"] > config.max_position_embeddings:
        raise PipelineError(
            f"{info_file}: max_length = {info['max_length']} is more than the encoder at {location} takes "
            f"({config.max_position_embeddings} positions). Set max_length to {config.max_position_embeddings} or "
            "less there, or train the model again."
        )
    probabilities = []
    with tqdm(total=len(texts), unit="review", desc="predict", disable=len(texts) <= batch_size) as bar:
        for start in range(0, len(texts), CHUNK):
            chunk = texts[start : start + CHUNK]
            tokens = encode_texts(tokenizer, chunk, info["max_length"])
            features = embed(encoder, tokens, info["pooling"], batch_size, device)
            probabilities.append(torch.softmax(head(features), dim=1))
            bar.update(len(chunk))
    return torch.cat(probabilities), info["label_names"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.output:
        check_output(args.output)
    texts, table = read_reviews(args)
    probabilities, names = predict(texts, args.model_dir, args.batch_size, args.device, args.precision)
    best = probabilities.argmax(1)
    if args.output:
        result = table.assign(
            predicted=[names[i] for i in best],
            probability=probabilities.max(1).values.numpy().round(4),
            **{f"probability_{name}": probabilities[:, i].numpy().round(4) for i, name in enumerate(names)},
        )
        try:
            write_csv(args.output, result)
        except OSError as err:  # write_csv leaves no .tmp behind
            raise PipelineError(f"--output {args.output}: cannot write it ({first_line(err)}).") from err
        print(f"predict: {len(texts)} reviews -> {args.output}")
    else:
        for text, label, probability in zip(texts, best, probabilities.max(1).values):
            print(f"{names[label]}\t{probability:.4f}\t{text}")
