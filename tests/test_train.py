"""The frozen head (stages/train.py) and the metrics every model reports (zh_sentiment/metrics.py), as units."""

import numpy as np
import pytest
import torch

from stages.train import fit, fold_standardization
from zh_sentiment.metrics import classification_metrics, roc_points
from zh_sentiment.params import Train


def train_params(**changes) -> Train:
    values = {"epochs": 30, "batch_size": 8, "lr": 0.05, "weight_decay": 0.0, "patience": 3, "seed": 0}
    return Train(**{**values, **changes})


def test_the_folded_linear_on_raw_features_equals_the_head_on_standardized_ones():
    torch.manual_seed(0)
    x = torch.randn(50, 6) * torch.tensor([1e-2, 1e-1, 1.0, 10.0, 3.0, 0.5]) + torch.tensor([0.5, -2, 0, 1, 0, 7])
    mean, std = x.mean(0), x.std(0)
    head = torch.nn.Linear(6, 3)
    folded = fold_standardization(head, mean, std)
    torch.testing.assert_close(folded(x), head((x - mean) / std), atol=1e-4, rtol=1e-4)
    assert not folded.training


def separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    return torch.randn(n, 4, generator=generator) + 3 * y[:, None].float(), y


def test_training_stops_after_patience_epochs_without_a_better_validation_accuracy():
    """Validation labels are the opposite of train's: every epoch of learning makes validation
    worse, so epoch 1 stays the best and training stops at epoch 1 + patience."""
    x, y = separable(64, 0)
    head, best, history = fit((x, y), (x[:32], 1 - y[:32]), 2, train_params(patience=4))
    assert best["epoch"] == 1
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5]


def test_without_a_plateau_every_epoch_runs():
    """Noise labels: patience larger than epochs never stops training early."""
    x, _ = separable(40, 2)
    y = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(3))
    _, _, history = fit((x, y), (x[:10], y[:10]), 2, train_params(epochs=7, patience=7))
    assert [row["epoch"] for row in history] == list(range(1, 8))


def test_the_kept_head_is_the_best_epoch_not_the_last():
    x, y = separable(64, 4)
    head, best, history = fit((x, y), separable(32, 5), 2, train_params(epochs=12, patience=12, lr=0.5))
    scores = [(row["validation_accuracy"], -row["validation_loss"]) for row in history]
    assert best == history[scores.index(max(scores))]
    validation_x, validation_y = separable(32, 5)
    with torch.no_grad():
        accuracy = (head(validation_x).argmax(1) == validation_y).float().mean().item()
    assert accuracy == pytest.approx(best["validation_accuracy"], abs=1e-6)


def test_three_class_metrics_are_macro_averages_and_auc_is_one_vs_rest():
    y_true = np.array([0, 1, 2, 0, 2, 1])
    probabilities = np.array(
        [[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3], [0.5, 0.1, 0.4], [0.2, 0.5, 0.3]]
    )
    # predicted 0, 1, 2, 1, 0, 1: class 0 P=1/2 R=1/2, class 1 P=2/3 R=1, class 2 P=1 R=1/2
    metrics = classification_metrics(y_true, probabilities)
    assert metrics["n"] == 6
    assert metrics["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert metrics["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3, abs=1e-6)
    assert metrics["recall_macro"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3, abs=1e-6)
    f1 = [2 * p * r / (p + r) for p, r in [(1 / 2, 1 / 2), (2 / 3, 1), (1, 1 / 2)]]
    assert metrics["f1_macro"] == pytest.approx(sum(f1) / 3, abs=1e-6)
    assert 0.5 < metrics["roc_auc"] < 1


def test_a_class_absent_from_the_test_split_counts_as_zero_and_leaves_auc_out():
    y_true = np.array([0, 1, 0, 1])  # class 2 never occurs, and is never predicted
    probabilities = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    metrics = classification_metrics(y_true, probabilities)
    assert metrics["accuracy"] == 1.0
    assert metrics["precision_macro"] == metrics["recall_macro"] == pytest.approx(2 / 3, abs=1e-6)
    assert "roc_auc" not in metrics


def test_the_binary_roc_runs_from_0_0_to_1_1():
    y_true = np.array([0, 0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.4, 0.6], [0.65, 0.35], [0.2, 0.8]])
    points = roc_points(y_true, probabilities)
    assert list(points.columns) == ["fpr", "tpr"]
    assert points.iloc[0].tolist() == [0.0, 0.0] and points.iloc[-1].tolist() == [1.0, 1.0]
    assert points["fpr"].is_monotonic_increasing and points["tpr"].is_monotonic_increasing


@pytest.mark.filterwarnings("error")  # sklearn warns when it draws a meaningless curve
def test_the_roc_file_of_a_single_class_split_has_no_points_rather_than_nan():
    probabilities = np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]])
    points = roc_points(np.array([1, 1, 1]), probabilities)
    assert list(points.columns) == ["fpr", "tpr"] and len(points) == 0
    assert len(roc_points(np.array([0, 0, 1]), probabilities)) > 0
