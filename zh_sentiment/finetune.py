"""Fine-tuning: the encoder's top N layers (or all of them) and its sequence-classification head, trained together.

With `finetune.layers: N` the lower L-N layers stay frozen, so the hidden states that enter
layer L-N never change: embed computes them once (data/states/, real tokens only, fp16) and
training runs only the top N layers on them, an epoch costing about N/L of a full one.
With `all` every layer (embeddings included) trains from the tokens in data/tokens/.

Data-parallel over processes started by torchrun: every process sees the same shuffled
batches and takes every world-th review of each, DDP averages the gradients, so a step
is the same step one process would take on the whole batch.
"""

import math
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm import tqdm
from transformers import get_linear_schedule_with_warmup
from transformers.masking_utils import create_bidirectional_mask

from zh_sentiment.encoder import TOKEN_INPUTS
from zh_sentiment.errors import PipelineError
from zh_sentiment.params import Finetune

GROUP = 50  # length grouping: reviews are sorted by length within runs of GROUP batches


# --- data: one split, handed out in batches padded to their own longest review ---------------------------------


class Tokens:
    """The tokenized reviews (data/tokens), for training every layer."""

    def __init__(self, path):
        self.tokens = load_file(path)
        self.labels, self.lengths = self.tokens["labels"], self.tokens["lengths"].long()

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        width = int(self.lengths[index].max())
        return {key: self.tokens[key][index, :width].long() for key in TOKEN_INPUTS if key in self.tokens}


def length_grouped_batches(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of reviews of similar length, so padding each batch to its longest review wastes little:
    shuffle, sort each run of GROUP batches' worth of reviews by length, cut it into batches, shuffle the batches."""
    order = torch.randperm(len(lengths), generator=generator)
    batches = []
    for run in order.split(batch_size * GROUP):
        batches += run[torch.argsort(lengths[run], descending=True, stable=True)].split(batch_size)
    return [batches[i] for i in torch.randperm(len(batches), generator=generator)]


# --- the model ------------------------------------------------------------------------------------------------


class FineTuned(torch.nn.Module):
    """A standard *ForSequenceClassification model (what models/finetuned holds, what `pipeline` loads);
    its layers from `start` up and its head train (every weight when start is None).

    It takes a batch of tokens (the whole model runs) or of cached states (only the layers from `start`
    up, then the head, run): both compute the same logits, since the frozen layers below stay in eval mode.
    The head is the architecture's own; for BERT: its pooler (dense + tanh on [CLS]), dropout, a linear layer.
    """

    def __init__(self, model: torch.nn.Module, start: int | None):
        super().__init__()
        base = model.base_model
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        if start is not None and (layers is None or getattr(base, "pooler", None) is None):
            raise PipelineError(
                f"finetune.layers: a number needs a BERT-style model (encoder.layer and a pooler); "
                f"{type(model).__name__} is not one. Set finetune.layers: all."
            )
        self.model, self.start = model, start
        model.requires_grad_(start is None)
        if start is not None:
            for trained in (layers[start:], base.pooler, model.dropout, model.classifier):
                trained.requires_grad_(True)

    @property
    def num_labels(self) -> int:
        return self.model.config.num_labels

    def train(self, mode: bool = True):
        super().train(mode)
        if self.start is not None:  # frozen layers: no dropout, as when embed cached their output
            self.model.base_model.embeddings.eval()
            self.model.base_model.encoder.layer[: self.start].eval()
        return self

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if "states" not in batch:
            return self.model(**{key: batch[key] for key in TOKEN_INPUTS if key in batch}).logits
        base, hidden = self.model.base_model, batch["states"]
        # The mask BertModel.forward builds for its layers (transformers 5: padding keys masked out;
        # None for sdpa when nothing is padded): the layers then compute what they compute inside BertModel.
        mask = create_bidirectional_mask(
            config=base.config, inputs_embeds=hidden, attention_mask=batch["attention_mask"]
        )
        for layer in base.encoder.layer[self.start :]:
            hidden = layer(hidden, mask)
        # BertForSequenceClassification.forward from here: pooler, dropout, classifier
        return self.model.classifier(self.model.dropout(base.pooler(hidden)))


def make_optimizer(model: torch.nn.Module, params: Finetune) -> torch.optim.AdamW:
    """AdamW over the trainable weights; biases and LayerNorm weights (the 1-D ones) get no weight decay."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": params.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=params.lr)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; fp32 elsewhere (CPU bf16 autocast is slower than fp32 on most CPUs)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


# --- training -------------------------------------------------------------------------------------------------


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum over the processes (every process gets the same result)."""
    total = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(total)
    return total.tolist()


@torch.no_grad()
def log_probabilities(model: FineTuned, split, index: torch.Tensor, batch_size: int, device) -> torch.Tensor:
    """Log class probabilities of the reviews `index` (in that order), batched longest first."""
    model.eval()
    out = torch.empty(len(index), model.num_labels)
    order = torch.argsort(split.lengths[index], descending=True, stable=True)
    for rows in order.split(batch_size):
        with autocast(device):
            logits = model(to_device(split.batch(index[rows]), device))
        out[rows] = F.log_softmax(logits.float(), dim=1).cpu()
    return out


def validate(model: FineTuned, split, batch_size: int, device, rank: int, world: int) -> tuple[float, float]:
    """Loss and accuracy over the whole split; each process scores every world-th review."""
    mine = torch.arange(len(split))[rank::world]
    log_p, y = log_probabilities(model, split, mine, batch_size, device), split.labels[mine]
    sums = [F.nll_loss(log_p, y, reduction="sum").item(), (log_p.argmax(1) == y).sum().item(), len(mine)]
    loss, correct, n = all_sum(sums, device)
    return loss / n, correct / n


def fit(model: FineTuned, train, validation, params: Finetune, device, rank: int = 0, world: int = 1):
    """Train; return the best epoch's weights (validation accuracy, then lower loss), its row, and every epoch's row."""
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, params)
    steps = params.epochs * math.ceil(math.ceil(len(train) / params.batch_size) / params.grad_accum)
    scheduler = get_linear_schedule_with_warmup(optimizer, round(params.warmup_ratio * steps), steps)
    shuffle = torch.Generator().manual_seed(params.seed)  # the same batches in every process
    history, best, best_state = [], None, None

    for epoch in range(1, params.epochs + 1):
        model.train()
        batches = [b for b in length_grouped_batches(train.lengths, params.batch_size, shuffle) if len(b) >= world]
        loss_sum = correct = seen = 0.0
        for i, batch in enumerate(tqdm(batches, desc=f"finetune epoch {epoch}", unit="batch", disable=rank != 0)):
            mine = batch[rank::world]  # this process's share of the batch
            y = train.labels[mine].to(device)
            step_now = (i + 1) % params.grad_accum == 0 or i + 1 == len(batches)
            with nullcontext() if step_now or world == 1 else ddp.no_sync():  # sync gradients once per step
                with autocast(device):
                    logits = ddp(to_device(train.batch(mine), device))
                loss = F.cross_entropy(logits.float(), y, reduction="sum")
                # DDP averages over processes: this makes the gradient the mean over the whole batch (and steps)
                (loss * world / (len(batch) * params.grad_accum)).backward()
            loss_sum += loss.item()
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            if step_now:
                torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

        train_loss, train_correct, train_seen = all_sum([loss_sum, correct, seen], device)
        validation_loss, validation_accuracy = validate(model, validation, params.batch_size, device, rank, world)
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss / train_seen,  # while training: dropout on, weights moving
                "train_accuracy": train_correct / train_seen,
                "validation_loss": validation_loss,
                "validation_accuracy": validation_accuracy,
            }
        )
        if rank == 0:
            print(f"finetune: epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in list(history[-1].items())[1:]))
        if best is None or (validation_accuracy, -validation_loss) > (
            best["validation_accuracy"],
            -best["validation_loss"],
        ):
            best = history[-1]
            best_state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
        elif epoch - best["epoch"] >= params.patience:
            break
    return best_state, best, history
