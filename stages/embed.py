"""embed: run the frozen encoder once over every split's cached tokens.

Writes data/features/<split>.safetensors (one fp32 vector per review, and its
label) and data/features/embedding.json (model, max_length, pooling, precision):
train and evaluate then never touch the encoder again.

With finetune.layers: N it also writes data/states/<split>.safetensors: the hidden
states entering the top N layers, for the real tokens only, in fp16 (see
zh_sentiment/finetune.py), and data/states/states.json. With `all` data/states/
holds only states.json: finetune then reads the tokens.

Memory stays flat however many reviews: each split goes through the encoder a run of consecutive reviews at a
time (at most CHUNK_TOKENS real tokens), read from the tokens file, and each run's features and states are
written in place in their files (zh_sentiment/tensor_files.py) before the next is read; and large blocks are
returned to the system when freed (encoder.return_large_blocks), so that glibc's heap does not grow batch by batch.
"""

import json

import torch

from zh_sentiment.encoder import choose_device, embed, load_encoder, return_large_blocks, use_all_cores
from zh_sentiment.errors import run
from zh_sentiment.outputs import atomic_dir, write_json
from zh_sentiment.params import load_params
from zh_sentiment.paths import (
    EMBEDDING_FILE,
    FEATURES_DIR,
    SPLITS,
    STATES_DIR,
    STATES_FILE,
    TOKENIZATION_FILE,
    TOKENS_DIR,
)
from zh_sentiment.precision import choose_precision, precision_probe
from zh_sentiment.progress import tqdm
from zh_sentiment.states import STATES_DTYPE, StatesWriter, first_trained_layer
from zh_sentiment.tensor_files import Reader, Writer

# Real tokens per run of reviews: its states (at bert-base's 768, fp16) take 200 MB; its padded tokens and features
# less. Runs of a few hundred reviews or more, sorted by length inside embed(), keep its batches' padding small.
CHUNK_TOKENS = 2**17


def chunks(lengths: torch.Tensor) -> list[tuple[int, int]]:
    """Consecutive reviews [start, stop) of at most CHUNK_TOKENS real tokens each (one review if it is longer)."""
    ends = lengths.long().cumsum(0)
    bounds, start = [], 0
    while start < len(lengths):
        base = int(ends[start - 1]) if start else 0
        stop = max(start + 1, int(torch.searchsorted(ends, base + CHUNK_TOKENS, right=True)))
        bounds.append((start, stop))
        start = stop
    return bounds


def embed_split(model, tokens: Reader, params, device, features: Writer, states: StatesWriter | None, start) -> None:
    """Run the encoder over one split, a run of reviews at a time, writing each run's features and states."""
    lengths = tokens.tensor("lengths")
    keys = [key for key in tokens.header if key not in ("lengths", "labels")]
    hidden = model.config.hidden_size
    with tqdm(total=int(lengths.sum()), unit="tok", unit_scale=True, desc=f"embed {tokens.path.stem}") as bar:
        for first, stop in chunks(lengths):
            chunk = {key: tokens.read(key, first, stop) for key in keys} | {"lengths": lengths[first:stop]}
            row = int(lengths[:first].sum())
            rows = torch.empty(int(chunk["lengths"].sum()), hidden, dtype=STATES_DTYPE) if states else None
            vectors = embed(model, chunk, params.pooling, params.batch_size, device, None, rows, start or 0)
            features.write("features", first, vectors)
            if states is not None:
                states.write(row, rows)
            bar.update(int(chunk["lengths"].sum()))


def main() -> None:
    all_params = load_params()
    params = all_params.embed
    tokenizer_info = json.loads(TOKENIZATION_FILE.read_text(encoding="utf-8"))
    device = choose_device(params.device)
    precision = choose_precision(params.precision, device)
    probe = precision_probe(params.precision, device)
    use_all_cores()
    return_large_blocks()  # else glibc's heap grows with the number of batches
    model = load_encoder(tokenizer_info["model"], device, precision)
    start = first_trained_layer(all_params.finetune.layers, model.config.num_hidden_layers)
    print(f"embed: {tokenizer_info['model']} on {device} in {precision}, {params.pooling} pooling")

    tokens = {split: Reader(TOKENS_DIR / f"{split}.safetensors") for split in SPLITS}
    lengths = {split: t.tensor("lengths") for split, t in tokens.items()}
    # fp32 features and int64 labels, and the 16-bit states: checked before the long run, not after it
    needs = sum(len(n) * (model.config.hidden_size * 4 + 8) for n in lengths.values())
    if start is not None:
        needs += sum(int(n.sum()) for n in lengths.values()) * model.config.hidden_size * 2
    checksums = {}  # of each states file, for finetune to check (zh_sentiment/states.py)
    with atomic_dir(FEATURES_DIR, needs=needs) as out, atomic_dir(STATES_DIR) as states_out:
        for split in SPLITS:
            name, labels, n = f"{split}.safetensors", tokens[split].tensor("labels"), len(lengths[split])
            layout = {"features": (torch.float32, (n, model.config.hidden_size)), "labels": (labels.dtype, (n,))}
            features = Writer(out / name, layout)
            features.write("labels", 0, labels)
            states = None
            if start is not None:
                states = StatesWriter(states_out / name, lengths[split], labels, model.config.hidden_size)
            embed_split(model, tokens[split], params, device, features, states, start)
            features.close()
            if states is not None:
                checksums[name] = states.close()
        # the probe's figures are this machine's, kept in its cache: the same on every run here (precision.py)
        embedding = {"pooling": params.pooling, "precision": precision, "precision_probe": probe}
        write_json(out / EMBEDDING_FILE.name, {**tokenizer_info, **embedding})
        write_json(
            states_out / STATES_FILE.name,
            {
                **tokenizer_info,
                "layers": all_params.finetune.layers,
                "first_trained_layer": start,
                "precision": precision,
                "dtype": str(STATES_DTYPE).removeprefix("torch.") if start is not None else None,
                "sha256": checksums,
            },
        )


if __name__ == "__main__":
    run(main)
