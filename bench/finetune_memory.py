"""Peak memory of the finetune stage at the defaults, layers: all and layers: 2, on the worst case: every
review as long as tokenize.max_length, so every micro-batch is as wide as it can be.

A copy of this project (zh_sentiment.sandbox) on one batch (finetune.batch_size) of such training reviews and
the benchmark's encoder; `dvc repro embed` prepares the tokens and states, then `python -m stages.finetune`
runs alone (one epoch) and its peak RSS is read from the kernel. Without micro-batches a batch of 32 reviews
of 512 tokens reached 22 GB with layers: all; finetune.max_batch_tokens bounds the activations held at once.

Full scale (bert-base shape, 512 tokens): about 5 min on an idle 2-core CPU.
"""

import sys

import pandas as pd

from bench.common import Row, Setup, review, run_child
from zh_sentiment.sandbox import copy_project, edit_params

MIB = 2**20


def write_long_reviews(setup: Setup, folder, n: int):
    folder.mkdir(parents=True)
    length = setup.scale.max_length + 20  # truncated to max_length: every review at the limit
    for split, count in (("train", n), ("validation", 2), ("test", 2)):
        texts = [review(setup.rng, setup.characters, length) for _ in range(count)]
        labels = [i % 2 for i in range(count)]
        pd.DataFrame({"text": texts, "label": labels}).to_csv(folder / f"{split}.csv", index=False)
    return folder


def measure(setup: Setup) -> list[Row]:
    finetune = setup.params.finetune
    data = write_long_reviews(setup, setup.scratch / "finetune-memory-data", finetune.batch_size)
    changes = {**setup.project_params(), "data.dataset": str(data), "finetune.epochs": 1}
    project = copy_project(setup.scratch / "finetune-memory", changes)
    num_layers = setup.encoder.config.num_hidden_layers
    top = min(2, num_layers - 1)  # the smoke encoder has 2 layers
    rows = []
    for layers in (top, "all"):
        edit_params(project / "params.yaml", {"finetune.layers": layers})
        run_child([sys.executable, "-m", "dvc", "repro", "embed"], project)
        seconds, peak, _ = run_child([sys.executable, "-m", "stages.finetune"], project)
        rows.append(
            Row(
                f"finetune stage peak RSS, layers: {layers}",
                peak / MIB,
                "MiB",
                f"{finetune.batch_size} reviews × {setup.scale.max_length} tokens, max_batch_tokens "
                f"{finetune.max_batch_tokens}; the stage took {seconds:.0f} s",
            )
        )
    return rows
