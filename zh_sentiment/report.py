"""What every trained model reports, in the same files and keys, so the models compare side by side.

metrics/<model>.json           test accuracy, macro precision/recall/F1, ROC AUC, n; validation accuracy
metrics/<model>/predictions.csv one row per test review (the confusion-matrix plot)
metrics/<model>/roc.csv         the test ROC curve (a plot)
metrics/<model>/misclassified.csv  the wrong predictions, most confident first, for reading
metrics/<model>/confusion.png, roc.png  the same as images, which `dvc plots show` shows offline
"""

import numpy as np
import pandas as pd

from zh_sentiment import plots
from zh_sentiment.metrics import classification_metrics, roc_points
from zh_sentiment.outputs import write_csv, write_json
from zh_sentiment.paths import model_metrics, model_reports


def write_test_report(
    model: str,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    label_names: list[str],
    texts: list[str],
    validation_accuracy: float,
) -> dict:
    """Write the model's metrics and test reports; return the metrics."""
    metrics = {
        **classification_metrics(y_true, probabilities),
        "validation_accuracy": round(float(validation_accuracy), 6),
    }
    names = np.array(label_names)
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
    roc = roc_points(y_true, probabilities)
    reports = model_reports(model)
    write_json(model_metrics(model), metrics)
    write_csv(reports / "predictions.csv", predictions)
    write_csv(reports / "roc.csv", roc)
    write_csv(reports / "misclassified.csv", wrong)
    plots.confusion_matrix(model, y_true, y_pred, label_names)
    plots.roc_curve(model, roc, label_names)
    print(
        f"{model}: test accuracy {metrics['accuracy']:.4f} on {metrics['n']} reviews, {len(wrong)} misclassified; "
        f"validation accuracy {metrics['validation_accuracy']:.4f}"
    )
    return metrics
