"""A local Ray cluster on 127.0.0.1 only, for the benchmark (bench/corpus.py) and the tests (tests/test_ray.py):
a head from `ray start --head`, more nodes if asked, Ray's files in a temporary folder of its own, stopped by pid.

Ray 2.60 replaces 127.0.0.1 with this machine's interface address wherever it is given (`--address`,
`--node-ip-address`, `ray.init(address=...)`: services.resolve_ip_for_localhost -> get_node_ip_address), and its
servers then listen on every interface, unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (LOOPBACK), which keeps every
process on 127.0.0.1; but with it `ray start --address` refuses to add a node (scripts.py, "Multi-node Ray
clusters are not supported"). So a second node comes from the code `ray start` runs for one
(ray._private.node.Node, head=False), as Ray's own ray.cluster_utils.Cluster does: see docs/corpus.md.
"""

import contextlib
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

from zh_sentiment.sandbox import ROOT, python_first_env

RAY = str(Path(sys.executable).with_name("ray"))
# for the cluster's processes and every driver that joins it (predict --ray), alike
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_env(temp: str) -> dict:
    """The environment of the cluster's processes and of the drivers that join it."""
    return python_first_env(
        {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "HF_HUB_OFFLINE": "1",
            "RAY_TMPDIR": temp,
            "PYTHONPATH": str(ROOT),
            **LOOPBACK,
        }
    )


def node_options(cpus: int, object_store_bytes: int) -> dict:
    """One node's `ray start` options: its own free ports, as several nodes share this machine."""
    ports = ["dashboard-agent-listen-port", "dashboard-agent-grpc-port"]
    ports += ["metrics-export-port", "runtime-env-agent-port"]
    return {
        "node-ip-address": "127.0.0.1",
        "num-cpus": cpus,
        "object-store-memory": object_store_bytes,
        **{port: free_port() for port in ports},
    }


# A node more: what `ray start --address=GCS` runs (scripts.py, its non-head branch), without the check that
# refuses it when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. Its processes outlive this one, as `ray start`'s do.
WORKER_NODE = """
import json, sys
from ray._private.node import Node
from ray._private.parameter import RayParams
options = json.loads(sys.argv[1])
options["metrics_agent_port"] = options.pop("dashboard_agent_grpc_port")
Node(RayParams(gcs_address=sys.argv[2], **options), head=False, shutdown_at_exit=False, spawn_reaper=False)
"""


@contextlib.contextmanager
def local_cluster(nodes: int = 1, cpus: int = 1, object_store_bytes: int = 100_000_000):
    """(address, env, temp) of a cluster of `nodes` nodes of `cpus` CPUs each; stopped on the way out, and an
    AssertionError if any of its processes outlived that."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env, port = ray_env(temp), free_port()
    try:
        head = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]
        options = [f"--{name}={value}" for name, value in node_options(cpus, object_store_bytes).items()]
        head += [*options, "--disable-usage-stats"]
        subprocess.run(head, env=env, check=True, capture_output=True, timeout=300)
        for _ in range(nodes - 1):
            options = node_options(cpus, object_store_bytes)
            options = json.dumps({name.replace("-", "_"): value for name, value in options.items()})
            worker = [sys.executable, "-c", WORKER_NODE, options, f"127.0.0.1:{port}"]
            subprocess.run(worker, env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}", env, temp
    finally:
        left = stop_cluster(temp)
        assert not left, f"Ray processes {left} outlived their cluster's stop"


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
