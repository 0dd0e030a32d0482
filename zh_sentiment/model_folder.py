"""A trained model folder's description (model.json), and the rules a folder must pass to be loaded.

Every model folder (models/baseline, models/frozen_head, models/finetuned) holds a model.json
checked against ModelInfo, the one schema of that file. It records, besides what predict needs,
a sha256 of every file that shapes the model's output (config, weights, tokenizer files, the
head or the fitted pipeline), and a fingerprint of all that shapes the output (those hashes, the
label names and the settings): a folder whose files or description changed since training is
refused, since another config, vocabulary or label order gives other answers from the same weights.

inference.open_model_folder applies these checks, every one before anything is loaded, whatever the
kind of model, and reads each file to load once: what is hashed is what is loaded, into memory, so a
file changed on disk later changes no answer (LoadedFiles.changed says which differ now).

No model folder ever runs code: see encoder.refuse_remote_code.
"""

import codecs
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zh_sentiment.errors import PipelineError
from zh_sentiment.model_card import write_model_card
from zh_sentiment.outputs import write_json
from zh_sentiment.paths import BASELINE_FILE, HEAD_FILE, INFO_FILE, WEIGHT_FILES

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
# What the model's weights are loaded from, besides the weight files: read once, hashed and loaded from those bytes.
PAYLOAD_FILES = (HEAD_FILE, BASELINE_FILE)
# `zh-sentiment export`'s files, by runtime, in Optimum's layout. Recorded in `files` once validated (so the
# fingerprint covers them); an export file that model.json does not record is never loaded.
ONNX_FILES = {"onnx": "onnx/model.onnx", "onnx-int8": "onnx/model_quantized.onnx"}
# What shapes the output, in model.json: the fingerprint covers these. Not the metrics, nor where the encoder
# is (`model`): its files are in encoder_files, and the same model has one fingerprint wherever it is stored.
SHAPING_FIELDS = ("kind", "max_length", "pooling", "precision", "num_labels", "label_names", "files", "encoder_files")
FINGERPRINT = Annotated[str, Field(pattern=r"^sha256:[0-9a-f]{64}$")]
REDO = "Train the model again (`dvc repro`), or copy the whole model folder again."


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
    # runtime (onnx, onnx-int8) -> how its export compared with PyTorch fp32 (zh_sentiment/onnx_export.py)
    onnx: dict[str, dict] | None = None

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
        for runtime in self.onnx or {}:
            if runtime not in ONNX_FILES or not encoder:
                raise ValueError(f"onnx: {runtime!r} is no ONNX runtime of a {self.kind} model")
            if ONNX_FILES[runtime] not in self.files:
                raise ValueError(f"onnx.{runtime} is recorded, but files has no {ONNX_FILES[runtime]}")
        return self


def fingerprint(info: dict) -> str:
    """One id for what the model computes: sha256 of model.json's SHAPING_FIELDS (its file hashes among them)."""
    shaping = {key: info[key] for key in SHAPING_FIELDS}
    return "sha256:" + hashlib.sha256(json.dumps(shaping, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def weight_files(folder: Path) -> list[str]:
    """The weight files from_pretrained loads from `folder`: the first of WEIGHT_FILES there (with its shards)."""
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if name.endswith(".index.json"):  # sharded: the index and every shard it names
                try:
                    shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    return [name]  # a damaged index: its sha256 tells
                return [name, *shards]
            return [name]
    return []


def shaping_files(folder: Path, extra: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of each file in `folder` that shapes what the model computes: config, weights, tokenizer, `extra`."""
    names = [*CONFIG_FILES, *weight_files(folder), *TOKENIZER_FILES, *extra]
    return {name: sha256(folder / name) for name in names if (folder / name).is_file()}


def non_finite_weights(model) -> list[str]:
    """The names of the model's floating-point tensors that hold NaN or inf: a diverged training's mark."""
    return [
        name for name, value in model.state_dict().items() if value.is_floating_point() and not value.isfinite().all()
    ]


def describe(kind: str, info: dict, folder: Path, extra: tuple[str, ...] = (), encoder: Path | None = None) -> dict:
    """`info` with the fingerprints of `folder`'s shaping files (and `extra`), of the encoder folder's,
    and of all that shapes the output."""
    record = {
        **info,
        # 6 digits, as the metrics files: float32 noise in the last places says nothing
        "validation": rounded(info["validation"]),
        "test": rounded(info["test"]) if info["test"] is not None else None,
        "kind": kind,
        "files": shaping_files(folder, extra),
        "encoder_files": shaping_files(encoder) if encoder is not None else None,
    }
    return validate_info({**record, "fingerprint": fingerprint(record)}, folder / INFO_FILE)


def rounded(metrics: dict) -> dict:
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in metrics.items()}


def write_info(folder: Path, record: dict) -> None:
    """model.json, and the model card (README.md) that describes the model to people and to the Hub."""
    write_json(folder / INFO_FILE, record)
    write_model_card(folder, record)


def validate_info(raw, path: Path) -> dict:
    try:
        info = ModelInfo.model_validate(raw).model_dump()
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'the file'}: {e['msg'].removeprefix('Value error, ')}"
            for e in err.errors()
        )
        raise PipelineError(f"{path} is not a valid model description ({problems}). {REDO}") from None
    if info["onnx"] is None:  # a folder with no export is written as before: earlier versions read it too
        del info["onnx"]
    return info


def read_info(folder: Path, files: "LoadedFiles | None" = None) -> dict:
    """model.json of `folder`, checked against ModelInfo (and remembered in `files`, when given)."""
    path = folder / INFO_FILE
    if not path.is_file():
        if not folder.is_dir():
            raise PipelineError(f"model folder {folder} does not exist: run `dvc repro` first, or pass another.")
        raise PipelineError(
            f"{folder} is not a model folder of this project (no {INFO_FILE}): run `dvc repro` first, or pass "
            "the folder of a trained model."
        )
    data = files.read(path) if files is not None else path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        raise PipelineError(
            f"{path} starts with a UTF-8 byte order mark: an editor saved it. Save it again without one (UTF-8, "
            f"no BOM), or {REDO[0].lower()}{REDO[1:]}"
        )
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineError(f"{path} is not valid JSON ({err}). {REDO}") from None
    return validate_info(raw, path)


# The files a model was loaded from


Signature = tuple[int, int, int, int]


def signature(status: os.stat_result) -> Signature:
    """What changes when a file is written, replaced or touched: size, mtime, inode, ctime."""
    return status.st_size, status.st_mtime_ns, status.st_ino, status.st_ctime_ns


class LoadedFiles:
    """The files a model was loaded from, as they were read: `changed` compares the disk with them.

    Cheap enough to ask per request: a file whose os.stat is as it was when read is unchanged; one
    whose stat moved is hashed again, once per new stat (a touched file is not a changed one)."""

    def __init__(self) -> None:
        self.read_as: dict[Path, tuple[Signature, str]] = {}  # path: stat before reading, sha256 of what was read
        self.verdicts: dict[Path, tuple[Signature, bool]] = {}  # path: a later stat, and whether the bytes differ

    def read(self, path: Path) -> bytes:
        """The file's bytes, remembered with their sha256 and the file's stat before reading (a write during the
        read moves the stat, so `changed` hashes it again)."""
        with open(path, "rb") as f:
            before = signature(os.fstat(f.fileno()))
            data = f.read()
        self.read_as[path] = (before, "sha256:" + hashlib.sha256(data).hexdigest())
        return data

    def sha256(self, path: Path) -> str:
        return self.read_as[path][1]

    def changed(self) -> list[str]:
        """The files that now differ on disk from what was read (or are gone)."""
        return [str(path) for path in self.read_as if self.differs(path)]

    def differs(self, path: Path) -> bool:
        read_signature, digest = self.read_as[path]
        try:
            now = signature(path.stat())
            if now == read_signature:
                return False
            if path in self.verdicts and self.verdicts[path][0] == now:
                return self.verdicts[path][1]
            verdict = sha256(path) != digest  # stat first, then hash: a write in between moves the stat again
        except OSError:  # gone, or no longer readable
            return True
        self.verdicts[path] = (now, verdict)
        return verdict


@dataclass
class OpenedFolder:
    """A model folder that passed every check, with the checked bytes of the files its model loads from."""

    folder: Path
    info: dict
    encoder_folder: Path | None  # frozen_head: where the encoder's files are
    files: LoadedFiles
    payload: dict[Path, bytes] = field(repr=False)  # weights, head.pt, model.skops: the bytes that were hashed

    def take(self, path: Path) -> bytes:
        """The checked bytes of `path`, handed over once: the folder keeps no copy of what the model holds."""
        return self.payload.pop(path)

    def take_weights(self, folder: Path) -> dict[str, bytes]:
        """The checked bytes of `folder`'s weight files, by file name, handed over once."""
        paths = [path for path in self.payload if path.parent == folder and path.name not in PAYLOAD_FILES]
        return {path.name: self.take(path) for path in paths}


def payload(contents: dict[Path, bytes]) -> dict[Path, bytes]:
    """Of the files read (by path), those a model loads from: weights, head.pt, model.skops."""
    return {
        path: data
        for path, data in contents.items()
        if path.name in PAYLOAD_FILES or path.name in weight_files(path.parent) or is_onnx_file(path)
    }


def is_onnx_file(path: Path) -> bool:
    return f"{path.parent.name}/{path.name}" in ONNX_FILES.values()


def verify_files(recorded: dict[str, str], folder: Path, what: str, info_file: Path, files: LoadedFiles) -> dict:
    """Refuse a folder whose shaping files differ from those the model was trained and measured with
    (changed, missing, or added since); each file's bytes, by path, as they were hashed."""
    names = dict.fromkeys([*CONFIG_FILES, *weight_files(folder), *TOKENIZER_FILES, *recorded])
    contents, problems = {}, {"changed since": [], "missing": [], "added since": []}
    for name in names:
        path = folder / name
        if path.is_file():
            contents[path] = files.read(path)
        found = files.sha256(path) if path in contents else None
        if recorded.get(name) != found:
            kind = "missing" if found is None else "added since" if name not in recorded else "changed since"
            problems[kind].append(name)
    if any(problems.values()):
        said = "; ".join(f"{', '.join(sorted(names))} {kind}" for kind, names in problems.items() if names)
        raise PipelineError(
            f"{info_file}: {what} {folder} is not what this model was trained with: {said} (sha256 recorded in "
            f"{INFO_FILE}). Put the original files back and remove any added since (they change what the model "
            "computes), or train the model again (`dvc repro`)."
        )
    return contents


def check_finetuned(info: dict, config: bytes | None, folder: Path) -> None:
    """A finetuned folder is its own encoder, and names its labels twice, in model.json (what predict and
    serve answer) and in config.json's id2label (what transformers' pipeline() answers): they must agree,
    in order. `config`: config.json's bytes as checked (refuse_remote_code: a JSON object)."""
    if info["model"] != SELF:
        raise PipelineError(f"{folder / INFO_FILE}: a finetuned model's 'model' is \".\" (the folder itself). {REDO}")
    id2label = json.loads(config or b"{}").get("id2label")
    if isinstance(id2label, dict):
        id2label = {str(key): value for key, value in id2label.items()}  # JSON keys are strings already
    expected = {str(i): name for i, name in enumerate(info["label_names"])}
    if id2label != expected:
        raise PipelineError(
            f"{folder / INFO_FILE}: label_names {info['label_names']} do not match id2label {id2label} in "
            f"{folder / 'config.json'}: one of them was edited, and every answer would carry the wrong label. {REDO}"
        )


def check_fingerprint(info: dict, info_file: Path) -> None:
    recomputed = fingerprint(info)
    if info["fingerprint"] != recomputed:
        raise PipelineError(
            f"{info_file} does not match its own fingerprint ({info['fingerprint']}; its contents give "
            f"{recomputed}): it was edited since training (label names, settings or file hashes), or written by "
            f"an earlier version of this project, whose fingerprints covered less. {REDO}"
        )
