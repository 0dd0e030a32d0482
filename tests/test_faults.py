"""A stage killed midway leaves nothing that a later run would take as complete."""

import json
import os
import signal
import stat
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
    assert ran[0] == "embed" and set(ran) <= {"embed", "train", "evaluate", "label_issues", "finetune"}  # and after
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


def test_the_next_write_discards_a_killed_stages_leftover_folder_and_touches_nothing_else(tmp_path):
    """A stage killed midway leaves its temporary folder behind; the next write of the same output removes it
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

    with atomic_dir(output) as out:
        (out / "train.safetensors").write_bytes(b"whole")

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["features", running.name, *users])
    assert all((tmp_path / name).read_text(encoding="utf-8") == "the user's" for name in users)


def test_a_file_write_never_removes_a_file_named_like_a_leftover(tmp_path):
    """Any name may be a user's file (predict's --input among them): a file write removes nothing but its own."""
    users = tmp_path / f".features.{a_dead_pid()}-0123abcd.tmp"
    users.write_text("the user's", encoding="utf-8")
    write_json(tmp_path / "features", {"whole": True})
    assert users.read_text(encoding="utf-8") == "the user's"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["features", users.name])


def test_a_file_output_that_is_a_link_a_pipe_or_a_private_file_stays_what_it_is(tmp_path):
    target = tmp_path / "precious.csv"
    target.write_text("old", encoding="utf-8")
    target.chmod(0o600)
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    write_json(link, {"new": True})
    assert link.is_symlink() and json.loads(target.read_text(encoding="utf-8")) == {"new": True}
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # a private output stays private
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    write_json(fifo, {"piped": True})
    assert json.loads(reader.communicate(timeout=10)[0]) == {"piped": True}
    assert stat.S_ISFIFO(fifo.stat().st_mode)  # still a pipe, not a file put in its place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link.csv", "precious.csv"]
