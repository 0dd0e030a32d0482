"""int8 and bf16 against fp32: embed speed and how close the features stay.

Random-weight BERT features all point nearly the same way, so a raw cosine is near 1 for any two
reviews; both sides are centred on the fp32 mean feature, which measures what tells reviews apart.
"""

import torch.nn.functional as F

from bench.common import CPU, Row, Setup, best_seconds, take
from zh_sentiment.encoder import embed, load_encoder


def centred_cosine(a, b, mean) -> float:
    return F.cosine_similarity(a - mean, b - mean, dim=1).mean().item()


def measure(setup: Setup) -> list[Row]:
    scale = setup.scale
    fp32_seconds, fp32 = setup.embedded
    mean = fp32.mean(0)
    int8_model = load_encoder(str(setup.model_dir), CPU, "int8")
    embed(int8_model, take(setup.tokens, range(2)), "cls", 2, CPU)  # warm-up
    int8_seconds, int8 = best_seconds(
        lambda: embed(int8_model, setup.tokens, "cls", scale.batch_size, CPU), scale.repeats
    )

    # bf16 on a sample: without AMX it can be very slow on a CPU
    sample = take(setup.tokens, range(scale.bf16_reviews))
    bf16_model = load_encoder(str(setup.model_dir), CPU, "bf16")
    embed(bf16_model, take(sample, range(2)), "cls", 2, CPU)  # warm-up
    bf16_seconds, bf16 = best_seconds(lambda: embed(bf16_model, sample, "cls", scale.batch_size, CPU), scale.repeats)
    sample_fp32_seconds, _ = best_seconds(
        lambda: embed(setup.encoder, sample, "cls", scale.batch_size, CPU), scale.repeats
    )
    return [
        Row("int8 / fp32 embed speed, the length mix", fp32_seconds / int8_seconds, "x"),
        Row("int8 vs fp32 features: centred cosine", centred_cosine(int8, fp32, mean), ""),
        Row(f"bf16 / fp32 embed speed, {scale.bf16_reviews} reviews", sample_fp32_seconds / bf16_seconds, "x"),
        Row(
            "bf16 vs fp32 features: centred cosine",
            centred_cosine(bf16, fp32[: scale.bf16_reviews], mean),
            "",
        ),
    ]
