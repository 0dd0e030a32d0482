"""The hidden states cached for fine-tuning: what embed writes to data/states/ and finetune reads.

With finetune.layers: N the lower L-N layers stay frozen, so the states entering layer L-N never
change: embed computes them once. They are stored ragged (the real tokens' rows of every review,
one review after the other, and each review's length) in 16-bit.

embed writes them as it goes and finetune reads the rows of a batch's reviews only (zh_sentiment/tensor_files.py):
neither holds a split's states in memory, so memory stays flat however many reviews there are.

embed records each file's sha256 in states.json and finetune checks it before training: with DVC's
hardlink cache (.dvc/config) a file here and its cache object are one inode, so damage to one is
damage to both, and DVC, which goes by size and mtime, may never notice it.
"""

import hashlib
import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from zh_sentiment.errors import PipelineError
from zh_sentiment.tensor_files import DamagedFile, Reader, Writer

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


class StatesWriter:
    """A states file written as embed goes: lengths and labels first, then each run of reviews' rows in place."""

    def __init__(self, path, lengths: torch.Tensor, labels: torch.Tensor, hidden_size: int):
        self.path = path
        layout = {
            "states": (STATES_DTYPE, (int(lengths.sum()), hidden_size)),
            "lengths": (lengths.dtype, tuple(lengths.shape)),
            "labels": (labels.dtype, tuple(labels.shape)),
        }
        self.file = Writer(path, layout)
        self.file.write("lengths", 0, lengths)
        self.file.write("labels", 0, labels)

    def write(self, first_row: int, states: torch.Tensor) -> None:
        """The rows from `first_row` on (the real tokens of consecutive reviews, as save_states stores them)."""
        self.file.write("states", first_row, states)

    def close(self) -> str:
        """Returns the file's sha256, for states.json."""
        self.file.close()
        return sha256(self.path)


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
            self.file = Reader(path)
            self.labels, self.lengths = self.file.tensor("labels"), self.file.tensor("lengths").long()
            self.hidden_size = self.file.shape("states")[1]
        except (
            DamagedFile,
            KeyError,
            IndexError,
        ) as err:  # truncated or overwritten: the header or sizes do not add up
            raise PipelineError(damaged(path, f"it cannot be read as safetensors ({err})")) from None
        self.offsets = torch.cat([torch.zeros(1, dtype=torch.long), self.lengths.cumsum(0)])
        if self.offsets[-1] != self.file.shape("states")[0]:
            raise PipelineError(damaged(path, "its review lengths do not add up to the rows stored"))

    def __len__(self) -> int:
        return len(self.labels)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """States rows start..stop-1 (as stored: 16-bit), read from the file."""
        return self.file.read("states", start, stop)

    def batch(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reviews `index` padded to the longest of them (fp32 states, zeros after each review's end).

        One read per review, straight from the file: only the batch's states are ever in memory."""
        lengths = self.lengths[index]
        states = torch.zeros(len(index), int(lengths.max()), self.hidden_size)
        for row, (offset, length) in enumerate(zip(self.offsets[index].tolist(), lengths.tolist())):
            states[row, :length] = self.rows(offset, offset + length)
        mask = torch.arange(states.shape[1]) < lengths[:, None]
        return {"states": states, "attention_mask": mask.long()}
