"""The fine-tuning processes: none outlives its launcher, one writer at a time, and every way a run
fails (an error in every process, a killed or stalled process, a full disk) ends in one message."""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zh_sentiment.distributed import LOCK_FILE
from zh_sentiment.live import read_history
from zh_sentiment.sandbox import python_first_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; prctl is Linux's")

TRAINING = {"finetune.epochs": 30, "finetune.patience": 30}  # long enough to be caught mid-run


def processes_in(folder: Path) -> set[int]:
    """The live processes working in `folder` (what dvc, the stage and its workers run in)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if Path(os.readlink(proc / "cwd")) == folder.resolve():
                    found.add(int(proc.name))
            except OSError:  # gone meanwhile, a zombie, or not ours to read
                pass
    return found


def kill_everything(folder: Path, process: subprocess.Popen) -> None:
    """Whatever a test did, leave no process behind: those working in `folder`, and the one it started."""
    for pid in processes_in(folder):
        os.kill(pid, signal.SIGKILL)
    if process.poll() is None:
        process.kill()
    process.wait()


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def descendant_running(ancestor: int, module: str) -> int | None:
    """The process under `ancestor` running `python -m module` (DVC runs a stage's cmd through a shell,
    which may stay between them)."""
    for pid in children(ancestor):
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:3] == [b"-m", module.encode()]:
            return pid
        if (found := descendant_running(pid, module)) is not None:
            return found
    return None


def workers_of(launcher: int) -> list[int]:
    """The training processes a launcher started (multiprocessing spawn), in the order it started them."""
    return sorted(pid for pid in children(launcher) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes())


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


class Started:
    """A command started in the project, its output read line by line until a marker shows."""

    def __init__(self, project, *command: str, env: dict[str, str] | None = None):
        self.project = project
        env = python_first_env({**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.process = subprocess.Popen(
            command,
            cwd=project.path,
            env=env,
            start_new_session=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output = []

    def wait_for(self, marker: str) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            if marker in line:
                return
        raise AssertionError(f"the run ended before {marker!r}:\n{''.join(self.output)}")

    def finish(self, timeout: float) -> str:
        rest, _ = self.process.communicate(timeout=timeout)
        self.output.append(rest)
        return "".join(self.output)

    def kill_everything(self) -> None:
        kill_everything(self.project.path, self.process)


def assert_one_message(output: str, message: str) -> None:
    assert output.count("error: ") == 1 and f"error: {message}" in output, output
    for noise in ("Traceback", "ChildFailedError", "OMP_NUM_THREADS", "torchrun", "leaked semaphore"):
        assert noise not in output, output
    assert output.rstrip().splitlines()[-1].startswith(("error: ", "(set PIPELINE_DEBUG")), output


# DVC runs a stage through $SHELL, /bin/sh when unset: bash replaces itself with the stage, dash stays
# between them and outlives a killed DVC.
@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_killing_dvc_kills_every_training_process(trained_project, tmp_path, shell):
    project = trained_project.copy(tmp_path / "killed")
    project.set_params({**TRAINING, "finetune.processes": 2})
    repro = Started(project, sys.executable, "-m", "dvc", "repro", "-f", "-s", "finetune", env={"SHELL": shell})
    try:
        repro.wait_for("finetune epoch 1")
        launcher = descendant_running(repro.process.pid, "stages.finetune")
        assert launcher is not None and len(workers_of(launcher)) == 2
        os.kill(repro.process.pid, signal.SIGKILL)  # dvc only: nothing it could pass on
        repro.process.wait()
        wait_until(lambda: not processes_in(project.path), 10, "every training process died with dvc")
    finally:
        repro.kill_everything()
    # so nothing can write models/finetuned later: the next run is the only writer
    project.set_params({"finetune.epochs": 1, "finetune.processes": 1})
    assert project.repro() == ["finetune"]
    assert len(read_history("finetuned", project.path)) == 1


def test_a_second_run_while_one_holds_the_project_is_refused(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "locked")
    before = (project.path / "models/finetuned/model.safetensors").read_bytes()
    lock_file = project.path / LOCK_FILE
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w", encoding="utf-8") as held:  # what a running finetune holds, from another process
        held.write("4242\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        result = project.stage("finetune", check=False)
    assert result.returncode == 1
    assert_one_message(result.stderr, "another finetune run (pid 4242) is writing models/finetuned")
    assert "`kill 4242`" in result.stderr
    assert (project.path / "models/finetuned/model.safetensors").read_bytes() == before


def test_an_error_in_every_process_is_one_message(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "every")
    project.set_params({"finetune.processes": 2})
    tokenization = project.path / "data/tokens/tokenization.json"
    info = json.loads(tokenization.read_text(encoding="utf-8"))
    tokenization.unlink()  # a read-only hard link into the cache: replace it, never edit it
    tokenization.write_text(json.dumps({**info, "model": str(tmp_path / "gone")}), encoding="utf-8")
    result = project.stage("finetune", check=False)
    assert result.returncode == 1
    assert_one_message(result.stderr + result.stdout, "model.name: model folder")
    assert str(tmp_path / "gone") in result.stderr


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_a_lost_or_stalled_process_stops_the_run_with_one_message_naming_it(trained_project, tmp_path, how):
    project = trained_project.copy(tmp_path / how)
    project.set_params({**TRAINING, "finetune.processes": 2, "finetune.timeout_seconds": 3})
    run = Started(project, sys.executable, "-m", "stages.finetune")
    try:
        run.wait_for("finetune epoch 1")
        victim = workers_of(run.process.pid)[-1]
        os.kill(victim, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        signalled = time.monotonic()
        output = run.finish(timeout=120)  # gloo's own default: 30 minutes
        waited = time.monotonic() - signalled
        assert not processes_in(project.path), "a process of the run is left"
    finally:
        run.kill_everything()
    print(f"{how}: the run stopped {waited:.1f} s after the signal")
    assert run.process.returncode == 1
    if how == "killed":
        assert_one_message(output, f"finetune: process 1 (pid {victim}) of 2 was killed by SIGKILL")
    else:
        assert_one_message(output, f"finetune: process 1 (pid {victim}) of 2 stopped answering")
        assert "finetune.timeout_seconds = 3 s" in output


def can_mount_a_small_disk() -> bool:
    if not shutil.which("unshare"):
        return False
    mount = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "tmpfs", "/mnt"], capture_output=True)
    return mount.returncode == 0


@pytest.mark.skipif(not can_mount_a_small_disk(), reason="needs `unshare -rm` (user and mount namespaces)")
def test_a_full_disk_while_saving_is_one_message_saying_what_and_how_much(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "full")
    project.set_params({"finetune.processes": 2, "finetune.epochs": 1})
    # models/ on a 512 KiB disk of its own, seen by this command only: the fine-tuned model needs ~1.3 MB
    script = f"mount -t tmpfs -o size=512k tmpfs models && exec {sys.executable} -m stages.finetune"
    result = project.run("unshare", "-rm", "sh", "-c", script, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert_one_message(output, "no space left on the device for models/finetuned: it needs more than the ")
    assert "needs at least 0.0 MB" not in output


def test_the_stage_outside_dvc_then_dvc_commit_leaves_the_project_consistent(trained_project, tmp_path):
    """README: the stage alone, outside DVC, then `dvc commit`; README's way back from an experiment still works."""
    project = trained_project.copy(tmp_path / "outside")
    project.set_params({"finetune.epochs": 1})
    project.run(sys.executable, "-m", "stages.finetune")
    assert "finetune" in project.dvc("status").stdout
    project.dvc("commit", "-f", "finetune")
    assert "Data and pipelines are up to date." in project.dvc("status").stdout
    project.run("git", "checkout", "--", "dvc.lock", "metrics", "params.yaml")
    project.dvc("checkout")  # without --force: nothing uncommitted is left to lose
    assert project.run("git", "status", "--porcelain").stdout == ""
    assert "Data and pipelines are up to date." in project.dvc("status").stdout
