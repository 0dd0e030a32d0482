"""What every trained model reports, in the same files and keys, so the models compare side by side.

metrics/<model>.json           the headline: test accuracy, macro F1, ROC AUC, n; validation accuracy;
                               test_classes / validation_classes only when a split lacks a class
metrics/<model>/test.json      every test metric, macro precision and recall included
metrics/<model>/predictions.csv one row per test review (the confusion-matrix plot)
metrics/<model>/roc.csv         the test ROC curve (a plot)
metrics/<model>/misclassified.csv  the wrong predictions, most confident first, for reading, with the
                               characters that pushed most toward the wrong label (zh_sentiment/explain.py)
metrics/<model>/confusion.png, roc.png  the same as images, which `dvc plots show` shows offline

and, for the models trained in epochs:

metrics/<model>/live/           loss and accuracy per epoch, logged through dvclive (zh_sentiment/live.py),
                                and curves.png, its image
metrics/<model>/training.json   the epoch kept and its figures
"""

from collections.abc import Callable

import numpy as np
import pandas as pd

from zh_sentiment import plots
from zh_sentiment.metrics import classification_metrics, roc_points
from zh_sentiment.outputs import write_csv, write_json
from zh_sentiment.paths import model_metrics, model_reports
from zh_sentiment.progress import tqdm

# What `dvc metrics show` compares, one row per model: few enough columns to read in a terminal.
HEADLINE = ("n", "accuracy", "f1_macro", "roc_auc")
# The most confident mistakes whose top characters misclassified.csv gives: integrated gradients on bert-base
# take seconds per review on a CPU (benchmark: explain), so a model with many mistakes is not explained whole.
EXPLAINED_MISTAKES = 50


def missing_classes(model: str, split: str, labels: np.ndarray, label_names: list[str]) -> dict:
    """Warn when a split lacks a class: its ROC AUC is undefined and macro averages count that class as 0.

    The count of classes present is then recorded as `<split>_classes`, a key only present in that case.
    """
    present = sorted(set(np.asarray(labels).tolist()))
    if len(present) == len(label_names):
        return {}
    absent = [name for i, name in enumerate(label_names) if i not in present]
    print(
        f"{model}: warning: the {split} split has no review of class {', '.join(absent)}: "
        + ("no ROC AUC, and " if split == "test" else "")
        + "its accuracy says little. Give that split reviews of every class."
    )
    return {f"{split}_classes": len(present)}


def write_test_report(
    model: str,
    y_true: np.ndarray,
    probabilities: np.ndarray,
    label_names: list[str],
    texts: list[str],
    validation_accuracy: float,
    y_validation: np.ndarray | None = None,
    explain: Callable[[str, int], str] | None = None,
) -> dict:
    """Write the model's metrics and test reports; return the headline metrics.

    `explain(text, label)` gives the characters that pushed a review most toward `label`: misclassified.csv's
    top_characters, for its EXPLAINED_MISTAKES most confident mistakes."""
    test = classification_metrics(y_true, probabilities)
    metrics = {key: test[key] for key in HEADLINE if key in test}  # no roc_auc when the test split lacks a class
    metrics["validation_accuracy"] = round(float(validation_accuracy), 6)
    for split, labels in (("test", y_true), ("validation", y_validation)):
        if labels is not None:
            metrics.update(missing_classes(model, split, labels, label_names))
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
    if explain is not None:
        wrong = wrong.assign(top_characters=top_characters(model, wrong, y_pred, explain))
    roc = roc_points(y_true, probabilities)
    reports = model_reports(model)
    write_json(model_metrics(model), metrics)
    write_json(reports / "test.json", test)
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


def top_characters(model: str, wrong: pd.DataFrame, y_pred: np.ndarray, explain) -> list[str]:
    explained = wrong.index[:EXPLAINED_MISTAKES]
    if len(wrong) > len(explained):
        print(f"{model}: the top characters of the {len(explained)} most confident of {len(wrong)} mistakes")
    found = {i: explain(wrong.at[i, "text"], int(y_pred[i])) for i in tqdm(explained, desc=f"{model}: explain")}
    return [found.get(i, "") for i in wrong.index]


def write_training_report(model: str, history: list[dict], best: dict, **facts) -> None:
    """The curves of the per-epoch history (rows of epoch, train_loss, train_accuracy, validation_loss,
    validation_accuracy; dvclive logged them as they came), and the kept epoch's row with any other `facts`."""
    frame = pd.DataFrame(history).round(6)
    plots.training_curves(model, frame, best_epoch=best["epoch"])
    write_json(
        model_reports(model) / "training.json",
        {
            "best_epoch": best["epoch"],
            "epochs_run": len(history),
            **facts,
            **{key: round(value, 6) for key, value in best.items() if key != "epoch"},
        },
    )
