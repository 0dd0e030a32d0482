"""The trained classifier: a linear head and, in model.json, what it needs to read new reviews.

models/ holds everything predict needs (encoder id or folder, max_length, pooling,
label names), so a trained models/ folder can be copied and used elsewhere.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from zh_sentiment.errors import PipelineError
from zh_sentiment.outputs import atomic_dir, write_json
from zh_sentiment.paths import FEATURES_DIR

HEAD_FILE = "head.pt"
INFO_FILE = "model.json"


def load_features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = load_file(FEATURES_DIR / f"{split}.safetensors")
    return tensors["features"], tensors["labels"]


def save_classifier(head: torch.nn.Linear, info: dict, folder: Path, encoder=None, tokenizer=None) -> None:
    """Write the model folder in one go; a fine-tuned model brings its encoder and tokenizer (model "." in info)."""
    with atomic_dir(folder) as out:
        if encoder is not None:
            encoder.save_pretrained(out)  # safetensors
            tokenizer.save_pretrained(out)
        torch.save(head.state_dict(), out / HEAD_FILE)
        write_json(out / INFO_FILE, info)


def load_classifier(folder: Path) -> tuple[torch.nn.Linear, dict]:
    if not (folder / HEAD_FILE).exists() or not (folder / INFO_FILE).exists():
        raise PipelineError(
            f"no trained model in {folder}/ ({HEAD_FILE} and {INFO_FILE} are needed): run `dvc repro` first, "
            "or pass the folder of a trained model."
        )
    info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
    state = torch.load(folder / HEAD_FILE, map_location="cpu", weights_only=True)
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.eval().requires_grad_(False), info
