"""A stage killed midway leaves nothing that a later run would take as complete."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def start(project, *command: str) -> subprocess.Popen:
    return subprocess.Popen(
        command, cwd=project.path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 180) -> None:
    """Return as soon as `path` exists, while `process` still runs."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, f"the process ended before {path.name} appeared:\n{process.stderr.read()}"
        assert time.monotonic() < deadline, f"{path.name} did not appear within {timeout} s"
        time.sleep(0.002)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_repro_killed_during_embed_recovers_on_the_next_repro(project):
    project.set_params({"embed.batch_size": 1})  # a longer embed: a wider window to kill it in
    repro = start(project, sys.executable, "-m", "dvc", "repro")
    wait_for(project.path / "data/features.tmp", repro)
    os.killpg(repro.pid, signal.SIGKILL)
    repro.wait()

    assert not (project.path / "data/features").exists()
    assert "embed" in project.dvc("status").stdout
    assert project.repro() == ["embed", "train", "evaluate"]
    assert not list(project.path.rglob("*.tmp"))
    assert project.json("metrics/frozen_head.json")["accuracy"] >= 0.9


def test_an_interrupted_stage_keeps_the_previous_output_whole(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "interrupted")
    before = folder_bytes(project.path / "data/features")
    project.set_params({"embed.batch_size": 1})
    embed = start(project, sys.executable, "-m", "stages.embed")
    wait_for(project.path / "data/features.tmp", embed)
    os.killpg(embed.pid, signal.SIGINT)
    assert embed.wait(timeout=60) != 0

    assert folder_bytes(project.path / "data/features") == before
    assert not (project.path / "data/features.tmp").exists()
