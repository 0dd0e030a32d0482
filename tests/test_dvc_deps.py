"""dvc.yaml lists, for each stage, exactly the code that shapes its output: a comment edit in a helper
module must not re-run a 30-minute embed, and a change in code that shapes an output must re-run it."""

import ast
import re
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from tests.conftest import ROOT
from zh_sentiment import model_card
from zh_sentiment.params import load_params

# Imported by stages, but they do not shape what a stage writes, only how it fails, where the
# files go (the same paths dvc.yaml names) or how they are written.
NOT_OUTPUT_SHAPING = {
    "zh_sentiment/errors.py",  # messages
    "zh_sentiment/outputs.py",  # atomic writes: the same bytes, written safely
    "zh_sentiment/paths.py",  # file names, also spelt out in dvc.yaml
    "zh_sentiment/params.py",  # the schema; DVC tracks the values themselves (`params:`)
    "zh_sentiment/progress.py",  # progress bars
    "zh_sentiment/distributed.py",  # starting and stopping finetune's processes (their number is a param)
    "zh_sentiment/lifetime.py",  # every stage dying with DVC
}
PACKAGES = ("zh_sentiment", "stages")


def module_file(module: str) -> str | None:
    path = Path(*module.split(".")).with_suffix(".py")
    return path.as_posix() if (ROOT / path).is_file() else None


def imported_files(path: str) -> set[str]:
    """The project modules `path` imports directly (`from zh_sentiment.x import y`, `from zh_sentiment import x`)."""
    found = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for module in modules:
            if module.split(".")[0] in PACKAGES and (file := module_file(module)):
                found.add(file)
    return found


def code_closure(path: str) -> set[str]:
    seen, todo = set(), [path]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(imported_files(current))
    return seen


def stage_modules() -> dict[str, tuple[str, list[str]]]:
    """Each stage run as `python -m stages.X`: its module file and its deps."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    found = {}
    for name, stage in stages.items():
        match = re.search(r"(?:^|\s)-m\s+(stages\.\w+)", stage["cmd"])
        if match:
            found[name] = (module_file(match.group(1)), [str(dep) for dep in stage.get("deps", [])])
    return found


def test_every_python_stage_is_found():
    assert {"fetch", "clean", "tokenize", "embed", "train", "evaluate"} <= set(stage_modules())


@pytest.mark.parametrize("stage", sorted(stage_modules()))
def test_a_stage_depends_on_exactly_the_code_that_shapes_its_output(stage):
    module, deps = stage_modules()[stage]
    assert module, f"stage {stage}: its module is not in stages/"
    expected = code_closure(module) - NOT_OUTPUT_SHAPING
    listed = {dep for dep in deps if dep.endswith(".py")}
    assert listed == expected, (
        f"dvc.yaml, stage {stage}: add {sorted(expected - listed) or 'nothing'}, "
        f"remove {sorted(listed - expected) or 'nothing'}"
    )


def test_the_closure_follows_imports_through_modules():
    """evaluate reaches metrics.py only through report.py."""
    assert "zh_sentiment/metrics.py" not in imported_files("stages/evaluate.py")
    assert "zh_sentiment/metrics.py" in code_closure("stages/evaluate.py")


# The model card (zh_sentiment/model_card.py) names the data, its columns and cleaning, and the training params:
# the stages that write a model folder (models/<kind>) must re-run when any of those change, so they declare them.


def model_stages() -> dict[str, tuple[str, list[str]]]:
    """Each stage that writes a model folder: the model's kind (the folder's name) and the stage's params."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    found = {}
    for name, stage in stages.items():
        for out in stage.get("outs", []):
            path = next(iter(out)) if isinstance(out, dict) else out
            if path.startswith("models/"):
                found[name] = (path.removeprefix("models/"), [str(param) for param in stage.get("params", [])])
    return found


class Reads:
    """Params as the card code sees them, noting each one it reads (`data.dataset`; a section read whole, as by
    model_dump(), by the section's name)."""

    def __init__(self, value, path: str, seen: set[str]):
        self._value, self._path, self._seen = value, path, seen

    def __getattr__(self, name: str):
        value = getattr(self._value, name)
        path = f"{self._path}.{name}".lstrip(".")
        if isinstance(value, BaseModel):
            return Reads(value, path, self._seen)
        self._seen.add(self._path if callable(value) else path)
        return value


def card_reads(kind: str) -> set[str]:
    """The params the model card of a `kind` model reads, from running the card code on a record of that kind."""
    record = {
        "kind": kind,
        "model": {"baseline": None, "frozen_head": "an-encoder", "finetuned": "."}[kind],
        "label_names": ["negative", "positive"],
        "validation": {"accuracy": 0.9, "loss": 0.3},
        "test": {"n": 10, "accuracy": 0.9},
        "max_length": 64,
        "pooling": "cls",
        "precision": "fp32",
    }
    seen: set[str] = set()
    params = Reads(load_params(ROOT / "params.yaml"), "", seen)
    model_card.metadata(record, params)
    model_card.body(record, params)
    return seen


def test_every_model_stage_is_found():
    assert set(model_stages()) == {"train", "baseline", "finetune"}


@pytest.mark.parametrize("stage", sorted(model_stages()))
def test_a_model_stage_declares_every_param_its_model_card_reads(stage):
    kind, declared = model_stages()[stage]
    reads = card_reads(kind)
    assert {"data.dataset", "clean.remove_cross_split_duplicates"} <= reads  # the recording sees the reads
    undeclared = sorted(p for p in reads if not any(p == d or p.startswith(f"{d}.") for d in declared))
    assert undeclared == [], f"dvc.yaml, stage {stage}: add {undeclared} to its params"
