"""evaluate: measure the frozen-encoder head on the validation and test splits.

Writes metrics/frozen_head.json and the reports in metrics/frozen_head/ (see
zh_sentiment/report.py): the same files every model writes.
"""

import pandas as pd
import torch

from zh_sentiment.classifier import load_features, load_head
from zh_sentiment.encoder import forward_inputs, load_pretrained, load_tokenizer
from zh_sentiment.errors import run
from zh_sentiment.explain import frozen_head_explainer, mistakes
from zh_sentiment.model_folder import read_info
from zh_sentiment.params import load_params
from zh_sentiment.paths import CLEAN_DIR, FROZEN_HEAD, INFO_FILE, model_dir
from zh_sentiment.report import write_test_report


@torch.no_grad()
def probabilities(head: torch.nn.Linear, split: str) -> tuple:
    features, labels = load_features(split)
    return labels.numpy(), torch.softmax(head(features), dim=1).numpy()


def main() -> None:
    load_params()  # evaluate has no params of its own, but a broken params.yaml still stops it
    info = read_info(model_dir(FROZEN_HEAD))
    head = load_head(model_dir(FROZEN_HEAD), info)
    y_validation, p_validation = probabilities(head, "validation")
    y_test, p_test = probabilities(head, "test")
    texts = pd.read_csv(CLEAN_DIR / "test.csv", dtype={"text": str}, keep_default_na=False)["text"].tolist()
    validation_accuracy = (p_validation.argmax(1) == y_validation).mean()
    # the encoder model.json names, for the mistakes' top characters (fp32 on the CPU: gradients, anywhere)
    source = f"'model' in {model_dir(FROZEN_HEAD) / INFO_FILE}"
    encoder = load_pretrained(info["model"], source).eval().requires_grad_(False)
    keys = [key for key in forward_inputs(encoder) if key != "input_ids"]
    explainer = frozen_head_explainer(
        encoder, head, info["pooling"], load_tokenizer(info["model"], source), info["max_length"], keys
    )
    write_test_report(
        FROZEN_HEAD, y_test, p_test, info["label_names"], texts, validation_accuracy, y_validation, mistakes(explainer)
    )


if __name__ == "__main__":
    run(main)
