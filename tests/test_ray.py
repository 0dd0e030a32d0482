"""`zh-sentiment predict --ray ADDRESS` on a real Ray cluster: a head and one more worker node started here on
127.0.0.1 only (one CPU each, no dashboard, Ray's files in a temporary folder), stopped at the end (its own
processes, by pid: `ray stop` would stop any other Ray cluster of this user too), and no Ray process of it
left. Its output equals the local run's, also when an actor's process is killed midway, and no socket of the
cluster or the driver is on any address but 127.0.0.1.

Ray 2.60 replaces 127.0.0.1 with this machine's interface address wherever it is given (`--address`,
`--node-ip-address`, `ray.init(address=...)`: services.resolve_ip_for_localhost -> get_node_ip_address), unless
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which keeps every process on 127.0.0.1 and binds its servers there; but
with it `ray start --address` refuses to add a node (scripts.py, "Multi-node Ray clusters are not supported").
So the head comes from `ray start --head` and the second node from the code `ray start` runs for one
(ray._private.node.Node, head=False), as Ray's own ray.cluster_utils.Cluster does: see docs/corpus.md."""

import contextlib
import ipaddress
import json
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
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # 127.0.0.1 stays 127.0.0.1 (see the module's docstring)
    }


def node_options() -> dict:
    """One small node: its own free ports (two nodes share this machine), as `ray start` options."""
    ports = (
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "metrics-export-port",
        "runtime-env-agent-port",
    )
    return {
        "node-ip-address": "127.0.0.1",
        "num-cpus": 1,
        "object-store-memory": 100_000_000,
        **{port: free_port() for port in ports},
    }


# The second node: what `ray start --address=GCS` runs (scripts.py, its non-head branch), without the check
# that refuses it when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. Its processes outlive this one, as `ray start`'s do.
WORKER_NODE = """
import json, sys
from ray._private.node import Node
from ray._private.parameter import RayParams
options = json.loads(sys.argv[1])
options["metrics_agent_port"] = options.pop("dashboard_agent_grpc_port")
Node(RayParams(gcs_address=sys.argv[2], **options), head=False, shutdown_at_exit=False, spawn_reaper=False)
"""


def sockets_off_loopback(pids: list[int]) -> list[str]:
    """The TCP/UDP endpoints of these processes' sockets that are on an address other than 127.0.0.1 (a
    listening socket's remote end, 0.0.0.0 or ::, aside): read from /proc, as `ss -tunap` does."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, as IPv4 and as IPv4-mapped IPv6
    unbound = {"00000000", "0" * 32}
    wrong = []
    for table in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1].split(":")[0], fields[2].split(":")[0], fields[9]
            if inode in inodes and (local not in loopback or remote not in loopback | unbound):
                wrong.append(f"{table} {readable(fields[1])} -> {readable(fields[2])}")
    return wrong


def readable(endpoint: str) -> str:
    """/proc/net/tcp's 0100007F:1F90 as 127.0.0.1:8080 (its address is 32-bit words in the host's order)."""
    address, port = endpoint.split(":")
    packed = b"".join(bytes.fromhex(address[i : i + 8])[::-1] for i in range(0, len(address), 8))
    return f"{ipaddress.ip_address(packed)}:{int(port, 16)}"


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
        options = [f"--{name}={value}" for name, value in node_options().items()]
        subprocess.run(
            [*head, *options, "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120
        )
        options = json.dumps({name.replace("-", "_"): value for name, value in node_options().items()})
        worker = [sys.executable, "-c", WORKER_NODE, options, f"127.0.0.1:{port}"]
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
    assert not sockets_off_loopback([*cluster_processes(cluster[2]), process.pid])  # the driver's too
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
