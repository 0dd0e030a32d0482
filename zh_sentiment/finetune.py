"""Fine-tuning: the encoder's top N layers (or all of them) and its sequence-classification head, trained together.

With `finetune.layers: N` the lower L-N layers stay frozen, so the hidden states that enter
layer L-N never change: embed computes them once (data/states/, real tokens only, fp16) and
training runs only the top N layers on them, an epoch costing about N/L of a full one (less on BERT, below).
With `all` every layer (embeddings included) trains from the tokens in data/tokens/.

On BERT the top layer runs for [CLS] alone, the only position the head reads (zh_sentiment/cls_forward.py):
about a sixth of that layer's work, with the whole model's logits and gradients.

Memory: `finetune.batch_size` reviews make one optimizer step, but they go through the model in
micro-batches of at most `finetune.max_batch_tokens` padded tokens (reviews x the longest of them),
their gradients summed: the step is the one the whole batch would give, and the activations held
at once are bounded whatever the review lengths.

Data-parallel over processes started by zh_sentiment/distributed.py: every process sees the same shuffled
batches and takes every world-th review of each, DDP averages the gradients, so a step
is the same step one process would take on the whole batch.
"""

import math
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import get_linear_schedule_with_warmup

from zh_sentiment import cls_forward
from zh_sentiment.encoder import TOKEN_INPUTS, load_classification_model
from zh_sentiment.errors import PipelineError
from zh_sentiment.params import Finetune
from zh_sentiment.precision import cpu_has_fast_bf16
from zh_sentiment.progress import tqdm

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


def micro_batches(index: torch.Tensor, lengths: torch.Tensor, max_tokens: int) -> list[torch.Tensor]:
    """`index` longest first, cut into runs of at most `max_tokens` padded tokens (rows x their longest)."""
    index = index[torch.argsort(lengths[index], descending=True, stable=True)]
    widths, runs, start = lengths[index].tolist(), [], 0
    while start < len(index):
        rows = max(1, max_tokens // widths[start])  # the run's first review is its longest
        runs.append(index[start : start + rows])
        start += rows
    return runs


def check_fits(splits, params: Finetune) -> None:
    """Stop before training if one review alone exceeds the token budget."""
    longest = max(int(split.lengths.max()) for split in splits if len(split))
    if longest > params.max_batch_tokens:
        raise PipelineError(
            f"finetune.max_batch_tokens = {params.max_batch_tokens} is less than the longest review ({longest} "
            f"tokens): raise it to at least {longest}, or lower tokenize.max_length."
        )


# --- the model ------------------------------------------------------------------------------------------------


class FineTuned(torch.nn.Module):
    """A standard *ForSequenceClassification model (what models/finetuned holds, what `pipeline` loads);
    its layers from `start` up and its head train (every weight when start is None).

    It takes a batch of tokens (the whole model runs) or of cached states (only the layers from `start`
    up, then the head, run): both compute the same logits, since the frozen layers below stay in eval mode.
    The head is the architecture's own; for BERT: its pooler (dense + tanh on [CLS]), dropout, a linear layer.
    On BERT the top layer computes [CLS] alone (zh_sentiment/cls_forward.py).
    """

    def __init__(self, model: torch.nn.Module, start: int | None):
        super().__init__()
        base = model.base_model
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        bert_style = layers is not None and getattr(base, "pooler", None) is not None
        if start is not None and not bert_style:
            raise PipelineError(
                f"finetune.layers: a number needs a BERT-style model (encoder.layer and a pooler); "
                f"{type(model).__name__} is not one. Set finetune.layers: all."
            )
        self.model, self.start = model, start
        self.for_cls = bert_style and cls_forward.runs_for_cls(base)
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
        base = self.model.base_model
        if "states" not in batch and not self.for_cls:
            return self.model(**{key: batch[key] for key in TOKEN_INPUTS if key in batch}).logits
        if "states" in batch:  # the states entering layer `start`
            hidden, layers = batch["states"], base.encoder.layer[self.start :]
        else:
            hidden, layers = cls_forward.embeddings(base, batch), base.encoder.layer
        mask = cls_forward.layer_mask(base, hidden, batch["attention_mask"])
        if self.for_cls:
            hidden = cls_forward.top_for_cls(layers, hidden, mask)
        else:
            hidden = cls_forward.run_layers(layers, hidden, mask)
        # BertForSequenceClassification.forward from here: pooler (on position 0), dropout, classifier
        return self.model.classifier(self.model.dropout(base.pooler(hidden)))


def starting_model(name: str, label_names: list[str], seed: int) -> torch.nn.Module:
    """The encoder's weights with a new classification head; seeded first, so that the new weights (the head's,
    and a pooler's that the checkpoint lacks) are the same in every process and every run."""
    torch.manual_seed(seed)
    return load_classification_model(name, label_names)


def make_optimizer(model: torch.nn.Module, params: Finetune) -> torch.optim.AdamW:
    """AdamW over the trainable weights; biases and LayerNorm weights (the 1-D ones) get no weight decay.
    fused: one kernel for the whole update; on a 2-core CPU 6.5x faster than the per-tensor loop over bert-base's
    weights, where foreach gained nothing (the retired finetune_levers benchmark: docs/benchmark.md)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": params.weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=params.lr, fused=True)


def choose_autocast(requested: str, device: torch.device) -> str:
    """finetune.precision: `auto` takes bf16 autocast on CUDA (where supported) and on a CPU where the probe
    measured bf16 clearly faster (zh_sentiment/precision.py), else fp32. The weights stay fp32 either way.
    Under DDP rank 0 decides (and probes, alone) and the others take its choice: the model must be one."""
    if dist.is_initialized() and dist.get_rank() != 0:
        choice = [None]
    elif requested != "auto":
        choice = [requested]
    elif device.type == "cuda":
        choice = ["bf16" if torch.cuda.is_bf16_supported() else "fp32"]
    else:
        choice = ["bf16" if device.type == "cpu" and cpu_has_fast_bf16() else "fp32"]
    if dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    return choice[0]


def autocast(device: torch.device, precision: str):
    """bf16 autocast (matmuls in bf16, weights, sums and LayerNorm in fp32), or plain fp32."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def out_of_memory(device: torch.device, rows: torch.Tensor, split, params: Finetune) -> PipelineError:
    width = int(split.lengths[rows].max())
    return PipelineError(
        f"out of memory on {device} with a micro-batch of {len(rows)} reviews x {width} tokens: lower "
        f"finetune.max_batch_tokens (now {params.max_batch_tokens}), e.g. to {max(1, params.max_batch_tokens // 2)}."
    )


# --- training -------------------------------------------------------------------------------------------------


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum over the processes (every process gets the same result)."""
    total = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(total)
    return total.tolist()


@torch.no_grad()
def log_probabilities(
    model: FineTuned, split, index: torch.Tensor, params: Finetune, device, precision: str = "fp32"
) -> torch.Tensor:
    """Log class probabilities of the reviews `index` (in that order), in micro-batches longest first."""
    model.eval()
    out = torch.empty(len(index), model.num_labels)
    position = torch.empty(len(split), dtype=torch.long)
    position[index] = torch.arange(len(index))
    for rows in micro_batches(index, split.lengths, params.max_batch_tokens):
        try:
            with autocast(device, precision):
                logits = model(to_device(split.batch(rows), device))
        except torch.OutOfMemoryError:
            raise out_of_memory(device, rows, split, params) from None
        out[position[rows]] = F.log_softmax(logits.float(), dim=1).cpu()
    return out


def validate(model: FineTuned, split, params: Finetune, device, precision, rank: int, world: int):
    """Loss and accuracy over the whole split; each process scores every world-th review."""
    mine = torch.arange(len(split))[rank::world]
    log_p, y = log_probabilities(model, split, mine, params, device, precision), split.labels[mine]
    sums = [F.nll_loss(log_p, y, reduction="sum").item(), (log_p.argmax(1) == y).sum().item(), len(mine)]
    loss, correct, n = all_sum(sums, device)
    return loss / n, correct / n


def diverged(epoch: int, step: int, norm: torch.Tensor, params: Finetune) -> PipelineError:
    return PipelineError(
        f"finetune: the loss or its gradients stopped being finite at epoch {epoch}, step {step} (gradient norm "
        f"{norm.item()}): training diverged. Lower finetune.lr (now {params.lr}), raise finetune.warmup_ratio "
        f"(now {params.warmup_ratio}) or lower finetune.max_grad_norm (now {params.max_grad_norm}), and run again."
    )


def fit(
    model: FineTuned,
    train,
    validation,
    params: Finetune,
    device,
    rank: int = 0,
    world: int = 1,
    precision="fp32",
    on_epoch=None,
):
    """Train; return the best epoch's weights (validation accuracy, then lower loss), its row, and every epoch's row,
    each also passed to `on_epoch` (where given: rank 0's logger) as it ends.

    `precision` is what choose_autocast picked: "bf16" runs the forward passes under autocast."""
    check_fits([train, validation], params)
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
            runs = micro_batches(batch[rank::world], train.lengths, params.max_batch_tokens)  # this process's share
            step_now = (i + 1) % params.grad_accum == 0 or i + 1 == len(batches)
            for k, rows in enumerate(runs):
                y = train.labels[rows].to(device)
                sync = step_now and k + 1 == len(runs)  # DDP averages the gradients once per step, at its last pass
                try:
                    with nullcontext() if sync or world == 1 else ddp.no_sync():
                        with autocast(device, precision):
                            logits = ddp(to_device(train.batch(rows), device))
                        loss = F.cross_entropy(logits.float(), y, reduction="sum")
                        # summed over micro-batches and DDP's mean over processes: the mean over the batch (and steps)
                        (loss * world / (len(batch) * params.grad_accum)).backward()
                except torch.OutOfMemoryError:
                    raise out_of_memory(device, rows, train, params) from None
                loss_sum += loss.item()
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            if step_now:
                # the norm is taken after DDP's all-reduce, so every process sees the same one and stops together
                norm = torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
                if not torch.isfinite(norm):
                    raise diverged(epoch, i // params.grad_accum + 1, norm, params)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

        train_loss, train_correct, train_seen = all_sum([loss_sum, correct, seen], device)
        validation_loss, validation_accuracy = validate(model, validation, params, device, precision, rank, world)
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
        if on_epoch:
            on_epoch(history[-1])
        if best is None or (validation_accuracy, -validation_loss) > (
            best["validation_accuracy"],
            -best["validation_loss"],
        ):
            best = history[-1]
            best_state = {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}
        elif epoch - best["epoch"] >= params.patience:
            break
    return best_state, best, history
