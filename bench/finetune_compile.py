"""torch.compile for the default training step: does its compile time pay back within one default epoch?

The step the defaults train: finetune.layers on cached states, under the precision `auto` picks here, in
length-grouped batches of finetune.batch_size cut into micro-batches of finetune.max_batch_tokens, over
reviews of the length mix; forward and backward (AdamW's step is the same either way). Eager against
torch.compile(dynamic=True): a micro-batch's size and width change all the time, and a compile per shape
could not pay. The compiled model's first pass over the reviews, less its second, is the compile time.

Full scale (bert-base shape, 256 reviews): about 5 min on an idle 2-core CPU.
"""

import time

import torch
import torch.nn.functional as F

from bench.common import CPU, Row, Setup
from zh_sentiment.finetune import (
    FineTuned,
    autocast,
    choose_autocast,
    length_grouped_batches,
    micro_batches,
    starting_model,
)
from zh_sentiment.states import CachedStates, first_trained_layer, save_states

REVIEWS = 256
DEFAULT_EPOCH_REVIEWS = 9_600  # ChnSentiCorp's training split


def training_pass(model, states: CachedStates, batches: list[torch.Tensor], max_tokens: int, precision: str) -> None:
    for batch in batches:
        for rows in micro_batches(batch, states.lengths, max_tokens):
            with autocast(CPU, precision):
                logits = model(states.batch(rows))
            F.cross_entropy(logits.float(), states.labels[rows], reduction="sum").backward()


def measure(setup: Setup) -> list[Row]:
    params = setup.params.finetune
    model = starting_model(str(setup.model_dir), ["negative", "positive"], seed=0)
    model = FineTuned(model, first_trained_layer(params.layers, model.config.num_hidden_layers)).train()
    lengths = setup.tokens["lengths"][:REVIEWS].long()
    path = setup.scratch / "compile-states.safetensors"
    hidden = model.model.config.hidden_size
    labels = torch.randint(0, 2, (len(lengths),), generator=torch.Generator().manual_seed(0))
    save_states(path, torch.randn(int(lengths.sum()), hidden).half(), lengths, labels)
    states = CachedStates(path)
    batches = length_grouped_batches(states.lengths, params.batch_size, torch.Generator().manual_seed(0))
    precision = choose_autocast(params.precision, CPU)

    def run(module) -> float:
        start = time.perf_counter()
        training_pass(module, states, batches, params.max_batch_tokens, precision)
        seconds = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        return seconds

    run(model)  # warm-up: first calls plan kernels
    eager = min(run(model) for _ in range(setup.scale.repeats))
    compiled_model = torch.compile(model, dynamic=True)
    first = run(compiled_model)
    compiled = min(run(compiled_model) for _ in range(setup.scale.repeats))
    compile_seconds = max(0.0, first - compiled)
    # what compiling would save in one default epoch (ChnSentiCorp's training split, the same mix)
    saved = (eager - compiled) * DEFAULT_EPOCH_REVIEWS / len(lengths)
    what = f"layers: {params.layers} on cached states, {precision}, {len(lengths)} reviews"
    return [
        Row(f"training pass, eager: {what}", eager, "s", f"{len(batches)} batches of {params.batch_size}"),
        Row("training pass, torch.compile(dynamic=True)", compiled, "s", "after its first pass"),
        Row("torch.compile: eager / compiled", eager / compiled, "x", "forward and backward"),
        Row("torch.compile: compile time", compile_seconds, "s", "its first pass less its second"),
        Row(
            "torch.compile: time saved in one default epoch / compile time",
            saved / compile_seconds if compile_seconds else float("inf"),
            "x",
            f"≥ 1: it pays within an epoch of {DEFAULT_EPOCH_REVIEWS:,} reviews ({saved:.0f} s saved)",
        ),
    ]
