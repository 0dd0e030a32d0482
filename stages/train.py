"""train: fit a linear head on the cached features; keep the epoch with the best validation accuracy.

Writes models/frozen_head/ (head.pt, model.json with the validation accuracy), metrics/frozen_head/training.json
(the best epoch), metrics/frozen_head/live/ (loss and accuracy per epoch through dvclive, zh_sentiment/live.py)
and metrics/frozen_head/curves.png (the same as an image, which `dvc plots show` shows offline).
"""

import copy
import json
from collections.abc import Callable

import torch
import torch.nn.functional as F

from zh_sentiment.classifier import load_features, save_frozen_head
from zh_sentiment.errors import run
from zh_sentiment.live import epoch_logger
from zh_sentiment.params import Train, load_params
from zh_sentiment.paths import EMBEDDING_FILE, FROZEN_HEAD, LABELS_FILE, model_dir
from zh_sentiment.progress import trange
from zh_sentiment.report import write_training_report


@torch.no_grad()
def loss_and_accuracy(head: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    logits = head(x)
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def fit(
    train: tuple, validation: tuple, num_labels: int, params: Train, on_epoch: Callable[[dict], None] | None = None
) -> tuple[torch.nn.Linear, dict, list[dict]]:
    """The head of the best epoch (validation accuracy, then lower loss), that epoch's row, and one row per epoch run,
    each also passed to `on_epoch` as it ends.

    The head learns on standardized features (train mean and std): frozen-encoder
    features have scales from 1e-3 to 1e1, which plain AdamW steps handle badly.
    The standardization is folded into the returned Linear, so it takes raw features.
    """
    # One thread: the head's matmuls are tiny, and with 2 threads while another process held a core
    # an epoch ran 20x slower (7.4 s against 0.35 s on 7,570 reviews) waiting for the busy one.
    torch.set_num_threads(1)
    torch.manual_seed(params.seed)
    x, y = train
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    x = (x - mean) / std
    validation = ((validation[0] - mean) / std, validation[1])
    head = torch.nn.Linear(x.shape[1], num_labels)
    optimizer = torch.optim.AdamW(head.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    shuffle = torch.Generator().manual_seed(params.seed)
    history, best, best_head = [], None, None

    for epoch in (bar := trange(1, params.epochs + 1, desc="train", unit="epoch")):
        head.train()
        for batch in torch.randperm(len(y), generator=shuffle).split(params.batch_size):
            loss = F.cross_entropy(head(x[batch]), y[batch])  # takes logits: the softmax is inside
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        head.eval()
        train_loss, train_accuracy = loss_and_accuracy(head, x, y)
        validation_loss, validation_accuracy = loss_and_accuracy(head, *validation)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "validation_loss": validation_loss,
                "validation_accuracy": validation_accuracy,
            }
        )
        bar.set_postfix(validation_accuracy=f"{validation_accuracy:.4f}")
        if on_epoch:
            on_epoch(history[-1])
        if best is None or (validation_accuracy, -validation_loss) > (
            best["validation_accuracy"],
            -best["validation_loss"],
        ):
            best, best_head = history[-1], copy.deepcopy(head)
        elif epoch - best["epoch"] >= params.patience:
            break
    return fold_standardization(best_head, mean, std), best, history


@torch.no_grad()
def fold_standardization(head: torch.nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> torch.nn.Linear:
    """W((x - mean) / std) + b  ==  (W / std) x + (b - (W / std) mean)"""
    folded = torch.nn.Linear(head.in_features, head.out_features)
    folded.weight.copy_(head.weight / std)
    folded.bias.copy_(head.bias - folded.weight @ mean)
    return folded.eval()


def main() -> None:
    params = load_params().train
    torch.use_deterministic_algorithms(True)
    encoder = json.loads(EMBEDDING_FILE.read_text(encoding="utf-8"))
    label_names = json.loads(LABELS_FILE.read_text(encoding="utf-8"))["names"]

    with epoch_logger(FROZEN_HEAD) as log_epoch:
        head, best, history = fit(
            load_features("train"), load_features("validation"), len(label_names), params, log_epoch
        )
    info = {
        **encoder,  # the encoder, max_length, pooling and precision the features were made with
        "num_labels": len(label_names),
        "label_names": label_names,
        "validation": {"accuracy": best["validation_accuracy"], "loss": best["validation_loss"]},
        "test": None,  # measured by the evaluate stage, in metrics/frozen_head.json
    }
    save_frozen_head(head, info, model_dir(FROZEN_HEAD))
    write_training_report(FROZEN_HEAD, history, best)
    print(f"train: best epoch {best['epoch']} of {len(history)}, validation accuracy {best['validation_accuracy']:.4f}")


if __name__ == "__main__":
    run(main)
