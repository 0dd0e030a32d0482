"""The encoder's ceiling against the pipeline's embed on the real length mix, in useful tokens/s.

Ceiling: full batches of reviews all of the mix's mean length, so no token is padding.
Embed: zh_sentiment.encoder.embed on the mix (longest first, each batch padded to its own longest).
"""

from bench.common import CPU, Row, Setup, best_seconds, review
from zh_sentiment.encoder import embed, encode_texts


def measure(setup: Setup) -> list[Row]:
    scale = setup.scale
    length = round(setup.useful_tokens / len(setup.texts))
    texts = [review(setup.rng, setup.characters, length - 2) for _ in range(scale.batch_size * scale.ceiling_batches)]
    uniform = encode_texts(setup.tokenizer, texts, scale.max_length)
    assert bool((uniform["lengths"] == length).all()), "one token per character, plus [CLS] and [SEP]"
    embed_seconds, _ = setup.embedded
    ceiling_seconds, _ = best_seconds(
        lambda: embed(setup.encoder, uniform, "cls", scale.batch_size, CPU), scale.repeats
    )
    ceiling = int(uniform["lengths"].sum()) / ceiling_seconds
    speed = setup.useful_tokens / embed_seconds
    ordered = setup.tokens["lengths"].sort(descending=True).values
    computed = sum(int(batch.max()) * len(batch) for batch in ordered.split(scale.batch_size))
    return [
        Row(f"ceiling: batches of {scale.batch_size} × {length} tokens, no padding", ceiling, "tok/s"),
        Row(
            f"embed on the length mix, {len(setup.texts)} reviews (useful tokens)",
            speed,
            "tok/s",
            f"useful / computed tokens: {setup.useful_tokens / computed:.3f}",
        ),
        Row("embed / ceiling", speed / ceiling, "x", "1.0 = no time lost to padding or small batches"),
    ]
