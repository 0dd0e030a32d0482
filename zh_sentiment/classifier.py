"""The frozen head: a linear layer on the frozen encoder's pooled features (the course's recipe).

models/frozen_head holds head.pt and model.json (zh_sentiment/model_folder.py), which names the
encoder (a hub id or an absolute folder) and records the fingerprints of its files: the head is
only ever applied to the features of the very encoder it was trained on.
"""

import io
import warnings
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from safetensors.torch import load_file

from zh_sentiment.errors import PipelineError
from zh_sentiment.model_folder import describe, write_info
from zh_sentiment.outputs import atomic_dir
from zh_sentiment.paths import FEATURES_DIR, FROZEN_HEAD, HEAD_FILE, INFO_FILE, must_be_local


def load_features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = load_file(FEATURES_DIR / f"{split}.safetensors")
    return tensors["features"], tensors["labels"]


def weights_folder(name: str) -> Path:
    """The folder whose weight files from_pretrained(name) loads: a local folder, or a hub id's cached snapshot."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        return folder
    if must_be_local(name):
        raise PipelineError(
            f"model folder {folder} does not exist (moved or deleted since it was recorded). "
            "Put it back there, or point model.name at where it is now and run `dvc repro`."
        )
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception as err:  # not cached: from_pretrained has not loaded it on this machine
        raise PipelineError(
            f"model '{name}' is not in the Hugging Face cache here, so its weights cannot be fingerprinted. "
            "Load it once (AutoModel.from_pretrained) or point at a local model folder."
        ) from err


def check_head(state, num_labels: int, path: Path) -> None:
    ok = (
        isinstance(state, dict)
        and set(state) == {"weight", "bias"}
        and all(isinstance(value, torch.Tensor) for value in state.values())
        and state["weight"].dim() == 2
        and state["bias"].shape == (state["weight"].shape[0],)
    )
    if not ok:
        raise PipelineError(
            f"{path} is not a linear head's state dict (expected the tensors weight and bias). "
            "Train the model again (`dvc repro`), or copy the model folder again."
        )
    rows = state["weight"].shape[0]
    if rows != num_labels:
        raise PipelineError(
            f"{path} has {rows} output rows but {path.parent / INFO_FILE} names {num_labels} classes. "
            "The two files come from different trainings: copy the whole model folder again, or retrain."
        )


def save_frozen_head(head: torch.nn.Linear, info: dict, folder: Path) -> dict:
    """Write models/frozen_head whole, atomically: head.pt, and model.json with the fingerprints of head.pt and
    of the encoder's files (config, weights, tokenizer), wherever `info["model"]` says the encoder is."""
    state = {key: value.detach().cpu().contiguous() for key, value in head.state_dict().items()}
    check_head(state, info["num_labels"], folder / HEAD_FILE)
    if not all(torch.isfinite(value).all() for value in state.values()):
        raise PipelineError(f"{folder / HEAD_FILE}: the trained head has non-finite weights; lower train.lr.")
    with atomic_dir(folder) as out:
        torch.save(state, out / HEAD_FILE)
        record = describe(FROZEN_HEAD, info, out, extra=(HEAD_FILE,), encoder=weights_folder(info["model"]))
        write_info(out, record)
    return record


def load_head(folder: Path, info: dict) -> torch.nn.Linear:
    """head.pt of a frozen_head folder, as a Linear."""
    head_file = folder / HEAD_FILE
    if not head_file.is_file():
        raise PipelineError(f"{folder} has no {HEAD_FILE}: copy the whole model folder again, or train it again.")
    return head_from_bytes(head_file.read_bytes(), head_file, info["num_labels"])


def head_from_bytes(data: bytes, head_file: Path, num_labels: int) -> torch.nn.Linear:
    """The Linear saved in `data`, the bytes of `head_file` (only tensors are unpickled: weights_only)."""
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:
        # Only tensors are loaded (weights_only): anything else is a damaged file or not a head at all.
        # torch's own message suggests weights_only=False, which would run code from the file: never do that.
        raise PipelineError(
            f"{head_file} is truncated, corrupt or not a head saved by this project. Train the model again "
            "(`dvc repro`), or copy the model folder again."
        ) from None
    check_head(state, num_labels, head_file)
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.eval().requires_grad_(False)
