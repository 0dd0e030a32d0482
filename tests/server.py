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

API_KEY_VARIABLE = "ZH_SENTIMENT_API_KEY"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Service:
    """A process the tests start (a server, a store) and stop, its output in a file: a full pipe would block it."""

    name = "the service"

    def start(self, command: list[str], **popen) -> None:
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log, **popen)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def wait_until(self, ready, what: str, timeout: float) -> None:
        """Until `ready()` is true; an AssertionError with the output if the process exits or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.process.returncode}:\n{self.output()}")
            if ready():
                return
            time.sleep(0.2)
        raise AssertionError(f"{self.name} did not {what} within {timeout} s:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Server(Service):
    """`api_key`: given to the server in its environment variable, and sent with every request of this object's
    methods. `file_limit`: the server's open-file limit, soft and hard."""

    name = "the server"

    def __init__(self, cwd: Path, *args: str, api_key: str | None = None, file_limit: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        env = python_first_env()
        env.pop(API_KEY_VARIABLE, None)
        if api_key:
            env[API_KEY_VARIABLE] = api_key
        command = command_dying_with_parent("serve", "--port", str(self.port), "--no-access-log", *args)
        if file_limit is not None:  # set by the shell before the server starts (preexec_fn is unsafe with threads)
            command = ["sh", "-c", f'ulimit -n {file_limit} && exec "$@"', "sh", *command]
        self.start(command, cwd=cwd, env=env)

    def healthy(self) -> bool:
        try:
            return self.get("/health")[0] == 200
        except OSError:  # not listening yet
            return False

    def wait_ready(self, timeout: float = 120) -> "Server":
        self.wait_until(self.healthy, "answer /health", timeout)
        return self

    def exchange(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, headers, body text) of one request; an HTTP error status is an answer too, not an exception.
        A header given as None is not sent (e.g. {"Authorization": None})."""
        headers = {name: value for name, value in {**self.headers, **(headers or {})}.items() if value is not None}
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return response.status, response.headers, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.headers, err.read().decode()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, body text) of one request."""
        status, _, text = self.exchange(method, path, body, headers)
        return status, text

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
def running_server(cwd: Path, *args: str, **options):
    server = Server(cwd, *args, **options)
    try:
        yield server.wait_ready()
    finally:
        server.stop()
