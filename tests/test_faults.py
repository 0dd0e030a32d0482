"""A stage killed midway leaves nothing that a later run would take as complete."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURE_PARAMS
from zh_sentiment.outputs import atomic_dir, atomic_file, write_json
from zh_sentiment.sandbox import python_first_env


def start(project, *command: str) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=project.path,
        env=python_first_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(folder: Path, pattern: str, process: subprocess.Popen, timeout: float = 180) -> None:
    """Return as soon as something in `folder` matches `pattern`, while `process` still runs."""
    deadline = time.monotonic() + timeout
    while not list(folder.glob(pattern)):
        assert process.poll() is None, f"the process ended before {pattern} appeared:\n{process.stderr.read()}"
        assert time.monotonic() < deadline, f"{pattern} did not appear within {timeout} s"
        time.sleep(0.002)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_repro_killed_during_embed_recovers_on_the_next_repro(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "killed")
    project.set_params({"embed.batch_size": 1})  # embed re-runs, and longer: a wider window to kill it in
    repro = start(project, sys.executable, "-m", "dvc", "repro")
    wait_for(project.path / "data", ".features.*.tmp", repro)  # embed's temporary folder for data/features
    os.killpg(repro.pid, signal.SIGKILL)
    repro.wait()

    assert not (project.path / "data/features").exists()
    assert "embed" in project.dvc("status").stdout
    # a quicker embed, at a batch size the DVC cache holds no features for (it would restore those)
    project.set_params({"embed.batch_size": FIXTURE_PARAMS["embed.batch_size"] // 2})
    ran = project.repro()
    assert ran[0] == "embed" and set(ran) <= {"embed", "train", "evaluate", "finetune"}  # then what its output reached
    assert "up to date" in project.dvc("status").stdout
    assert not list(project.path.rglob("*.tmp"))
    assert project.json("metrics/frozen_head.json")["accuracy"] >= 0.9


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, RuntimeError])
def test_an_interrupted_write_keeps_the_previous_output_whole(tmp_path, interrupt):
    """Ctrl-C (KeyboardInterrupt) or an error midway through a stage's atomic_dir block."""
    features = tmp_path / "data/features"
    features.mkdir(parents=True)
    (features / "train.safetensors").write_bytes(b"old features")
    with pytest.raises(interrupt), atomic_dir(features) as out:
        (out / "train.safetensors").write_bytes(b"half of the new")
        raise interrupt
    assert folder_bytes(features) == {"train.safetensors": b"old features"}
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["features"]


def test_an_interrupted_file_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"accuracy": 0.5})
    with pytest.raises(KeyboardInterrupt), atomic_file(path) as tmp:
        tmp.write_text("{half", encoding="utf-8")
        raise KeyboardInterrupt
    assert json.loads(path.read_text(encoding="utf-8")) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def a_dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


@pytest.mark.parametrize("write", ["file", "folder"])
def test_the_next_write_discards_a_killed_writers_leftover_and_touches_nothing_else(tmp_path, write):
    """A writer killed midway leaves its temporary name behind; the next write of the same output removes it
    (its pid is gone), and nothing else: not a running writer's, not a user's file with a similar name."""
    output = tmp_path / "features"
    leftover = tmp_path / f".features.{a_dead_pid()}-0123abcd.tmp"
    running = tmp_path / f".features.{os.getpid()}-0123abcd.tmp"
    users = ["features.tmp", ".features.tmp", f".features.{a_dead_pid()}.tmp", ".features.1-x.tmp"]
    for folder in (leftover, running):
        folder.mkdir()
        (folder / "train.safetensors").write_bytes(b"half written")
    for name in users:
        (tmp_path / name).write_text("the user's", encoding="utf-8")

    if write == "folder":
        with atomic_dir(output) as out:
            (out / "train.safetensors").write_bytes(b"whole")
    else:
        write_json(output, {"whole": True})

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["features", running.name, *users])
    assert all((tmp_path / name).read_text(encoding="utf-8") == "the user's" for name in users)
