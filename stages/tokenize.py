"""tokenize: turn each clean split into cached token tensors, and report review lengths.

Writes data/tokens/<split>.safetensors (input_ids, attention_mask, token_type_ids,
labels, lengths) with data/tokens/tokenization.json (which model, which max_length),
metrics/data/tokenize.json (per split: length percentiles before truncation, the share
truncated at tokenize.max_length, the share of unknown tokens) and
metrics/data/token_lengths.png, the length histogram of the training split: what a user
reads to pick max_length.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a file, never a window
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from zh_sentiment.encoder import encode_texts, load_tokenizer, max_positions, model_location
from zh_sentiment.errors import PipelineError, run
from zh_sentiment.outputs import atomic_dir, atomic_file, write_json
from zh_sentiment.params import load_params
from zh_sentiment.paths import CLEAN_DIR, SPLITS, TOKEN_LENGTHS_PLOT, TOKENIZATION_FILE, TOKENIZE_REPORT, TOKENS_DIR

# A Chinese model reads almost every character of a Chinese review; many [UNK] mean a wrong model.
UNKNOWN_WARNING = 0.05


def check_max_length(max_length: int, limit: int, model_name: str) -> None:
    if max_length > limit:
        raise PipelineError(
            f"tokenize.max_length = {max_length} is more than {model_name} takes: {limit} tokens "
            f"(max_position_embeddings in its config). Set tokenize.max_length to {limit} or less."
        )


def length_report(lengths: np.ndarray, max_length: int) -> dict:
    """Percentiles of the untruncated lengths ([CLS] and [SEP] included) and the share cut at max_length."""
    p50, p90, p95, p99 = np.percentile(lengths, [50, 90, 95, 99])
    truncated = int((lengths > max_length).sum())
    return {
        "n": int(len(lengths)),
        "p50": round(float(p50), 1),
        "p90": round(float(p90), 1),
        "p95": round(float(p95), 1),
        "p99": round(float(p99), 1),
        "max": int(lengths.max()),
        "truncated": truncated,
        "truncated_fraction": round(truncated / len(lengths), 4),
    }


def unknown_fraction(ids: list[list[int]], unk_id: int) -> float:
    """Share of the tokens (special ones included) that the vocabulary does not know."""
    total = sum(len(row) for row in ids)
    return round(sum(row.count(unk_id) for row in ids) / total, 4) if total else 0.0


def plot_lengths(lengths: np.ndarray, max_length: int, path: Path) -> None:
    fraction = (lengths > max_length).mean()
    # Reviews have a long tail (a few thousand tokens): gather it in the last bar so the body stays readable.
    upper = int(max(max_length, np.percentile(lengths, 99)) * 1.1)
    tail = (
        f"; the last bar holds the {int((lengths >= upper).sum())} reviews of {upper}+" if lengths.max() > upper else ""
    )
    shown = np.minimum(lengths, upper)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(shown, bins=min(80, int(shown.max()) - int(shown.min()) + 1), color="#4c78a8")
    ax.axvline(max_length, color="#e45756", linestyle="--", label=f"max_length = {max_length}")
    ax.set(
        xlabel=f"tokens per review ([CLS] and [SEP] included, before truncation{tail})",
        ylabel="reviews",
        title=f"Training split: {fraction:.1%} of {len(lengths)} reviews truncated at max_length = {max_length}",
    )
    ax.legend()
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})  # no version stamp: same bytes each run
    plt.close(fig)


def main() -> None:
    params = load_params()
    name, max_length = params.model.name, params.tokenize.max_length
    limit = max_positions(name)
    check_max_length(max_length, limit, name)
    tokenizer = load_tokenizer(name)

    report = {"max_length": max_length, "model_max_positions": limit}
    with atomic_dir(TOKENS_DIR) as out:
        write_json(out / TOKENIZATION_FILE.name, {"model": model_location(name), "max_length": max_length})
        for split in SPLITS:
            frame = pd.read_csv(CLEAN_DIR / f"{split}.csv", dtype={"text": str, "label": int}, keep_default_na=False)
            texts = frame["text"].tolist()
            full_ids = tokenizer(texts, verbose=False)["input_ids"]
            full_lengths = np.array([len(ids) for ids in full_ids])
            tokens = encode_texts(tokenizer, texts, max_length)
            tokens["labels"] = torch.tensor(frame["label"].to_numpy(), dtype=torch.int64)
            save_file(tokens, out / f"{split}.safetensors")
            report[split] = {
                **length_report(full_lengths, max_length),
                "unknown_fraction": unknown_fraction(full_ids, tokenizer.unk_token_id),
            }
            print(f"tokenize: {split}: {len(texts)} reviews, {report[split]['truncated']} truncated")
            if report[split]["unknown_fraction"] > UNKNOWN_WARNING:
                print(
                    f"tokenize: warning: {report[split]['unknown_fraction']:.0%} of the {split} tokens are "
                    f"{tokenizer.unk_token}: does model.name ({name}) have a vocabulary for this language?"
                )
            if split == "train":
                plot_lengths(full_lengths, max_length, TOKEN_LENGTHS_PLOT)
    write_json(TOKENIZE_REPORT, report)


if __name__ == "__main__":
    run(main)
