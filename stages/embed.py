"""embed: run the frozen encoder once over every split's cached tokens.

Writes data/features/<split>.safetensors (one fp32 vector per review, and its
label) and data/features/embedding.json (model, max_length, pooling, precision):
train and evaluate then never touch the encoder again.
"""

import json

from safetensors.torch import load_file, save_file

from zh_sentiment.encoder import choose_device, choose_precision, embed, load_encoder, use_all_cores
from zh_sentiment.errors import run
from zh_sentiment.outputs import atomic_dir, write_json
from zh_sentiment.params import load_params
from zh_sentiment.paths import EMBEDDING_FILE, FEATURES_DIR, SPLITS, TOKENIZATION_FILE, TOKENS_DIR


def main() -> None:
    params = load_params().embed
    tokenizer_info = json.loads(TOKENIZATION_FILE.read_text(encoding="utf-8"))
    device = choose_device(params.device)
    precision = choose_precision(params.precision, device)
    use_all_cores()
    model = load_encoder(tokenizer_info["model"], device, precision)
    print(f"embed: {tokenizer_info['model']} on {device} in {precision}, {params.pooling} pooling")

    tokens = {split: load_file(TOKENS_DIR / f"{split}.safetensors") for split in SPLITS}
    # fp32 features and int64 labels: checked before the long run, not after it
    needs = sum(len(t["labels"]) * (model.config.hidden_size * 4 + 8) for t in tokens.values())
    with atomic_dir(FEATURES_DIR, needs=needs) as out:
        for split in SPLITS:
            features = embed(model, tokens[split], params.pooling, params.batch_size, device, f"embed {split}")
            save_file({"features": features, "labels": tokens[split]["labels"]}, out / f"{split}.safetensors")
        write_json(out / EMBEDDING_FILE.name, {**tokenizer_info, "pooling": params.pooling, "precision": precision})


if __name__ == "__main__":
    run(main)
