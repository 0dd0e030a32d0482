"""`zh-sentiment predict --ray ADDRESS` on a real Ray cluster: a head and one more worker node started here on
127.0.0.1 with `ray start` (one CPU each, no dashboard, Ray's files in a temporary folder), stopped at the end
(its own processes, by pid: `ray stop` would stop any other Ray cluster of this user too), and no Ray
process of it left. Its output equals the local run's, also when an actor's
process is killed midway."""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_corpus import read_output, run_predict, write_inputs, write_model
from zh_sentiment import predict
from zh_sentiment.sandbox import ROOT, python_first_env

pytest.importorskip("ray")  # requirements-dev.txt installs it; the tests of everything else run without

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_env(temp: str) -> dict:
    return python_first_env() | {
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        "RAY_TMPDIR": temp,
        "PYTHONPATH": str(ROOT),
    }


def node_options() -> list[str]:
    """One small node: its own free ports (two nodes share this machine), no dashboard."""
    ports = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    )
    return [
        "--node-ip-address=127.0.0.1",
        "--num-cpus=1",
        "--object-store-memory=100000000",
        "--disable-usage-stats",
        *(f"--{port}={free_port()}" for port in ports),
    ]


def cluster_processes(temp: str) -> list[int]:
    """The cluster's processes: those whose command line names its temporary folder (gcs_server, raylets,
    agents) and all their descendants (workers, whose titles say only ray::...)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if state != "Z":  # a zombie is gone, only not yet reaped
                    parents[int(entry.name)] = (int(parent), temp.encode() in (entry / "cmdline").read_bytes())
            except OSError:
                continue
    found = {pid for pid, (_, named) in parents.items() if named}
    while True:
        more = {pid for pid, (parent, _) in parents.items() if parent in found} - found
        if not more:
            return sorted(found)
        found |= more


def stop_cluster(temp: str) -> list[int]:
    """Stop this cluster's processes only (`ray stop` would stop every Ray cluster of this user on the
    machine): SIGTERM, and SIGKILL for those still there after 5 s (as `ray stop` does, after 16). The pids that are
    still alive after that (none, or something is wrong)."""
    for signum, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        for pid in cluster_processes(temp):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace
        while cluster_processes(temp) and time.monotonic() < deadline:
            time.sleep(0.2)
    shutil.rmtree(temp, ignore_errors=True)
    return cluster_processes(temp)


@pytest.fixture(scope="module")
def cluster():
    """The address of a 2-node Ray cluster on 127.0.0.1 (one per module: starting one takes seconds)."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env, port = ray_env(temp), free_port()
    head = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]
    try:
        subprocess.run([*head, *node_options()], env=env, check=True, capture_output=True, timeout=120)
        worker = [RAY, "start", f"--address=127.0.0.1:{port}", *node_options()]
        subprocess.run(worker, env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", env, temp
    finally:
        left = stop_cluster(temp)
        assert not left, f"Ray processes {left} outlived their cluster's stop"


@pytest.fixture(scope="module")
def job(tmp_path_factory, cluster):
    """A model, a corpus of CSV/JSONL/Parquet files, and its local run's output."""
    root = tmp_path_factory.mktemp("ray-job")
    model, corpus = write_model(root / "model"), root / "reviews"
    write_inputs(corpus, rows=240)
    local = root / "local"
    predict.main(
        [
            "--input",
            str(corpus),
            "--output",
            str(local),
            "--model-dir",
            str(model),
            "--id-column",
            "id",
            "--rows-per-shard",
            "20",
        ]
    )
    return root, model, corpus, read_output(local)


def predict_on_ray(job, cluster, out: Path) -> subprocess.Popen:
    root, model, corpus, _ = job
    command = [
        sys.executable,
        "-m",
        "zh_sentiment",
        "predict",
        "--input",
        corpus,
        "--output",
        out,
        "--model-dir",
        model,
        "--id-column",
        "id",
        "--rows-per-shard",
        "20",
        "--ray",
        cluster[0],
    ]
    return subprocess.Popen(command, env=cluster[1], stderr=subprocess.PIPE, text=True)


def assert_same(scored: pd.DataFrame, local: pd.DataFrame) -> None:
    assert list(scored.columns) == list(local.columns)
    assert scored["id"].tolist() == local["id"].tolist() and scored["id"].is_unique
    assert scored["predicted"].tolist() == local["predicted"].tolist()
    for column in ("probability", "probability_negative", "probability_positive"):
        np.testing.assert_allclose(scored[column], local[column], atol=1e-5)


def test_the_output_equals_the_local_run_also_when_an_actor_is_killed_midway(job, cluster, tmp_path):
    """Two actors, one per node; once the first shard is written, one actor's process is killed: Ray restarts
    it and runs its part again, and every row is written once, as the local run wrote it."""
    out = tmp_path / "scored"
    process = predict_on_ray(job, cluster, out)
    deadline = time.monotonic() + 240
    while not list(out.glob("*.parquet")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    actors = ray_processes_named("RayScorer", cluster[2])
    assert len(actors) == 2, "both actors were running"
    os.kill(actors[0], signal.SIGKILL)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "2 actor(s) on 2 node(s)" in err
    assert len(list(out.glob("*.parquet"))) == 12
    assert_same(read_output(out), job[3])


def ray_processes_named(name: str, temp: str) -> list[int]:
    """This cluster's processes with `name` in their title: Ray names an actor's process after its class,
    ray::MapWorker(MapBatches(RayScorer))."""
    found = []
    for pid in cluster_processes(temp):
        try:
            if name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_no_cluster_at_the_address_is_one_line(job, capsys):
    root, model, corpus, _ = job
    code, err = run_predict(
        capsys, "--input", corpus, "--output", root / "none", "--model-dir", model, "--ray", f"127.0.0.1:{free_port()}"
    )
    assert code == 1 and "no Ray cluster answers there" in err and "Traceback" not in err
    assert not (root / "none").exists()
