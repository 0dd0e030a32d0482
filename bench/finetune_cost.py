"""What fine-tuning costs: one epoch of the top 2 layers on cached states against one epoch of every layer.

    python -m bench.finetune_cost [--reviews 32] [--batch-size 8] [--repeats 2]

A bert-base-shaped encoder (BertConfig's defaults: 12 layers, hidden 768) with random weights,
built here; reviews of random tokens with ChnSentiCorp's length mix (log-normal around its median
of ~78 characters, one token per character, truncated at 512). Both runs train on the same reviews
with the same batches through zh_sentiment.finetune.fit (epochs: 1; its validation pass runs on
one batch). Each is timed with time.perf_counter, `--repeats` times; the fastest counts.
Caching the states is not timed: the embed stage runs the encoder over every review anyway.
"""

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from zh_sentiment.encoder import embed, use_all_cores
from zh_sentiment.finetune import FineTuned, Tokens, fit
from zh_sentiment.params import Finetune
from zh_sentiment.states import STATES_DTYPE, CachedStates, first_trained_layer, save_states

MAX_LENGTH = 512
MEDIAN_CHARS, SIGMA = 78, 0.75  # ChnSentiCorp: p50 76, p90 190, p99 540 characters
FULL_TRAIN_REVIEWS = 9_600  # ChnSentiCorp's train split: what the extrapolation is for
TOP_LAYERS = 2


def generate_tokens(n: int, vocab_size: int, seed: int) -> dict[str, torch.Tensor]:
    """Token tensors as the tokenize stage stores them: [CLS] text [SEP], padded to the longest."""
    generator = torch.Generator().manual_seed(seed)
    chars = torch.exp(math.log(MEDIAN_CHARS) + SIGMA * torch.randn(n, generator=generator)).round().long()
    lengths = (chars.clamp(4, MAX_LENGTH - 2) + 2).int()
    width = int(lengths.max())
    ids = torch.randint(1000, vocab_size, (n, width), generator=generator, dtype=torch.int32)
    ids[:, 0] = 101  # [CLS]
    mask = (torch.arange(width) < lengths[:, None]).to(torch.int8)
    ids[torch.arange(n), lengths.long() - 1] = 102  # [SEP]
    ids[mask == 0] = 0
    labels = torch.randint(0, 2, (n,), generator=generator)
    token_type_ids = torch.zeros(n, width, dtype=torch.int8)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": token_type_ids,
        "lengths": lengths,
        "labels": labels,
    }


def save_tokens(tokens: dict, path: Path) -> Tokens:
    from safetensors.torch import save_file

    save_file(tokens, path)
    return Tokens(path)


def cache_states(encoder: BertModel, split: Tokens, layer: int, path: Path) -> CachedStates:
    states = torch.empty(int(split.lengths.sum()), encoder.config.hidden_size, dtype=STATES_DTYPE)
    embed(encoder, split.tokens, "cls", 16, torch.device("cpu"), "cache states", states, layer)
    save_states(path, states, split.lengths, split.labels)
    return CachedStates(path)


def epoch_seconds(state: dict, config: BertConfig, train, validation, layers, params: Finetune, repeats: int) -> float:
    """The fastest of `repeats` one-epoch runs, each from the same starting weights."""
    times = []
    for _ in range(repeats):
        encoder = BertModel(config)
        encoder.load_state_dict(state)
        start = first_trained_layer(layers, config.num_hidden_layers)
        torch.manual_seed(0)
        model = FineTuned(encoder, 2, "cls", start)
        began = time.perf_counter()
        fit(model, train, validation, params.model_copy(update={"layers": layers}), torch.device("cpu"))
        times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=32, help="training reviews (default 32)")
    parser.add_argument("--batch-size", type=int, default=8, help="finetune.batch_size (default 8)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each epoch; the fastest counts")
    args = parser.parse_args()
    use_all_cores()
    config = BertConfig(attn_implementation="sdpa")
    torch.manual_seed(0)
    encoder = BertModel(config).eval()
    state = {key: value.clone() for key, value in encoder.state_dict().items()}
    params = Finetune(
        layers=TOP_LAYERS, epochs=1, batch_size=args.batch_size, grad_accum=1, lr=5e-5, warmup_ratio=0.1,
        weight_decay=0.01, max_grad_norm=1.0, patience=1, seed=0, device="cpu", processes=1,
    )  # fmt: skip

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        train = save_tokens(generate_tokens(args.reviews, config.vocab_size, 1), scratch / "train.safetensors")
        validation = save_tokens(generate_tokens(args.batch_size, config.vocab_size, 2), scratch / "val.safetensors")
        start = first_trained_layer(TOP_LAYERS, config.num_hidden_layers)
        with torch.inference_mode():
            cached_train = cache_states(encoder, train, start, scratch / "train-states.safetensors")
            cached_validation = cache_states(encoder, validation, start, scratch / "val-states.safetensors")
        states_bytes = os.path.getsize(scratch / "train-states.safetensors")
        tokens = int(train.lengths.sum())

        top = epoch_seconds(state, config, cached_train, cached_validation, TOP_LAYERS, params, args.repeats)
        whole = epoch_seconds(state, config, train, validation, "all", params, args.repeats)

    lengths = train.lengths.float()
    print(f"\nbert-base shape (12 layers, hidden 768), random weights; {torch.get_num_threads()} threads")
    print(
        f"{args.reviews} reviews, {tokens} tokens (mean {lengths.mean():.0f}, max {int(lengths.max())}), "
        f"batch size {args.batch_size}; fastest of {args.repeats} runs each"
    )
    print(f"layers: {TOP_LAYERS} on cached states: {top:7.2f} s/epoch  {1000 * top / tokens:6.2f} ms/token")
    print(f"layers: all from tokens:        {whole:7.2f} s/epoch  {1000 * whole / tokens:6.2f} ms/token")
    print(
        f"ratio (target <= 0.25):         {top / whole:7.3f}  (layers/L = {TOP_LAYERS / config.num_hidden_layers:.3f})"
    )
    per_review = tokens / args.reviews
    print(
        f"cached states: {states_bytes / tokens / 1024:.2f} KiB/token; "
        f"{states_bytes / tokens * per_review * 12_000 / 2**30:.2f} GiB for 12,000 such reviews"
    )
    minutes = {
        name: seconds / args.reviews * FULL_TRAIN_REVIEWS / 60 for name, seconds in (("top", top), ("all", whole))
    }
    print(
        f"one epoch over {FULL_TRAIN_REVIEWS:,} such reviews, extrapolated: "
        f"layers {TOP_LAYERS} {minutes['top']:.0f} min, all {minutes['all']:.0f} min"
    )


if __name__ == "__main__":
    main()
