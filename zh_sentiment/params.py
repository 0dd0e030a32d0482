"""The one schema of params.yaml.

Every stage calls `load_params()` first, which checks the whole file, so a typo
anywhere stops the pipeline before any stage does work. Keys have no defaults
here: params.yaml is the single place where values live.
"""

import codecs
import difflib
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from zh_sentiment.errors import PipelineError

PARAMS_FILE = Path("params.yaml")

DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
# A decimal number, as text: `dvc exp run -S finetune.lr=0.00002` writes 2e-05, which PyYAML (YAML 1.1,
# which wants a dot in a float) reads as the string "2e-05". No nan, inf or 1_000.
NUMBER_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def number_from_text(value):
    """A float param written as a number in text ("2e-05") is that number; any other text stays text (refused)."""
    if isinstance(value, str) and NUMBER_TEXT.fullmatch(value.strip()):
        return float(value)
    return value


# strict elsewhere ("128" is no int), but a float may come as the text of a number (see NUMBER_TEXT)
Float = Annotated[float, BeforeValidator(number_from_text)]


class Section(BaseModel):
    # strict: "128" is not silently read as 128; forbid: a typo is an error, not a new key
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Data(Section):
    dataset: Annotated[str, Field(min_length=1)]
    text_column: Annotated[str, Field(min_length=1)]
    label_column: Annotated[str, Field(min_length=1)]
    columns: list[Annotated[str, Field(min_length=1)]]
    encoding: str
    train_split: Annotated[str, Field(min_length=1)]
    validation_split: Annotated[str, Field(min_length=1)]
    test_split: Annotated[str, Field(min_length=1)]
    validation_ratio: Annotated[Float, Field(gt=0, lt=1)]
    split_seed: int

    @field_validator("columns")
    @classmethod
    def unique_columns(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("column names must be unique")
        return value

    @field_validator("encoding")
    @classmethod
    def known_encoding(cls, value: str) -> str:
        if value != "auto":
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(
                    "expected 'auto' or a Python codec name such as utf-8, utf-8-sig, gb18030, gbk"
                ) from None
        return value


class Model(Section):
    name: Annotated[str, Field(min_length=1)]


class Clean(Section):
    label_map: dict[str | int, int]
    label_names: list[str]
    remove_cross_split_duplicates: bool

    @field_validator("label_map")
    @classmethod
    def ids_are_0_to_k(cls, mapping: dict) -> dict:
        ids = set(mapping.values())
        if ids and ids != set(range(len(ids))):
            raise ValueError(f"label ids must be 0..k-1 without gaps, got {sorted(ids)}")
        # CSV labels arrive as text: `1: 0` in YAML must match the string "1"
        return {str(key): value for key, value in mapping.items()}


class Tokenize(Section):
    max_length: Annotated[int, Field(ge=3)]  # [CLS] + at least one token + [SEP]


class Embed(Section):
    pooling: Literal["cls", "mean"]
    batch_size: PositiveInt
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)]
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"]


class Train(Section):
    epochs: PositiveInt
    batch_size: PositiveInt
    lr: Annotated[Float, Field(gt=0)]
    weight_decay: Annotated[Float, Field(ge=0)]
    patience: PositiveInt
    seed: int


class Baseline(Section):
    ngram_range: list[int]  # [lo, hi]: character n-grams of lo..hi characters
    min_df: PositiveInt  # keep n-grams found in at least this many training reviews
    c_grid: Annotated[list[Annotated[Float, Field(gt=0)]], Field(min_length=1)]
    max_iter: PositiveInt

    @field_validator("ngram_range")
    @classmethod
    def low_to_high(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or not 1 <= value[0] <= value[1]:
            raise ValueError("expected [lo, hi] with 1 <= lo <= hi, e.g. [1, 3]")
        return value


class LabelIssues(Section):
    # whose out-of-fold probabilities are averaged: frozen_head (on data/features), baseline (TF-IDF)
    models: Annotated[list[Literal["frozen_head", "baseline"]], Field(min_length=1)]
    folds: Annotated[int, Field(ge=2)]  # k of the stratified k-fold
    c: Annotated[Float, Field(gt=0)]  # inverse regularisation strength of both logistic regressions
    seed: int  # which review falls in which fold

    @field_validator("models")
    @classmethod
    def each_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("name each model once")
        return value


class Finetune(Section):
    layers: int | str  # the top N encoder layers train on cached states; all: the whole model
    epochs: PositiveInt
    batch_size: PositiveInt  # reviews per forward pass, over all processes together
    grad_accum: PositiveInt  # batches per optimizer step
    max_batch_tokens: PositiveInt  # padded tokens per forward pass: a batch is cut into micro-batches under it
    lr: Annotated[Float, Field(gt=0)]
    warmup_ratio: Annotated[Float, Field(ge=0, lt=1)]
    weight_decay: Annotated[Float, Field(ge=0)]
    max_grad_norm: Annotated[Float, Field(gt=0)]
    patience: PositiveInt
    seed: int
    device: Annotated[str, Field(pattern=DEVICE_PATTERN)]
    processes: PositiveInt  # data-parallel processes the stage starts (zh_sentiment/distributed.py)
    timeout_seconds: PositiveInt  # the longest wait for another process in a collective before stopping the run
    precision: Literal["auto", "fp32", "bf16"]  # bf16: autocast, the weights stay fp32

    @field_validator("layers", mode="before")
    @classmethod
    def number_or_all(cls, value):
        # one message instead of one per member of the union
        if value == "all" or (type(value) is int and value >= 1):
            return value
        raise ValueError("expected a number of top layers to fine-tune (1 or more, at most the model's), or all")

    @model_validator(mode="after")
    def a_review_per_process(self) -> "Finetune":
        # each process takes every processes-th review of a batch: a smaller batch leaves some with none
        if self.batch_size < self.processes:
            raise ValueError(
                f"finetune.batch_size ({self.batch_size}) is smaller than finetune.processes ({self.processes}): "
                "every process needs at least one review per batch; raise batch_size or lower processes"
            )
        return self


class Params(Section):
    data: Data
    model: Model
    clean: Clean
    tokenize: Tokenize
    embed: Embed
    train: Train
    baseline: Baseline
    finetune: Finetune
    label_issues: LabelIssues


def check_value(section: type[BaseModel], key: str, value):
    """`value` checked as params.yaml's `section.key` is (for command-line options that mirror a param);
    a ValueError says what is allowed."""
    field = section.model_fields[key]
    kind = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
    try:
        return TypeAdapter(kind).validate_python(value, strict=True)
    except ValidationError as err:
        raise ValueError(err.errors()[0]["msg"]) from None


def load_params(path: Path = PARAMS_FILE) -> Params:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run from the project root, where params.yaml is.") from None
    except yaml.YAMLError as err:
        raise PipelineError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(raw, dict):
        what = "empty" if raw is None else f"a {type(raw).__name__}, not a mapping of sections"
        raise PipelineError(
            f"{path} is {what}: it needs the sections {', '.join(Params.model_fields)}. "
            f"Restore it (`git checkout {path}`) and edit the values there."
        )
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = "\n".join(f"  - {describe(error)}" for error in err.errors())
        raise PipelineError(
            f"{path} has {err.error_count()} problem(s):\n{problems}\nFix {path} and run again."
        ) from None


def describe(error: dict) -> str:
    """One line per problem: the dotted key, the value found and what is allowed."""
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        section = section_model(error["loc"][:-1])
        allowed = list(section.model_fields)
        close = difflib.get_close_matches(str(error["loc"][-1]), allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return f"{key}: unknown key; {hint}allowed keys here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return f"{key}: missing; add it (see README.md, 'Params')"
    value = error["input"]
    message = error["msg"].removeprefix("Value error, ")
    if len(error["loc"]) == 1 and isinstance(value, dict):  # a rule across a section's keys: the message names them
        return f"{key}: {message}"
    hint = ""
    if isinstance(value, str) and error["type"] in ("int_type", "float_type"):
        hint = " (write the number without quotes)"
    return f"{key} = {value!r}: {message}{hint}"


def section_model(loc: tuple) -> type[BaseModel]:
    model: type[BaseModel] = Params
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model
