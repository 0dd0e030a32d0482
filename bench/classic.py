"""The classic recipe against this pipeline, for 3 and 10 epochs of training a head.

Classic: every epoch re-tokenizes each review padded to max_length and re-runs the frozen encoder
(without grad, its cheapest form), then steps the head; timed on a few batches, scaled to the reviews.
Ours: tokenize and embed once (measured on the same reviews), then the epochs of stages.train.fit.
"""

import torch
import torch.nn.functional as F

from bench.common import Row, Setup, best_seconds
from stages.train import fit
from zh_sentiment.encoder import pool

EPOCHS = (3, 10)


def classic_step(setup: Setup, head, optimizer, texts: list[str]) -> None:
    inputs = setup.tokenizer(
        texts, padding="max_length", truncation=True, max_length=setup.scale.max_length, return_tensors="pt"
    )
    with torch.no_grad():
        features = pool(setup.encoder(**inputs).last_hidden_state, inputs["attention_mask"], "cls")
    loss = F.cross_entropy(head(features), torch.randint(0, 2, (len(texts),)))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def measure(setup: Setup) -> list[Row]:
    scale, n = setup.scale, len(setup.texts)
    head = torch.nn.Linear(setup.encoder.config.hidden_size, 2)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)
    batches = [setup.texts[i * scale.batch_size : (i + 1) * scale.batch_size] for i in range(scale.classic_batches)]
    classic_step(setup, head, optimizer, setup.texts[:1])  # warm-up at this shape

    def classic_batches() -> None:
        for texts in batches:
            classic_step(setup, head, optimizer, texts)

    seconds, _ = best_seconds(classic_batches, 1)
    per_review_epoch = seconds / (scale.classic_batches * scale.batch_size)

    embed_seconds, features = setup.embedded
    labels = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(0))
    split = n * 8 // 10
    rows = [Row(f"classic: per review and epoch, padded to {scale.max_length}", per_review_epoch, "s")]
    for epochs in EPOCHS:
        train = setup.params.train.model_copy(update={"epochs": epochs, "patience": epochs})
        head_seconds, _ = best_seconds(
            lambda train=train: fit((features[:split], labels[:split]), (features[split:], labels[split:]), 2, train), 1
        )
        ours = setup.tokenize_seconds + embed_seconds + head_seconds
        classic = per_review_epoch * n * epochs
        rows.append(
            Row(
                f"classic / ours, {epochs} epochs, {n} reviews",
                classic / ours,
                "x",
                f"classic {classic:,.0f} s (from {scale.classic_batches} batch(es) of {scale.batch_size}); ours "
                f"{ours:,.1f} s = tokenize {setup.tokenize_seconds:.1f} + embed {embed_seconds:.1f} "
                f"+ head {head_seconds:.1f}",
            )
        )
    return rows
