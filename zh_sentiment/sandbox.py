"""Throwaway copies of this project, for the tests and the benchmark that run the real `dvc repro`.

A copy holds the files git tracks (not the user's untracked files, such as a model folder under
models-src/), with the code as it is in the working tree, but never a run's records (dvc.lock,
metrics/) and always the project's own params.yaml: the one of the project as shipped, before
README's "First run" commit added dvc.lock (not the user's edits or commits), in a fresh git repo.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]  # the checkout this package was imported from


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def tracked_files(root: Path = ROOT) -> list[str]:
    """The paths git tracks in `root` (as committed or staged; never untracked files)."""
    return [path for path in git("ls-files", "--cached", "-z", cwd=root).split("\0") if path]


RUN_RECORDS = ("dvc.lock", "metrics/")  # what `dvc repro` writes and README's first commit adds


def pristine_commit(root: Path = ROOT) -> str:
    """The project as shipped: the parent of the first commit that added dvc.lock (README's "First run"
    commit, after which a user commits their runs and params), or HEAD if none did."""
    added = git("log", "--diff-filter=A", "--format=%H", "HEAD", "--", "dvc.lock", cwd=root).split()
    if not added:
        return "HEAD"
    parent = subprocess.run(["git", "rev-parse", "-q", "--verify", f"{added[-1]}^"], cwd=root, capture_output=True)
    return parent.stdout.decode().strip() if parent.returncode == 0 else "HEAD"


def pristine_params(root: Path = ROOT) -> dict:
    """params.yaml as the project ships it, whatever the user committed since."""
    return yaml.safe_load(git("show", f"{pristine_commit(root)}:params.yaml", cwd=root))


def edit_params(path: Path, changes: dict, base: dict | None = None) -> None:
    """Write params.yaml at `path`: `base` (default: the file there) with `changes`, dotted keys
    such as train.lr mapped to values."""
    params = base if base is not None else yaml.safe_load(path.read_text(encoding="utf-8"))
    for key, value in changes.items():
        section, name = key.split(".")
        params[section][name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")


def ran_stages(dvc_output: str) -> list[str]:
    """The stages `dvc repro` / `dvc exp run` ran, in order, from their "Running stage 'x':" lines."""
    return [line.split("'")[1] for line in dvc_output.splitlines() if line.startswith("Running stage")]


def python_first_env(env: dict | None = None) -> dict:
    """`env` (default: this process's) with this interpreter's folder first on PATH: dvc.yaml's
    commands call `python`, which must be the one that has this project's requirements."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def copy_project(dest: Path, changes: dict, root: Path = ROOT, skip: tuple[str, ...] = ("tests/",)) -> Path:
    """The tracked files of `root` (less those under `skip`, and a run's records) in `dest`, with the
    pristine params.yaml and `changes` to it, committed to a fresh git repo."""
    for relative in tracked_files(root):
        source = root / relative
        if source.is_file() and not relative.startswith(skip + RUN_RECORDS):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / relative)
    edit_params(dest / "params.yaml", changes, base=pristine_params(root))
    for command in (
        ["init", "-q"],
        ["config", "user.email", "tests@example.com"],
        ["config", "user.name", "tests"],
        ["add", "-A"],
        ["commit", "-q", "-m", "project under test"],
    ):
        git(*command, cwd=dest)
    return dest


def command_dying_with_parent(*args: str) -> list[str]:
    """`python -m zh_sentiment *args` as a process that dies with the one starting it (the tests' and the
    benchmark's servers: a run stopped midway leaves none behind). The parent-death signal is set in the
    new interpreter itself: Linux may clear one set before exec (as it does here for root)."""
    code = (
        "import sys; from zh_sentiment.lifetime import die_with_parent; die_with_parent(); "
        "from zh_sentiment.cli import main; main(sys.argv[1:])"
    )
    return [sys.executable, "-c", code, *args]
