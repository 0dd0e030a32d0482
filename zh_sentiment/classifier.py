"""The trained classifier: a linear head and, in model.json, what it needs to read new reviews.

A model folder holds everything predict needs (encoder id or folder, max_length, pooling,
precision, label names, a fingerprint of the encoder's weights), so it can be copied and
used elsewhere. Every model folder is written by save_classifier and read by load_classifier,
which checks model.json against ModelInfo, the one schema of that file.
"""

import hashlib
import json
import warnings
from pathlib import Path
from typing import Annotated, Literal

import torch
from huggingface_hub import snapshot_download
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors.torch import load_file

from zh_sentiment.errors import PipelineError
from zh_sentiment.outputs import atomic_dir, write_json
from zh_sentiment.paths import FEATURES_DIR, HEAD_FILE, INFO_FILE, WEIGHT_FILES, must_be_local

SELF = "."  # `model` of a finetuned folder: the encoder is saved in the model folder itself


class ModelInfo(BaseModel):
    """model.json."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: Literal["frozen_head", "finetuned"]
    model: Annotated[str, Field(min_length=1)]  # hub id, absolute folder, or "." (this folder)
    max_length: Annotated[int, Field(ge=3)]
    pooling: Literal["cls", "mean"]
    precision: Literal["fp32", "bf16", "fp16", "int8"]
    # the CPU probe's figures behind an `auto` choice (zh_sentiment/precision.py), else None
    precision_probe: dict | None = None
    num_labels: Annotated[int, Field(ge=2)]
    label_names: list[Annotated[str, Field(min_length=1)]]
    fingerprint: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]  # of the encoder's weight files

    @model_validator(mode="after")
    def names_match_labels(self) -> "ModelInfo":
        if len(self.label_names) != self.num_labels:
            raise ValueError(f"label_names has {len(self.label_names)} names for num_labels = {self.num_labels}")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names are not unique: {self.label_names}")
        return self


def validate_info(raw, path: Path) -> dict:
    try:
        return ModelInfo.model_validate(raw).model_dump()
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise PipelineError(
            f"{path} is not a valid model description ({problems}). Train the model again "
            "(`dvc repro`), or copy the whole model folder again."
        ) from None


def load_features(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = load_file(FEATURES_DIR / f"{split}.safetensors")
    return tensors["features"], tensors["labels"]


def encoder_location(info: dict, folder: Path) -> str:
    """Where to load the encoder from: model.json's `model`, where "." is the model folder itself."""
    return str(folder.resolve()) if info["model"] == SELF else info["model"]


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


def weight_files(folder: Path) -> list[Path]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if name.endswith(".index.json"):  # sharded: the index and every shard it names
                shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
                return [path, *(folder / shard for shard in shards)]
            return [path]
    return []


def fingerprint(folder: Path) -> str:
    """sha256 over the weight files from_pretrained would load from `folder` (names and contents)."""
    files = weight_files(folder)
    if not files:
        raise PipelineError(f"{folder}: no weight file ({', '.join(WEIGHT_FILES)}) to fingerprint.")
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            digest.update(path.name.encode() + b"\0" + hashlib.file_digest(f, "sha256").digest())
    return "sha256:" + digest.hexdigest()


def check_encoder(info: dict, location: str, info_file: Path) -> None:
    """Refuse an encoder whose weights are not those the head was trained on: same shape, other features."""
    found = fingerprint(weights_folder(location))
    if found != info["fingerprint"]:
        raise PipelineError(
            f"{info_file}: the encoder at {location} is not the one this head was trained on (weights "
            f"fingerprint {found[:19]}…, recorded {info['fingerprint'][:19]}…). Put the training encoder back "
            f"there, or train the head again on this one (`dvc repro`)."
        )


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


def save_classifier(head: torch.nn.Linear, info: dict, folder: Path, encoder=None, tokenizer=None) -> None:
    """Write the model folder whole, atomically: head.pt, and model.json with the fingerprint of the encoder's weights.

    A fine-tuned model brings its encoder and tokenizer, saved into the folder itself (`model` "." in info).
    """
    state = {key: value.detach().cpu().contiguous() for key, value in head.state_dict().items()}
    with atomic_dir(folder) as out:
        if encoder is not None:
            encoder.save_pretrained(out)  # safetensors
            tokenizer.save_pretrained(out)
        location = encoder_location(info, out)
        record = validate_info({**info, "fingerprint": fingerprint(weights_folder(location))}, folder / INFO_FILE)
        check_head(state, record["num_labels"], folder / HEAD_FILE)
        torch.save(state, out / HEAD_FILE)
        write_json(out / INFO_FILE, record)


def load_classifier(folder: Path) -> tuple[torch.nn.Linear, dict]:
    """The head and model.json (checked against ModelInfo)."""
    info_file, head_file = folder / INFO_FILE, folder / HEAD_FILE
    if not head_file.exists() or not info_file.exists():
        raise PipelineError(
            f"no trained model in {folder}/ ({HEAD_FILE} and {INFO_FILE} are needed): run `dvc repro` first, "
            "or pass the folder of a trained model."
        )
    try:
        raw = json.loads(info_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineError(
            f"{info_file} is not valid JSON ({err}). Train the model again (`dvc repro`), "
            "or copy the whole model folder again."
        ) from None
    info = validate_info(raw, info_file)
    try:
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.simplefilter("ignore")
            state = torch.load(head_file, map_location="cpu", weights_only=True)
    except Exception:
        # Only tensors are loaded (weights_only): anything else is a damaged file or not a head at all.
        # torch's own message suggests weights_only=False, which would run code from the file: never do that.
        raise PipelineError(
            f"{head_file} is truncated, corrupt or not a head saved by this project. Train the model again "
            "(`dvc repro`), or copy the model folder again."
        ) from None
    check_head(state, info["num_labels"], head_file)
    head = torch.nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.eval().requires_grad_(False), info
