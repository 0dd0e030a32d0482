"""evaluate: measure the trained head on the test split.

Writes metrics/test.json (accuracy, macro precision/recall/F1, ROC AUC, n),
metrics/test_predictions.csv (one row per review: the confusion-matrix plot),
metrics/roc.csv (the ROC curve plot) and metrics/misclassified.csv (the wrong
predictions, most confident first, for reading).
"""

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score, roc_curve
from sklearn.preprocessing import label_binarize

from stages.classifier import load_classifier, load_features
from stages.errors import run
from stages.outputs import write_csv, write_json
from stages.params import load_params
from stages.paths import CLEAN_DIR, MISCLASSIFIED, ROC_POINTS, TEST_METRICS, TEST_PREDICTIONS


def test_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
    num_labels = probabilities.shape[1]
    y_pred = probabilities.argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=list(range(num_labels)), average="macro", zero_division=0
    )
    metrics = {
        "n": int(len(y_true)),
        "accuracy": accuracy_score(y_true, y_pred),
        "precision_macro": precision,
        "recall_macro": recall,
        "f1_macro": f1,
    }
    if len(np.unique(y_true)) == num_labels:  # AUC is undefined when a class is absent from the test split
        metrics["roc_auc"] = (
            roc_auc_score(y_true, probabilities[:, 1])
            if num_labels == 2
            else roc_auc_score(y_true, probabilities, multi_class="ovr", average="macro")
        )
    return {key: round(float(value), 6) if isinstance(value, float) else value for key, value in metrics.items()}


def roc_points(y_true: np.ndarray, probabilities: np.ndarray) -> pd.DataFrame:
    """The ROC curve of the positive class (id 1); for more classes, the micro-average one-vs-rest."""
    if probabilities.shape[1] == 2:
        fpr, tpr, _ = roc_curve(y_true, probabilities[:, 1])
    else:
        onehot = label_binarize(y_true, classes=list(range(probabilities.shape[1])))
        fpr, tpr, _ = roc_curve(onehot.ravel(), probabilities.ravel())
    return pd.DataFrame({"fpr": fpr, "tpr": tpr}).round(6)


def main() -> None:
    load_params()  # evaluate has no params of its own, but a broken params.yaml still stops it
    head, info = load_classifier()
    features, labels = load_features("test")
    probabilities = torch.softmax(head(features), dim=1).numpy()
    y_true = labels.numpy()
    names = np.array(info["label_names"])

    metrics = test_metrics(y_true, probabilities)
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
