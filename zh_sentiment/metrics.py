"""Classification metrics, the same for every model the pipeline trains."""

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score, roc_curve
from sklearn.preprocessing import label_binarize


def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray) -> dict:
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
    """The ROC curve of the positive class (id 1); for more classes, the micro-average one-vs-rest.
    No points when the split holds one class only: then there is no false (or no true) positive rate."""
    if probabilities.shape[1] == 2:
        truth, scores = np.asarray(y_true) == 1, probabilities[:, 1]
    else:
        truth = label_binarize(y_true, classes=list(range(probabilities.shape[1]))).ravel()
        scores = probabilities.ravel()
    if len(np.unique(truth)) < 2:
        return pd.DataFrame({"fpr": [], "tpr": []})
    fpr, tpr, _ = roc_curve(truth, scores)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr}).round(6)
