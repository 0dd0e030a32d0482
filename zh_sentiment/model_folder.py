"""A trained model folder's description (model.json) and what makes a folder trustworthy.

Every model folder (models/baseline, models/frozen_head, models/finetuned) holds a model.json
checked against ModelInfo, the one schema of that file. It records, besides what predict needs,
a sha256 of every file that shapes the model's output (config, weights, tokenizer files, the
head or the fitted pipeline): a folder whose files changed since training is refused, since
another config or vocabulary gives other answers from the same weights.

No model folder ever runs code: see encoder.refuse_remote_code.
"""

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zh_sentiment.errors import PipelineError
from zh_sentiment.model_card import write_model_card
from zh_sentiment.outputs import write_json
from zh_sentiment.paths import INFO_FILE, WEIGHT_FILES

MODEL_NAMES = ("baseline", "frozen_head", "finetuned")
SELF = "."  # `model` of a finetuned folder: the encoder is the model folder itself

# Files from_pretrained reads that change what a model computes (model.json itself is checked by schema).
CONFIG_FILES = ("config.json",)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
)
FINGERPRINT = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]


class ModelInfo(BaseModel):
    """model.json."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    kind: Literal["baseline", "frozen_head", "finetuned"]
    model: str | None  # the encoder: hub id, absolute folder, or "." (this folder); None for the baseline
    max_length: Annotated[int, Field(ge=3)] | None  # tokens read per review; None: the baseline reads it whole
    # frozen_head: cls or mean over last_hidden_state; finetuned: the architecture's own head (BERT: its pooler)
    pooling: Literal["cls", "mean", "model"] | None
    precision: Literal["fp32", "bf16", "fp16", "int8"] | None  # the encoder's, at training time
    num_labels: Annotated[int, Field(ge=2)]
    label_names: list[Annotated[str, Field(min_length=1)]]
    validation: dict[str, float]  # at least accuracy: what picks the default model
    test: (
        dict[str, int | float] | None
    )  # the headline test metrics, where the stage that wrote the folder measured them
    files: dict[str, FINGERPRINT]  # this folder's files that shape the output
    encoder_files: dict[str, FINGERPRINT] | None  # frozen_head: those of the encoder `model` names
    fingerprint: FINGERPRINT  # of all the above together: one id for the model
    precision_probe: dict | None = None  # how `auto` precision was decided at training time, if it was

    @model_validator(mode="after")
    def consistent(self) -> "ModelInfo":
        if len(self.label_names) != self.num_labels:
            raise ValueError(f"label_names has {len(self.label_names)} names for num_labels = {self.num_labels}")
        if len(set(self.label_names)) != len(self.label_names):
            raise ValueError(f"label_names are not unique: {self.label_names}")
        if "accuracy" not in self.validation:
            raise ValueError("validation has no accuracy")
        encoder = {"baseline": False, "frozen_head": True, "finetuned": True}[self.kind]
        if encoder != (self.model is not None) or encoder != (self.max_length is not None):
            raise ValueError(f"a {self.kind} model {'needs' if encoder else 'has no'} model and max_length")
        if (self.kind == "frozen_head") != (self.encoder_files is not None):
            raise ValueError("encoder_files are recorded for a frozen_head model only")
        return self


def combined_fingerprint(files: dict[str, str], encoder_files: dict[str, str] | None) -> str:
    digest = hashlib.sha256()
    for group in (files, encoder_files or {}):
        for name in sorted(group):
            digest.update(f"{name}\0{group[name]}\n".encode())
    return "sha256:" + digest.hexdigest()


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def weight_files(folder: Path) -> list[str]:
    """The weight files from_pretrained loads from `folder`: the first of WEIGHT_FILES there (with its shards)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if name.endswith(".index.json"):  # sharded: the index and every shard it names
                shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
                return [name, *shards]
            return [name]
    return []


def shaping_files(folder: Path, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of each file in `folder` that shapes what the model computes: config, weights, tokenizer, `extra`."""
    names = [*CONFIG_FILES, *weight_files(folder), *TOKENIZER_FILES, *extra]
    return {name: sha256(folder / name) for name in names if (folder / name).is_file()}


def changed_files(recorded: dict[str, str], folder: Path) -> list[str]:
    """The files of `recorded` that are now missing or different in `folder`, and shaping files added since."""
    found = shaping_files(folder, extra=tuple(recorded))
    return sorted(name for name in set(recorded) | set(found) if recorded.get(name) != found.get(name))


def non_finite_weights(model) -> list[str]:
    """The names of the model's floating-point tensors that hold NaN or inf: a diverged training's mark."""
    return [
        name for name, value in model.state_dict().items() if value.is_floating_point() and not value.isfinite().all()
    ]


def describe(kind: str, info: dict, folder: Path, extra: tuple[str, ...] = (), encoder: Path | None = None) -> dict:
    """`info` with the fingerprints of `folder`'s shaping files (and `extra`), and of the encoder folder's."""
    files = shaping_files(folder, extra)
    encoder_files = shaping_files(encoder) if encoder is not None else None
    record = {
        **info,
        # 6 digits, as the metrics files: float32 noise in the last places says nothing
        "validation": rounded(info["validation"]),
        "test": rounded(info["test"]) if info["test"] is not None else None,
        "kind": kind,
        "files": files,
        "encoder_files": encoder_files,
        "fingerprint": combined_fingerprint(files, encoder_files),
    }
    return validate_info(record, folder / INFO_FILE)


def rounded(metrics: dict) -> dict:
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in metrics.items()}


def write_info(folder: Path, record: dict) -> None:
    """model.json, and the model card (README.md) that describes the model to people and to the Hub."""
    write_json(folder / INFO_FILE, record)
    write_model_card(folder, record)


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


def read_info(folder: Path) -> dict:
    """model.json of `folder`, checked against ModelInfo."""
    path = folder / INFO_FILE
    if not path.is_file():
        if not folder.is_dir():
            raise PipelineError(f"model folder {folder} does not exist: run `dvc repro` first, or pass another.")
        raise PipelineError(
            f"{folder} is not a model folder of this project (no {INFO_FILE}): run `dvc repro` first, or pass "
            "the folder of a trained model."
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineError(
            f"{path} is not valid JSON ({err}). Train the model again (`dvc repro`), "
            "or copy the whole model folder again."
        ) from None
    return validate_info(raw, path)


def check_files(recorded: dict[str, str], folder: Path, what: str, info_file: Path) -> None:
    """Refuse a folder whose shaping files differ from those the model was trained and measured with."""
    changed = changed_files(recorded, folder)
    if changed:
        raise PipelineError(
            f"{info_file}: {what} {folder} is not what this model was trained with: "
            f"{', '.join(changed)} changed since (sha256 recorded in {INFO_FILE}). Put the original files back, "
            "or train the model again (`dvc repro`)."
        )
