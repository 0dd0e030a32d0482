"""evaluate: measure the trained head on the test split.

Writes metrics/test.json (accuracy, macro precision/recall/F1, ROC AUC, n),
metrics/test_predictions.csv (one row per review: the confusion-matrix plot),
metrics/roc.csv (the ROC curve plot) and metrics/misclassified.csv (the wrong
predictions, most confident first, for reading).
"""

import numpy as np
import pandas as pd
import torch

from zh_sentiment.classifier import load_classifier, load_features
from zh_sentiment.errors import run
from zh_sentiment.metrics import classification_metrics, roc_points
from zh_sentiment.outputs import write_csv, write_json
from zh_sentiment.params import load_params
from zh_sentiment.paths import CLEAN_DIR, MISCLASSIFIED, ROC_POINTS, TEST_METRICS, TEST_PREDICTIONS


def main() -> None:
    load_params()  # evaluate has no params of its own, but a broken params.yaml still stops it
    head, info = load_classifier()
    features, labels = load_features("test")
    probabilities = torch.softmax(head(features), dim=1).numpy()
    y_true = labels.numpy()
    names = np.array(info["label_names"])

    metrics = classification_metrics(y_true, probabilities)
    texts = pd.read_csv(CLEAN_DIR / "test.csv", dtype={"text": str}, keep_default_na=False)["text"]
    y_pred = probabilities.argmax(1)
    predictions = pd.DataFrame(
        {
            "actual": names[y_true],
            "predicted": names[y_pred],
            "probability": probabilities.max(1).round(6),
            "text": texts,
        }
    )
    wrong = predictions[y_pred != y_true].sort_values("probability", ascending=False, kind="stable")

    write_json(TEST_METRICS, metrics)
    write_csv(TEST_PREDICTIONS, predictions)
    write_csv(ROC_POINTS, roc_points(y_true, probabilities))
    write_csv(MISCLASSIFIED, wrong)
    print(f"evaluate: test accuracy {metrics['accuracy']:.4f} on {metrics['n']} reviews, {len(wrong)} misclassified")


if __name__ == "__main__":
    run(main)
