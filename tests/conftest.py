"""Shared fixtures: a tiny BERT, small review splits, and throwaway copies of this project
in which the real `dvc repro` runs on them."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

# Never wait for the hub: without this a hub lookup here takes ~25 s to fail. Set before anything
# imports huggingface_hub, which reads it once.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from tests.fixtures import add_dirty_rows, write_splits, write_tiny_bert  # noqa: E402
from zh_sentiment.sandbox import ROOT, copy_project, edit_params, python_first_env, ran_stages  # noqa: E402, F401

# Small enough to run in seconds, strong enough that the toy task is learnt.
FIXTURE_PARAMS = {
    "tokenize.max_length": 64,
    "embed.batch_size": 16,
    "train.lr": 0.01,
    "train.epochs": 100,
    "train.patience": 10,
    "train.batch_size": 32,
    # the tiny BERT has 2 layers: fine-tune the top one, with the larger lr a random-init model needs
    "finetune.layers": 1,
    "finetune.lr": 0.002,
    "finetune.batch_size": 16,
}


class Project:
    """A copy of this project in a temporary folder, with its own git repo."""

    def __init__(self, path: Path):
        self.path = path
        self.ran: list[str] = []  # the stages the last repro() ran

    def run(self, *command: str, check: bool = True, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
        """Run `command` in the project, with the interpreter running the tests first on PATH."""
        result = subprocess.run(
            command, cwd=self.path, capture_output=True, text=True, env=python_first_env(env), **kwargs
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def dvc(self, *args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check, env=env)

    def stage(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", f"stages.{name}", *args, check=check)

    def repro(self) -> list[str]:
        """Run `dvc repro`; return the stages that ran, in order."""
        self.ran = ran_stages(self.dvc("repro").stdout)
        return self.ran

    def set_params(self, changes: dict) -> None:
        """Change params.yaml; `changes` maps dotted keys (train.lr) to values."""
        edit_params(self.path / "params.yaml", changes)

    def commit(self, message: str) -> None:
        self.run("git", "add", "-A")
        self.run("git", "commit", "-q", "--allow-empty", "-m", message)

    def json(self, relative: str) -> dict:
        return json.loads((self.path / relative).read_text(encoding="utf-8"))

    def copy(self, dest: Path) -> "Project":
        copy_tree(self.path, dest)
        return Project(dest)


def copy_tree(source: Path, dest: Path) -> Path:
    """A copy that a test may edit: DVC's outputs are read-only hard links into its cache
    (.dvc/config), so each copied file gets its owner's write bit back (other bits, such as
    an executable .ci/run's, stay as they are: git would see them change)."""

    def copy_writable(src, dst):
        shutil.copy2(src, dst)
        os.chmod(dst, os.stat(dst).st_mode | stat.S_IWUSR)

    return Path(shutil.copytree(source, dest, symlinks=True, copy_function=copy_writable))


def new_project(dest: Path, params: dict, root: Path = ROOT) -> Project:
    """This project's tracked files and pristine params.yaml, with `params` changes, in a fresh
    git repo at `dest` (see zh_sentiment/sandbox.py): the user's untracked files and edits to
    params.yaml never reach the tests."""
    return Project(copy_project(dest, params, root))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def reviews_folder(tmp_path_factory) -> tuple[Path, dict]:
    """CSV splits with a learnable signal plus one dirty row per cleaning rule in train;
    and the counts clean must report for train."""
    folder = write_splits(tmp_path_factory.mktemp("data") / "reviews")
    return folder, add_dirty_rows(folder)


@pytest.fixture(scope="session")
def fixture_params(tiny_bert, reviews_folder) -> dict:
    return {"data.dataset": str(reviews_folder[0]), "model.name": str(tiny_bert), **FIXTURE_PARAMS}


@pytest.fixture
def project(tmp_path, fixture_params) -> Project:
    """A fresh, not yet run copy of the project, pointed at the fixtures."""
    return new_project(tmp_path / "project", fixture_params)


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, fixture_params) -> Project:
    """The project after one full `dvc repro`, committed. Copy it before changing it."""
    project = new_project(tmp_path_factory.mktemp("trained") / "project", fixture_params)
    project.repro()
    project.commit("trained")
    return project
