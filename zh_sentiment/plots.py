"""PNG images of each model's results, for `dvc plots show` pages read offline.

DVC draws its vega plots with scripts loaded from a CDN, so without a network only
images show. Every model gets, in metrics/<model>/:
  curves.png     loss and accuracy per epoch, train and validation (models that train in epochs)
  confusion.png  the test confusion matrix, counts in the cells
  roc.png        the test ROC curve with its AUC
The same data stays in CSV files for the vega plots that `dvc plots diff` overlays.
Images are saved without a version stamp, so the same numbers give the same bytes.
"""

from functools import cache
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a file, never a window
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import font_manager, ft2font

from zh_sentiment.outputs import atomic_file
from zh_sentiment.paths import model_reports

CURVES = "curves.png"
CONFUSION = "confusion.png"
ROC = "roc.png"

TRAIN_COLOR, VALIDATION_COLOR = "#4c78a8", "#f58518"


def draws(font_file: str, text: str) -> bool:
    try:
        charmap = ft2font.FT2Font(font_file).get_charmap()
    except (OSError, RuntimeError):
        return False
    return all(ord(char) in charmap for char in text)


def label_font(label_names: list[str]) -> tuple[list[str], list[str]]:
    return font_for(tuple(label_names))


@cache  # one search, and one warning, per set of names
def font_for(label_names: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The label names as the images show them, and the font families that draw them.

    Label names may be Chinese (clean.label_names), which matplotlib's own font lacks: use an
    installed font that has them (e.g. Debian's fonts-noto-cjk), else show the label ids rather
    than empty boxes.
    """
    default = font_manager.findfont("DejaVu Sans")
    text = "".join(label_names)
    if draws(default, text):
        return list(label_names), ["DejaVu Sans"]
    for font in font_manager.fontManager.ttflist:
        # Last Resort maps every character to a placeholder box: it "has" them all
        if not font.name.startswith("Last Resort") and draws(font.fname, text):
            return list(label_names), ["DejaVu Sans", font.name]
    print(
        f"plots: no installed font draws the label names {list(label_names)}; the images show their ids 0..k-1 "
        "(install a font that has them, e.g. `apt-get install fonts-noto-cjk`, and re-run)"
    )
    return [str(i) for i in range(len(label_names))], ["DejaVu Sans"]


def title_of(model: str) -> str:
    """frozen_head -> Frozen head"""
    return model.replace("_", " ").capitalize()


def save(fig: plt.Figure, path: Path) -> None:
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})  # no version stamp: same bytes each run
    plt.close(fig)


def training_curves(model: str, history: pd.DataFrame, best_epoch: int | None = None) -> Path:
    """metrics/<model>/curves.png from the history.csv columns: epoch, train_loss, validation_loss,
    train_accuracy, validation_accuracy. `best_epoch`, the epoch whose weights were kept, is marked."""
    fig, (loss, accuracy) = plt.subplots(1, 2, figsize=(11, 4))
    for ax, quantity in [(loss, "loss"), (accuracy, "accuracy")]:
        for split, color in [("train", TRAIN_COLOR), ("validation", VALIDATION_COLOR)]:
            ax.plot(history["epoch"], history[f"{split}_{quantity}"], color=color, marker=".", label=split)
        if best_epoch is not None:
            ax.axvline(best_epoch, color="grey", linestyle="--", label=f"kept: epoch {best_epoch}")
        ax.set(
            xlabel="epoch",
            ylabel="cross-entropy loss" if quantity == "loss" else "accuracy",
            title=f"{title_of(model)}: {quantity} per epoch",
        )
        ax.grid(alpha=0.3)
        ax.legend()
    # Epochs are whole numbers; a handful of epochs would otherwise get ticks at 1.5, 2.5, ...
    loss.xaxis.get_major_locator().set_params(integer=True)
    accuracy.xaxis.get_major_locator().set_params(integer=True)
    path = model_reports(model) / CURVES
    save(fig, path)
    return path


def confusion_matrix(model: str, y_true: np.ndarray, y_pred: np.ndarray, label_names: list[str]) -> Path:
    """metrics/<model>/confusion.png: test counts, actual label per row, predicted label per column."""
    k = len(label_names)
    counts = np.zeros((k, k), dtype=int)
    np.add.at(counts, (y_true, y_pred), 1)
    size = max(4.5, 1.2 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, label="reviews")
    for row in range(k):
        for column in range(k):
            dark = counts[row, column] > counts.max() / 2
            color = "white" if dark else "black"
            ax.text(column, row, str(counts[row, column]), ha="center", va="center", fontsize=14, color=color)
    names, family = label_font(label_names)
    ax.set_xticks(range(k), names, fontfamily=family)
    ax.set_yticks(range(k), names, fontfamily=family)
    accuracy = np.trace(counts) / counts.sum() if counts.sum() else 0.0
    ax.set(
        xlabel="predicted label",
        ylabel="actual label",
        title=f"{title_of(model)}: test confusion matrix\n{counts.sum()} reviews, accuracy {accuracy:.4f}",
    )
    path = model_reports(model) / CONFUSION
    save(fig, path)
    return path


def roc_curve(model: str, roc: pd.DataFrame, label_names: list[str]) -> Path:
    """metrics/<model>/roc.png from the roc.csv points (fpr, tpr); the AUC shown is the area under them.

    Two labels: the curve of label 1 (zh_sentiment.metrics.roc_points); more: the micro-average one-vs-rest curve.
    """
    area = float(np.trapezoid(roc["tpr"], roc["fpr"]))
    names, family = label_font(label_names)
    which = f"positive class: {names[1]}" if len(names) == 2 else "micro-average, one-vs-rest"
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot(roc["fpr"], roc["tpr"], color=TRAIN_COLOR, linewidth=2, label=f"AUC = {area:.4f}")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="chance (AUC = 0.5)")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        aspect="equal",
        xlabel="false positive rate",
        ylabel="true positive rate",
    )
    ax.set_title(f"{title_of(model)}: test ROC curve, AUC {area:.4f}\n({which})", fontfamily=family)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    path = model_reports(model) / ROC
    save(fig, path)
    return path
