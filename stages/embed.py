"""embed: run the frozen encoder once over every split's cached tokens.

Writes data/features/<split>.safetensors (one fp32 vector per review, and its
label) and data/features/embedding.json (model, max_length, pooling, precision):
train and evaluate then never touch the encoder again.

With finetune.layers: N it also writes data/states/<split>.safetensors: the hidden
states entering the top N layers, for the real tokens only, in fp16 (see
zh_sentiment/finetune.py), and data/states/states.json. With `all` data/states/
holds only states.json: finetune then reads the tokens.
"""

import json

import torch
from safetensors.torch import load_file, save_file

from zh_sentiment.encoder import choose_device, embed, load_encoder, use_all_cores
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
from zh_sentiment.states import STATES_DTYPE, first_trained_layer, save_states


def main() -> None:
    all_params = load_params()
    params = all_params.embed
    tokenizer_info = json.loads(TOKENIZATION_FILE.read_text(encoding="utf-8"))
    device = choose_device(params.device)
    precision = choose_precision(params.precision, device)
    probe = precision_probe(params.precision, device)
    use_all_cores()
    model = load_encoder(tokenizer_info["model"], device, precision)
    start = first_trained_layer(all_params.finetune.layers, model.config.num_hidden_layers)
    print(f"embed: {tokenizer_info['model']} on {device} in {precision}, {params.pooling} pooling")

    tokens = {split: load_file(TOKENS_DIR / f"{split}.safetensors") for split in SPLITS}
    # fp32 features and int64 labels, and the 16-bit states: checked before the long run, not after it
    needs = sum(len(t["labels"]) * (model.config.hidden_size * 4 + 8) for t in tokens.values())
    if start is not None:
        needs += sum(int(t["lengths"].sum()) for t in tokens.values()) * model.config.hidden_size * 2
    checksums = {}  # of each states file, for finetune to check (zh_sentiment/states.py)
    with atomic_dir(FEATURES_DIR, needs=needs) as out, atomic_dir(STATES_DIR) as states_out:
        for split in SPLITS:
            states = None
            if start is not None:
                n_tokens = int(tokens[split]["lengths"].sum())
                states = torch.empty(n_tokens, model.config.hidden_size, dtype=STATES_DTYPE)
            features = embed(
                model, tokens[split], params.pooling, params.batch_size, device, f"embed {split}", states, start or 0
            )
            save_file({"features": features, "labels": tokens[split]["labels"]}, out / f"{split}.safetensors")
            if states is not None:
                lengths, labels = tokens[split]["lengths"], tokens[split]["labels"]
                name = f"{split}.safetensors"
                checksums[name] = save_states(states_out / name, states, lengths, labels)
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
