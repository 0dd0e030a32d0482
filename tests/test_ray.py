"""`zh-sentiment predict --ray ADDRESS` on a real Ray cluster: a head and one more worker node started here on
127.0.0.1 only (one CPU each, no dashboard, Ray's files in a temporary folder: bench/ray_cluster.py), stopped at
the end, and no Ray process of it left. Its output equals the local run's, also when an actor's process is
killed midway, and no socket of the cluster or the driver is on any address but 127.0.0.1."""

import contextlib
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.ray_cluster import cluster_processes, free_port, local_cluster
from tests.test_corpus import read_output, run_predict, write_inputs, write_model
from zh_sentiment import predict

pytest.importorskip("ray")  # requirements-dev.txt installs it; the tests of everything else run without


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


@pytest.fixture(scope="module")
def cluster():
    """The address, environment and folder of a 2-node Ray cluster on 127.0.0.1 (one per module: it takes seconds)."""
    with local_cluster(nodes=2, cpus=1, object_store_bytes=100_000_000) as found:
        yield found


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
