"""zh-sentiment predict: classify new reviews with the trained model in models/.

    zh-sentiment predict "这家酒店很干净" "书的质量太差了"
    zh-sentiment predict --input reviews.csv --output predictions.csv [--text-column text]
    cat reviews.txt | zh-sentiment predict -

Everything it needs (encoder, max_length, pooling, label names) comes from the
model folder, not from params.yaml, so a trained models/ folder works anywhere.
Texts get the same normalisation as in the clean stage.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from zh_sentiment.classifier import load_classifier
from zh_sentiment.encoder import (
    choose_device,
    choose_precision,
    embed,
    encode_texts,
    load_encoder,
    load_tokenizer,
    use_all_cores,
)
from zh_sentiment.errors import PipelineError
from zh_sentiment.outputs import write_csv
from zh_sentiment.params import Embed, check_value
from zh_sentiment.paths import FROZEN_HEAD, model_dir
from zh_sentiment.tables import read_table, require_columns
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
    parser.add_argument("--encoding", default="auto", help="encoding of --input (default: auto: UTF-8 or GB18030/GBK)")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=model_dir(FROZEN_HEAD),
        help="trained model folder (default: models/frozen_head)",
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
        default="auto",
        help="encoder precision: auto, fp32, bf16, fp16 or int8, as embed.precision (default: auto)",
    )
    args = parser.parse_args(argv)
    if bool(args.texts) == bool(args.input):
        parser.error("give reviews as arguments (or '-' for stdin), or --input FILE, not both")
    if args.output and not args.input:
        parser.error("--output goes with --input")
    return args


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
        table = read_table(args.input, args.encoding)
        require_columns(list(table.columns), {"--text-column": args.text_column}, str(args.input))
        raw = table[args.text_column].fillna("").tolist()
    elif args.texts == ["-"]:
        table, raw = None, [line for line in sys.stdin.read().splitlines() if line.strip()]
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


def predict(
    texts: list[str], model_dir: Path, batch_size: int, device_name: str, precision: str
) -> tuple[torch.Tensor, list[str]]:
    """Class probabilities (one row per text) and the class names."""
    head, info = load_classifier(model_dir)
    source = f"'model' in {model_dir / 'model.json'}"
    tokenizer = load_tokenizer(info["model"], source)
    device = choose_device(device_name)
    use_all_cores()
    encoder = load_encoder(info["model"], device, choose_precision(precision, device), source)
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
    texts, table = read_reviews(args)
    probabilities, names = predict(texts, args.model_dir, args.batch_size, args.device, args.precision)
    best = probabilities.argmax(1)
    if args.output:
        result = table.assign(
            predicted=[names[i] for i in best],
            probability=probabilities.max(1).values.numpy().round(4),
            **{f"probability_{name}": probabilities[:, i].numpy().round(4) for i, name in enumerate(names)},
        )
        write_csv(args.output, result)
        print(f"predict: {len(texts)} reviews -> {args.output}")
    else:
        for text, label, probability in zip(texts, best, probabilities.max(1).values):
            print(f"{names[label]}\t{probability:.4f}\t{text}")
