"""Fine-tuning across nodes: two torchrun launchers on this machine, each a node with its own copy of the
project, run the real stage as one job. It learns what two processes on one node learn, only rank 0 writes,
and a node that goes stops the other with one message and leaves no process behind."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.test_processes import children, kill_everything, processes_in, wait_until
from zh_sentiment.sandbox import python_first_env

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; prctl is Linux's")

SHORT = {"finetune.epochs": 2}  # two epochs: enough to compare the runs' models and metrics


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One node: `zh-sentiment torchrun --nnodes=2 ... -m stages.finetune` (torchrun, README's command) started in
    its own session in `project`, as a scheduler would start it, its output in a file (a pipe nobody reads could
    fill and stall it)."""

    def __init__(self, project, port: int):
        self.project, self.log = project, project.path / "node.log"
        command = [
            *(sys.executable, "-m", "zh_sentiment", "torchrun", "--nnodes=2", "--nproc-per-node=1", "--max-restarts=0"),
            *("--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test"),
            *("--local-addr=127.0.0.1", "--master-addr=127.0.0.1", "-m", "stages.finetune"),
        ]
        with open(self.log, "w", encoding="utf-8") as log:
            env = python_first_env({**os.environ, "PYTHONUNBUFFERED": "1"})
            self.process = subprocess.Popen(
                command, cwd=project.path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def rank0(self) -> bool:
        """Whether this node holds rank 0: only rank 0 prints the run's header and progress."""
        return "process(es) on cpu" in self.output()

    def kill_everything(self) -> None:
        kill_everything(self.project.path, self.process)


@pytest.fixture
def nodes(trained_project, tmp_path):
    """Start two nodes on copies of the trained project, changed by `changes`; kill whatever is left after."""
    started = []

    def start(changes: dict) -> list[Node]:
        port = free_port()
        for name in ("a", "b"):
            project = trained_project.copy(tmp_path / name)
            project.set_params(changes)
            started.append(Node(project, port))
        return started

    yield start
    for node in started:
        node.kill_everything()


def weights(project) -> dict[str, torch.Tensor]:
    return load_file(project.path / "models/finetuned/model.safetensors")


def test_two_nodes_learn_what_two_processes_on_one_node_learn_and_only_rank_0_writes(trained_project, tmp_path, nodes):
    before = weights(trained_project)
    single = trained_project.copy(tmp_path / "single")
    single.set_params({**SHORT, "finetune.processes": 2})
    a, b = nodes(SHORT)  # the two nodes start first: they train while the single-node run does
    single.run(sys.executable, "-m", "stages.finetune")
    for node in (a, b):
        assert node.process.wait(timeout=180) == 0, node.output()
    assert a.rank0() != b.rank0(), a.output() + b.output()
    writer, other = (a, b) if a.rank0() else (b, a)

    one, two = single.json("metrics/finetuned.json"), writer.project.json("metrics/finetuned.json")
    print(f"test accuracy: one node {one['accuracy']}, two nodes {two['accuracy']}")
    assert writer.project.json("metrics/finetuned/training.json")["processes"] == 2
    # test_finetune's tolerance for 2 processes against 1: one review (each rank draws its own dropout masks)
    one_review = 1 / one["n"] + 1e-5
    assert abs(one["accuracy"] - two["accuracy"]) <= one_review
    assert abs(one["validation_accuracy"] - two["validation_accuracy"]) <= one_review
    # only rank 0 wrote: the other node's model and reports are the ones it started with
    assert all(torch.equal(weights(other.project)[key], before[key]) for key in before)
    assert other.project.json("metrics/finetuned.json") == trained_project.json("metrics/finetuned.json")
    assert not processes_in(a.project.path) and not processes_in(b.project.path)


def test_a_killed_node_stops_the_other_with_one_message_and_leaves_no_process(nodes):
    timeout = 5
    a, b = nodes({"finetune.epochs": 30, "finetune.patience": 30, "finetune.timeout_seconds": timeout})
    wait_until(lambda: "finetune epoch 1" in a.output() + b.output(), 300, "the run trained")  # a loaded machine
    survivor, victim = (a, b) if a.rank0() else (b, a)
    worker = children(victim.process.pid)  # torchrun's worker runs in a session of its own
    assert len(worker) == 1 and os.getsid(worker[0]) != os.getsid(victim.process.pid)
    victim.process.kill()  # SIGKILL to torchrun alone: as if its node went away
    killed = time.monotonic()
    wait_until(lambda: not Path(f"/proc/{worker[0]}").exists(), 5, "the killed torchrun's worker died with it")
    assert survivor.process.wait(timeout=timeout + 60) != 0
    waited = time.monotonic() - killed
    print(f"the surviving node stopped {waited:.1f} s after the other was killed")
    wait_until(lambda: not processes_in(survivor.project.path), 10, "the surviving node's worker exited")
    assert not processes_in(victim.project.path)

    output = survivor.output()
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    print(errors)
    # the worker's line (torchrun's root cause), or, when the killed node hosted the rendezvous, that the nodes
    # could no longer meet there; never a traceback, the worker's or torchrun's
    assert len(errors) == 1, output
    assert errors[0].startswith(("error: finetune: rank 0 of 2 ", "error: torchrun: the nodes could not meet")), output
    assert "Traceback" not in output and "ChildFailedError" not in output, output
    assert waited < timeout + 15  # the collective's timeout, and torchrun's own shutdown on a loaded machine
