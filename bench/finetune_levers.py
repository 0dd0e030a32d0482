"""Levers of the fine-tuning step, measured rather than assumed.

- AdamW's step over every bert-base weight: the per-tensor loop, foreach (one kernel per tensor group), fused;
- assembling a batch of cached states: a copy per review (CachedStates.batch) against one gather, no Python loop;
- which attention kernel runs in a training step with a padding mask (torch.profiler), and its share of the time;
- activation checkpointing (the HF model's gradient_checkpointing_enable): what it costs per micro-batch.

Full scale (bert-base shape): about 3 min on an idle 2-core CPU.
"""

import torch
from torch.profiler import ProfilerActivity, profile

from bench.common import Row, Setup, best_seconds
from zh_sentiment.finetune import FineTuned, starting_model
from zh_sentiment.states import CachedStates, save_states


def adamw_ms(parameters: list[torch.Tensor], **variant) -> float:
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, **variant)
    optimizer.step()  # creates the state
    seconds, _ = best_seconds(optimizer.step, 3)
    return seconds * 1000


def gather_batch(states: CachedStates, index: torch.Tensor) -> dict[str, torch.Tensor]:
    """CachedStates.batch without a Python loop: one index_select of every position (row r, position t reads
    the stored row offsets[r] + t), then the padding zeroed."""
    lengths = states.lengths[index]
    positions = torch.arange(int(lengths.max()))
    mask = positions < lengths[:, None]
    rows = (states.offsets[index][:, None] + positions).masked_fill_(~mask, 0)
    gathered = states.states.index_select(0, rows.flatten()).view(*rows.shape, -1)
    return {"states": gathered.float().masked_fill_(~mask[..., None], 0.0), "attention_mask": mask.long()}


def step(model, batch) -> None:
    model(batch).sum().backward()


def measure(setup: Setup) -> list[Row]:
    model = FineTuned(starting_model(str(setup.model_dir), ["negative", "positive"], seed=0), None).train()
    encoder = model.model.base_model
    weights = [p for p in model.parameters() if p.requires_grad]
    for p in weights:
        p.grad = torch.randn_like(p) * 1e-3
    adamw = {
        name: adamw_ms(weights, **v)
        for name, v in (("loop", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True}))
    }
    model.zero_grad(set_to_none=True)

    lengths = setup.tokens["lengths"][:256].long()
    hidden = encoder.config.hidden_size
    path = setup.scratch / "levers-states.safetensors"
    save_states(
        path, torch.randn(int(lengths.sum()), hidden).half(), lengths, torch.zeros(len(lengths), dtype=torch.long)
    )
    states = CachedStates(path)
    index = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))[:32]
    copy_seconds, copied = best_seconds(lambda: states.batch(index), 5)
    gather_seconds, gathered = best_seconds(lambda: gather_batch(states, index), 5)
    assert all(torch.equal(copied[key], gathered[key]) for key in copied)

    # one micro-batch of reviews of the mix with padding: what attention runs while training
    rows = torch.argsort(setup.tokens["lengths"], descending=True)[len(lengths) // 2 :][:8]
    width = int(setup.tokens["lengths"][rows].max())
    batch = {key: setup.tokens[key][rows, :width].long() for key in ("input_ids", "attention_mask", "token_type_ids")}
    step(model, batch)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(model, batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    # the top-level op's inclusive time (its kernels' own time sits in their children: bmm, softmax, ...)
    share = sum(e.cpu_time_total for e in events if e.key == "aten::scaled_dot_product_attention") / total
    kernels = ", ".join(sorted(e.key for e in events if e.key.startswith("aten::_scaled_dot_product")))

    plain, _ = best_seconds(lambda: step(model, batch), 2)
    encoder.gradient_checkpointing_enable()
    step(model, batch)
    checkpointed, _ = best_seconds(lambda: step(model, batch), 2)
    encoder.gradient_checkpointing_disable()
    millions = sum(p.numel() for p in weights) / 1e6
    return [
        Row("AdamW step, every weight: loop", adamw["loop"], "ms", f"{millions:.0f} M weights"),
        Row("AdamW step: loop / foreach", adamw["loop"] / adamw["foreach"], "x", ""),
        Row("AdamW step: loop / fused", adamw["loop"] / adamw["fused"], "x", "make_optimizer takes fused"),
        Row(
            "cached-state batch of 32: one gather / a copy per review",
            gather_seconds / copy_seconds,
            "x",
            f"copies {copy_seconds * 1000:.1f} ms (CachedStates.batch takes them)",
        ),
        Row("attention's share of a padded training step", share, "%", f"kernel: {kernels}"),
        Row("activation checkpointing: step time / without", checkpointed / plain, "x", f"8 reviews × {width} tokens"),
    ]
