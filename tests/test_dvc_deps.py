"""dvc.yaml lists, for each stage, exactly the code that shapes its output: a comment edit in a helper
module must not re-run a 30-minute embed, and a change in code that shapes an output must re-run it."""

import ast
import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

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
