"""The hidden states cached for fine-tuning: what embed writes to data/states/ and finetune reads.

With finetune.layers: N the lower L-N layers stay frozen, so the states entering layer L-N never
change: embed computes them once. They are stored ragged (the real tokens' rows of every review,
one review after the other, and each review's length) in 16-bit.
"""

import torch
from safetensors.torch import load_file, save_file

from zh_sentiment.errors import PipelineError

STATES_DTYPE = torch.float16  # layer outputs leave a LayerNorm (|x| of a few units): fp16 keeps ~3 digits, bf16 ~2


def first_trained_layer(layers: int | str, num_hidden_layers: int) -> int | None:
    """Index of the lowest layer that trains (the states entering it are cached), or None for `all`."""
    if layers == "all":
        return None
    if layers > num_hidden_layers:
        raise PipelineError(
            f"finetune.layers = {layers}, but the model has {num_hidden_layers} layers (num_hidden_layers in its "
            f"config). Set finetune.layers to 1..{num_hidden_layers}, or to all."
        )
    return num_hidden_layers - layers


def save_states(path, states: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> None:
    """Ragged: the real tokens' rows of every review, one review after the other, and each review's length."""
    save_file({"states": states, "lengths": lengths, "labels": labels}, path)


class CachedStates:
    """The hidden states entering the first trained layer (what embed wrote), per review."""

    def __init__(self, path):
        tensors = load_file(path)
        self.states, self.labels = tensors["states"], tensors["labels"]
        self.lengths = tensors["lengths"].long()
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        if self.offsets[-1] != len(self.states):
            raise PipelineError(f"{path}: the lengths do not add up to the rows stored; run `dvc repro -f embed`.")

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reviews `index` padded to the longest of them (fp32 states, zeros after each review's end).

        One gather for the whole batch: row r, position t reads the stored row offsets[r] + t."""
        lengths = self.lengths[index]
        positions = torch.arange(int(lengths.max()))
        mask = positions < lengths[:, None]
        rows = (self.offsets[index][:, None] + positions).masked_fill_(~mask, 0)
        states = self.states.index_select(0, rows.flatten()).view(*rows.shape, -1)  # faster than self.states[rows]
        states = states.float().masked_fill_(~mask[..., None], 0.0)
        return {"states": states, "attention_mask": mask.long()}
