"""zh-sentiment serve against hostile or careless clients: one real server on a local port, with an API key, a
CORS origin, a short read timeout and an open-file limit of 1,024 (soft and hard), serving a copy of the
fine-tuned model that the tests may edit."""

import asyncio
import io
import json
import logging
import resource
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from playwright.sync_api import sync_playwright

from tests.conftest import copy_tree
from tests.fixtures import NEGATIVE, POSITIVE
from tests.server import running_server
from tests.test_page import CHROMIUM, FLAGS, open_page
from zh_sentiment.inference import load_model
from zh_sentiment.serve import exposure_warning, parse_args
from zh_sentiment.serve.batching import Batcher, Job
from zh_sentiment.serve.logs import OncePerInterval

GOOD = "这家酒店" + POSITIVE[0] + POSITIVE[1] + "。"
BAD = "房间" + NEGATIVE[0] + NEGATIVE[1] + "。"
LONE_SURROGATE = "好\ud800"  # valid JSON ("\ud800"), but no Unicode character: it cannot be encoded as UTF-8
KEY = "test-key-0123456789"
ORIGIN = "https://app.example.com"
MAX_BODY = 100_000
READ_TIMEOUT = 3
FILE_LIMIT = 1024
HALF_SENT = 1_100


@pytest.fixture(scope="module")
def model_dir(trained_project, tmp_path_factory):
    return copy_tree(trained_project.path / "models" / "finetuned", tmp_path_factory.mktemp("served") / "model")


@pytest.fixture(scope="module")
def server(trained_project, model_dir):
    options = ["--model-dir", str(model_dir), "--max-body-bytes", str(MAX_BODY), "--read-timeout", str(READ_TIMEOUT)]
    with running_server(
        trained_project.path, *options, "--cors-allow-origin", ORIGIN, api_key=KEY, file_limit=FILE_LIMIT
    ) as server:
        yield server


def raw_exchange(port: int, request: bytes, timeout: float = 30) -> bytes:
    """Everything the server sends back on a connection that sends `request`, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def error_of(answer: bytes) -> tuple[int, dict]:
    """(status, JSON body) of a raw HTTP answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


# --- one request cannot fail another -------------------------------------------------------------


def test_a_text_that_is_not_unicode_fails_its_own_request_only_among_50_concurrent_ones(server):
    clients = 50
    answers = [None] * (clients + 1)
    start = threading.Barrier(clients + 1)

    def client(i):
        body = {"inputs": ["好", LONE_SURROGATE]} if i == clients else {"inputs": GOOD if i % 2 else BAD}
        start.wait()
        answers[i] = server.post(json.dumps(body).encode())  # json.dumps writes the surrogate as "\ud800"

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients + 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [status for status, _ in answers[:clients]] == [200] * clients
    status, error = answers[clients]
    assert status == 422 and error["error_type"] == "validation"
    assert error["error"].startswith("inputs[1]: ") and "surrogate" in error["error"]


def test_when_a_batch_fails_each_text_is_retried_alone_so_only_the_one_at_fault_fails(model_dir):
    """The batcher's own guard, for a text that gets past validation: the real model fails on a lone surrogate."""
    classifier = load_model(model_dir, device="cpu")
    batcher = Batcher(classifier, max_batch_tokens=16384, batch_size=32)
    loop = asyncio.new_event_loop()
    try:
        counted = [Job(text, loop.create_future(), loop) for text in (GOOD, LONE_SURROGATE, BAD)]
        batcher.waiting.extend(counted)
        batcher.count_new()  # one tokenizer call for all three fails
        scored = [Job(text, loop.create_future(), loop, cost=8) for text in (GOOD, LONE_SURROGATE, BAD)]
        batcher.run(scored)  # one forward pass for all three fails
        loop.run_until_complete(asyncio.sleep(0))  # the outcomes are delivered through the loop
    finally:
        loop.close()
    assert [job.cost > 0 for job in counted] == [True, False, True]
    assert isinstance(counted[1].future.exception(), RuntimeError)
    assert [job.future.exception() is None for job in scored] == [True, False, True]
    expected, _ = classifier.score([GOOD, BAD])
    assert scored[0].future.result()[0].tolist() == pytest.approx(expected[0].tolist(), abs=1e-5)
    assert scored[2].future.result()[0].tolist() == pytest.approx(expected[1].tolist(), abs=1e-5)
    assert "the model failed on this text: TypeError" in str(scored[1].future.exception())


def test_a_repeated_error_is_logged_once_per_interval_then_with_a_count():
    stream = io.StringIO()
    logger = logging.getLogger("tests.once_per_interval")
    logger.propagate = False
    logger.addHandler(logging.StreamHandler(stream))
    logger.addFilter(OncePerInterval(interval=0.5))

    def accept_failed(fd):
        try:
            raise OSError(24, "Too many open files")
        except OSError:  # asyncio's message: its second line names the socket, different each time
            logger.error("socket.accept() out of system resource\nsocket: fd=%d", fd, exc_info=True)

    for fd in range(100):
        accept_failed(fd)
    logger.error("another kind of error")
    time.sleep(0.6)
    accept_failed(100)
    log = stream.getvalue()
    assert log.count("out of system resource") == 2 and log.count("Traceback") == 2
    assert "another kind of error" in log
    assert "(99 more like this in the" in log


# --- connections ---------------------------------------------------------------------------------


@contextmanager
def open_files_allowed(count: int):
    """This test process's own open-file limit raised to allow `count` more sockets, then put back."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"this test opens {count} sockets; the open-file hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def file_limit_of(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits", encoding="utf-8") as limits:
        line = next(line for line in limits if line.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    return int(soft), int(hard)


def test_health_answers_within_a_second_while_1100_half_sent_requests_hold_connections(server):
    assert file_limit_of(server.process.pid) == (FILE_LIMIT, FILE_LIMIT)
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n"  # and the rest never comes
    connections = []
    with open_files_allowed(HALF_SENT):
        try:
            for _ in range(HALF_SENT):
                connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                connections.append(connection)
                try:
                    connection.sendall(head)
                except OSError:  # already closed by the server to make room
                    pass
            for _ in range(3):
                start = time.monotonic()
                assert server.get("/health")[0] == 200
                assert time.monotonic() - start < 1
        finally:
            for connection in connections:
                connection.close()
    log = server.output()
    assert "Too many open files" not in log and "out of system resource" not in log
    assert "closed the one that waited longest for its request" in log  # the cap was reached
    assert log.count("(--max-connections)") <= 2  # once a minute, with a count: not once per connection


def test_a_request_that_does_not_arrive_whole_in_time_gets_408_and_is_closed(server):
    head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer %s\r\n" % KEY.encode()
    partial = {
        "head": head,
        "body": head + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"inputs": ',
        "nothing": b"",
    }
    answers, took = {}, {}

    def client(name):
        start = time.monotonic()
        answers[name] = raw_exchange(server.port, partial[name], timeout=READ_TIMEOUT + 30)
        took[name] = time.monotonic() - start

    threads = [threading.Thread(target=client, args=(name,)) for name in partial]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name in ("head", "body"):
        status, error = error_of(answers[name])
        assert status == 408 and error["error_type"] == "timeout" and "--read-timeout" in error["error"]
    assert answers["nothing"] == b""  # a connection that never said anything is closed without a word
    assert all(READ_TIMEOUT - 0.5 < seconds < READ_TIMEOUT + 10 for seconds in took.values()), took


# --- every refusal reaches the client ------------------------------------------------------------


def test_a_body_over_the_limit_gets_a_413_that_urllib_and_requests_read(server):
    body = json.dumps({"inputs": "好" * 700_000}).encode()  # 4.2 MB: more than the sockets buffer
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    for _ in range(3):
        request = urllib.request.Request(server.url + "/predict", data=body, headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=60)
        assert refused.value.code == 413 and f"{MAX_BODY:,}" in json.loads(refused.value.read())["error"]
        answer = requests.post(server.url + "/predict", data=body, headers=headers, timeout=60)
        assert answer.status_code == 413 and answer.json()["error_type"] == "validation"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"inputs": "\xff\xfe"}', "not UTF-8 text: byte 0xff at offset 12"),
        (b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", "nested too deeply"),
        (b'{"inputs": "a", "truncate": ' + b"9" * 5_000 + b"}", "a number of more than 4,300 digits"),
    ],
    ids=["not-utf8", "nested-10000-deep", "a-5000-digit-number"],
)
def test_a_body_that_cannot_be_parsed_gets_teis_error_shape_with_the_reason(server, body, reason):
    status, answer = server.post(body)
    assert status == 422 and answer["error_type"] == "validation" and reason in answer["error"]


def test_starlettes_and_uvicorns_own_errors_come_in_teis_shape(server):
    status, text = server.get("/no-such-page")
    assert status == 404 and json.loads(text)["error_type"] == "not_found"
    status, headers, text = server.exchange("GET", "/predict")
    assert status == 405 and "POST" in json.loads(text)["error"] and headers["Allow"] == "POST"
    status, error = error_of(raw_exchange(server.port, b"NOT HTTP AT ALL\r\n\r\n"))
    assert status == 400 and error["error_type"] == "validation" and "not a valid HTTP request" in error["error"]


# --- beyond localhost ----------------------------------------------------------------------------


def test_with_an_api_key_every_endpoint_but_health_and_the_pages_code_needs_it(server):
    for path in ("/info", "/metrics", "/docs", "/openapi.json"):
        assert server.get(path)[0] == 200
        for authorization in (None, "Bearer wrong-key", f"Basic {KEY}", KEY):
            status, headers, text = server.exchange("GET", path, headers={"Authorization": authorization})
            assert status == 401 and headers["WWW-Authenticate"] == "Bearer", (path, authorization)
            assert json.loads(text)["error_type"] == "unauthorized" and "Authorization: Bearer" in text
    assert server.request("POST", "/predict", b'{"inputs": "a"}', {"Authorization": None})[0] == 401
    for path in ("/health", "/", "/page/page.js"):
        assert server.request("GET", path, headers={"Authorization": None})[0] == 200


def test_on_a_loopback_address_a_request_for_another_host_name_is_refused(server):
    for host in ("evil.example.com", f"evil.example.com:{server.port}", "192.168.1.10"):
        status, text = server.request("GET", "/health", headers={"Host": host})
        error = json.loads(text)
        assert status == 403 and error["error_type"] == "forbidden", host
        assert "DNS rebinding" in error["error"] and "--host" in error["error"]
    for host in (f"localhost:{server.port}", "localhost", f"127.0.0.1:{server.port}", "127.0.0.2", "[::1]:8000"):
        assert server.request("GET", "/health", headers={"Host": host})[0] == 200, host


def test_cors_lets_the_allowed_origin_call_the_api_and_no_other(server):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    status, headers, _ = server.exchange("OPTIONS", "/predict", headers={"Origin": ORIGIN, **preflight})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN  # a preflight carries no key
    assert "authorization" in headers["Access-Control-Allow-Headers"].lower()
    status, headers, _ = server.exchange("GET", "/info", headers={"Origin": ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    other = "https://evil.example.com"
    status, headers, _ = server.exchange("OPTIONS", "/predict", headers={"Origin": other, **preflight})
    assert status == 400 and "Access-Control-Allow-Origin" not in headers
    status, headers, _ = server.exchange("GET", "/info", headers={"Origin": other})
    assert "Access-Control-Allow-Origin" not in headers


def test_with_an_api_key_the_page_asks_for_it_and_then_works(server):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        with open_page(browser, server) as page:
            page.goto(server.url + "/")  # the page's own files need no key
            page.wait_for_selector("#key-form:not([hidden])")
            page.fill("#key", "not-the-key")
            page.click("#use-key")
            page.wait_for_function("document.getElementById('model').textContent.includes('refused')")
            page.fill("#key", KEY)
            page.click("#use-key")
            page.wait_for_function("document.getElementById('model').textContent.includes('finetuned')")
            assert page.locator("#key-form").is_hidden()
            page.fill("#reviews", GOOD)
            page.click("#classify")
            page.wait_for_selector("#results li:nth-child(1) .label")
            assert page.locator("#results .label").inner_text() == server.post({"inputs": GOOD})[1][0]["label"]
            assert page.outside == []
        browser.close()


@pytest.mark.parametrize(
    ("host", "key", "warned"),
    [
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", None, True),
        ("::", None, True),
        ("0.0.0.0", KEY, False),
    ],
)
def test_listening_beyond_this_machine_without_a_key_is_warned_of(host, key, warned):
    warning = exposure_warning(host, key)
    assert (warning is not None) == warned
    if warned:
        assert host in warning and "ZH_SENTIMENT_API_KEY" in warning and "TLS" in warning


def test_the_server_on_loopback_with_a_key_gives_no_warning(server):
    assert "warning" not in server.output()


# --- the model folder ----------------------------------------------------------------------------


def test_info_names_the_model_files_that_no_longer_match_what_is_served(server, model_dir):
    record = model_dir / "model.json"
    original = record.read_bytes()
    assert json.loads(server.get("/info")[1])["changed_on_disk"] == []
    try:
        record.write_bytes(original + b"\n")
        changed = json.loads(server.get("/info")[1])["changed_on_disk"]
        assert [Path(name).name for name in changed] == ["model.json"]
    finally:
        record.write_bytes(original)
    assert json.loads(server.get("/info")[1])["changed_on_disk"] == []


def test_an_api_key_variable_set_but_empty_stops_the_server_instead_of_opening_it(monkeypatch, capsys):
    """`export ZH_SENTIMENT_API_KEY=$(cat missing-file)` sets it empty: serving with no key would be a surprise."""
    monkeypatch.setenv("ZH_SENTIMENT_API_KEY", "")
    with pytest.raises(SystemExit) as stopped:
        parse_args([])
    assert stopped.value.code == 2 and "ZH_SENTIMENT_API_KEY: the key is empty" in capsys.readouterr().err
    monkeypatch.setenv("ZH_SENTIMENT_API_KEY", KEY)
    assert parse_args([]).api_key == KEY
