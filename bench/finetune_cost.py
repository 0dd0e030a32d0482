"""What fine-tuning costs: one epoch of the top 2 layers on cached states against one epoch of every layer,
and the whole default `dvc repro` extrapolated to ChnSentiCorp's 12,000 reviews.

Both epochs train the benchmark's encoder (bert-base's shape) on the same reviews of the length mix,
with the same batches, through zh_sentiment.finetune.fit (epochs: 1; its validation pass is one batch).
Caching the states is not timed: the embed stage runs the encoder over every review anyway.
"""

import os

import torch
from safetensors.torch import save_file

from bench.common import CPU, Row, Setup, best_seconds, take
from zh_sentiment.encoder import embed, load_encoder
from zh_sentiment.finetune import FineTuned, Tokens, fit
from zh_sentiment.states import STATES_DTYPE, CachedStates, first_trained_layer, save_states

REVIEWS, BATCH_SIZE = 32, 8  # what one epoch is timed on
CHNSENTICORP_REVIEWS, CHNSENTICORP_TRAIN = 12_000, 9_600


def split_files(setup: Setup, rows: range, name: str, start: int) -> tuple[Tokens, CachedStates]:
    """Some of the benchmark's reviews as the tokenize and embed stages store them: tokens, and cached states."""
    tokens = take(setup.tokens, rows)
    tokens["labels"] = torch.arange(len(rows)) % 2  # speed does not depend on the labels
    save_file(tokens, setup.scratch / f"{name}-tokens.safetensors")
    split = Tokens(setup.scratch / f"{name}-tokens.safetensors")
    states = torch.empty(int(split.lengths.sum()), setup.encoder.config.hidden_size, dtype=STATES_DTYPE)
    embed(setup.encoder, split.tokens, "cls", BATCH_SIZE, CPU, states=states, states_layer=start)
    save_states(setup.scratch / f"{name}-states.safetensors", states, split.lengths, split.labels)
    return split, CachedStates(setup.scratch / f"{name}-states.safetensors")


def epoch_seconds(setup: Setup, layers, train, validation) -> float:
    """The fastest of the scale's repeats of one epoch, each from the encoder's saved weights."""
    params = setup.params.finetune.model_copy(
        update={"layers": layers, "epochs": 1, "batch_size": BATCH_SIZE, "grad_accum": 1, "patience": 1}
    )

    def one_epoch():
        encoder = load_encoder(str(setup.model_dir), CPU, "fp32")
        torch.manual_seed(0)
        start = first_trained_layer(layers, encoder.config.num_hidden_layers)
        return fit(FineTuned(encoder, 2, "cls", start), train, validation, params, CPU)

    seconds, _ = best_seconds(one_epoch, setup.scale.repeats)
    return seconds


def measure(setup: Setup) -> list[Row]:
    num_layers = setup.encoder.config.num_hidden_layers
    top = min(2, num_layers - 1)  # the smoke encoder has 2 layers
    start = first_trained_layer(top, num_layers)
    n = min(REVIEWS, len(setup.texts) - BATCH_SIZE)
    train, cached_train = split_files(setup, range(n), "train", start)
    validation, cached_validation = split_files(setup, range(n, n + BATCH_SIZE), "validation", start)
    tokens = int(train.lengths.sum())
    top_seconds = epoch_seconds(setup, top, cached_train, cached_validation)
    all_seconds = epoch_seconds(setup, "all", train, validation)
    states_bytes = os.path.getsize(setup.scratch / "train-states.safetensors")

    # The default pipeline at ChnSentiCorp's size: the embed pass and 3 epochs of the top layers
    # dominate; fetch, clean, tokenize, the baseline and the frozen head add a few minutes at most.
    tokens_per_review = setup.useful_tokens / len(setup.texts)
    embed_seconds, _ = setup.embedded
    full_embed = CHNSENTICORP_REVIEWS * tokens_per_review / (setup.useful_tokens / embed_seconds)
    full_epoch = top_seconds / tokens * CHNSENTICORP_TRAIN * tokens_per_review
    epochs = setup.params.finetune.epochs
    return [
        Row(f"fine-tune epoch, layers: {top} on cached states, {n} reviews", top_seconds, "s"),
        Row(f"fine-tune epoch, layers: all from tokens, {n} reviews", all_seconds, "s"),
        Row(
            f"layers: {top} / layers: all, one epoch",
            top_seconds / all_seconds,
            "x",
            f"target ≤ 0.25; {top} of {num_layers} layers = {top / num_layers:.2f}",
        ),
        Row("cached states per token", states_bytes / tokens / 1024, "KiB", "16-bit, real tokens only"),
        Row(
            f"default `dvc repro` at {CHNSENTICORP_REVIEWS:,} reviews (estimated)",
            full_embed + epochs * full_epoch,
            "s",
            f"embed {full_embed:,.0f} s + {epochs} epochs of layers: {top} at {full_epoch:,.0f} s; "
            f"{tokens_per_review:.0f} tokens per review",
        ),
    ]
