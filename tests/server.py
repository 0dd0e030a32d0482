"""A real `zh-sentiment serve` in a subprocess on a free local port, for the server and page tests."""

import json
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from zh_sentiment.sandbox import command_dying_with_parent, python_first_env


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    def __init__(self, cwd: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would block the server
        command = command_dying_with_parent("serve", "--port", str(self.port), "--no-access-log", *args)
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=python_first_env(),
            stdout=self.log,
            stderr=self.log,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_ready(self, timeout: float = 120) -> "Server":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the server exited {self.process.returncode}:\n{self.output()}")
            try:
                if self.get("/health")[0] == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the server did not answer /health within {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, body text) of one request; an HTTP error status is an answer too, not an exception."""
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, body, path: str = "/predict"):
        """POST `body` (a dict is sent as JSON); (status, parsed JSON answer)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        status, text = self.request("POST", path, data, {"Content-Type": "application/json"})
        return status, json.loads(text)

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics, keyed like `name{label="value",...}`."""
        samples = {}
        for family in text_string_to_metric_families(self.get("/metrics")[1]):
            for sample in family.samples:
                labels = ",".join(f'{key}="{value}"' for key, value in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples


@contextmanager
def running_server(cwd: Path, *args: str):
    server = Server(cwd, *args)
    try:
        yield server.wait_ready()
    finally:
        server.stop()
