"""The hidden states cached for fine-tuning: what embed writes to data/states/ and finetune reads.

With finetune.layers: N the lower L-N layers stay frozen, so the states entering layer L-N never
change: embed computes them once. They are stored ragged (the real tokens' rows of every review,
one review after the other, and each review's length) in 16-bit.

embed records each file's sha256 in states.json and finetune checks it before training: with DVC's
hardlink cache (.dvc/config) a file here and its cache object are one inode, so damage to one is
damage to both, and DVC, which goes by size and mtime, may never notice it.
"""

import hashlib
import json
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
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


def save_states(path, states: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> str:
    """Ragged: the real tokens' rows of every review, one review after the other, and each review's length.
    Returns the file's sha256, for states.json."""
    save_file({"states": states, "lengths": lengths, "labels": labels}, path)
    return sha256(path)


def sha256(path) -> str:
    # ~700 MB/s on a loaded 2-core EPYC: ~3 s for ChnSentiCorp's 1.9 GB of states, next to ~40 min per epoch
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def check_states(folder: Path, info: dict) -> None:
    """Every states file embed listed in `info` (its states.json) is there, whole and unchanged."""
    for name, expected in info.get("sha256", {}).items():
        path = folder / name
        if not path.is_file():
            raise PipelineError(f"{path} is missing (embed wrote it): run `dvc repro -f -s embed` to write it again.")
        if sha256(path) != expected:
            raise PipelineError(damaged(path, f"its sha256 is not the one embed recorded in {folder}/states.json"))


def damaged(path: Path, why: str) -> str:
    """What to do about a damaged states file: its cache object (the same inode with DVC's hardlink cache) goes too."""
    found = cache_object(path)
    target = f"{path} {found}" if found else f"{path} and its object in .dvc/cache"
    return (
        f"{path} is damaged: {why}. Do not train on it. With DVC's hardlink cache the file and its object in "
        f".dvc/cache are one file, so `dvc checkout` would bring the damage back: remove both (`rm -f {target}`), "
        "then run `dvc repro -f -s embed` to write the states again."
    )


def cache_object(path: Path, root: Path = Path(".")) -> str | None:
    """The DVC cache object of `path`, a file in a directory output of root/dvc.lock (None if not found):
    the directory's .dir object lists each file's md5, the name of its object. Relative to `root`."""
    cache = Path(".dvc/cache/files/md5")
    try:
        lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))
        for stage in lock["stages"].values():
            for out in stage.get("outs", []):
                if path.parent == Path(out["path"]) and out["md5"].endswith(".dir"):
                    listing = json.loads((root / cache / out["md5"][:2] / out["md5"][2:]).read_text())
                    md5 = next(entry["md5"] for entry in listing if entry["relpath"] == path.name)
                    return str(cache / md5[:2] / md5[2:])
    except (OSError, KeyError, TypeError, StopIteration, ValueError, yaml.YAMLError):
        return None
    return None


class CachedStates:
    """The hidden states entering the first trained layer (what embed wrote), per review."""

    def __init__(self, path):
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{path} is missing (embed writes it): run `dvc repro -f -s embed` to write it again.")
        try:
            tensors = load_file(path)
        except SafetensorError as err:  # truncated or overwritten: the header or the sizes do not add up
            raise PipelineError(damaged(path, f"it cannot be read as safetensors ({err})")) from None
        self.states, self.labels = tensors["states"], tensors["labels"]
        self.lengths = tensors["lengths"].long()
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        if self.offsets[-1] != len(self.states):
            raise PipelineError(damaged(path, "its review lengths do not add up to the rows stored"))

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reviews `index` padded to the longest of them (fp32 states, zeros after each review's end).

        One copy per review: measured 3-4x faster than one index_select gather of every position
        (the retired finetune_levers benchmark: README), a few ms a batch next to a training step of seconds."""
        lengths = self.lengths[index]
        states = torch.zeros(len(index), int(lengths.max()), self.states.shape[1])
        for row, (offset, length) in enumerate(zip(self.offsets[index].tolist(), lengths.tolist())):
            states[row, :length] = self.states[offset : offset + length]
        mask = torch.arange(states.shape[1]) < lengths[:, None]
        return {"states": states, "attention_mask": mask.long()}
