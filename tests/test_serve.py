"""zh-sentiment serve, run for real: a subprocess on a free local port, serving the trained fixtures' models."""

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.fixtures import NEGATIVE, POSITIVE
from tests.server import Server, running_server
from zh_sentiment.inference import choose_model, load_model
from zh_sentiment.sandbox import python_first_env

GOOD = "这家酒店" + POSITIVE[0] + POSITIVE[1] + "。"
BAD = "房间" + NEGATIVE[0] + NEGATIVE[1] + "。"
LONG = POSITIVE[0] * 60  # 120 characters, one token each: more than the fixtures' max_length of 64 tokens
UNKNOWN = "xyz"  # no character of it is in the tiny BERT's vocabulary
MAX_INPUTS, MAX_CHARS, MAX_BODY = 8, 500, 100_000
SMALL_LIMITS = ("--max-inputs", str(MAX_INPUTS), "--max-input-chars", str(MAX_CHARS), "--max-body-bytes", str(MAX_BODY))


@pytest.fixture(scope="module")
def server(trained_project):
    """The fine-tuned model (a standard Hugging Face folder, what TEI serves too), with small limits."""
    with running_server(trained_project.path, "--model", "finetuned", *SMALL_LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def info(server) -> dict:
    status, text = server.get("/info")
    assert status == 200
    return json.loads(text)


@pytest.fixture(scope="module")
def offline(trained_project, info):
    """The same model through the Python API, for the answers the server must give."""
    return load_model(trained_project.path / info["model_id"], device="cpu")


def probabilities(classifier, texts: list[str]) -> np.ndarray:
    scores, _ = classifier.score(texts)
    exp = np.exp(scores - scores.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def as_dict(predictions: list[dict]) -> dict[str, float]:
    return {p["label"]: p["score"] for p in predictions}


# --- POST /predict: TEI's request and answer -------------------------------------------------------


def test_one_text_gets_every_label_with_its_probability_highest_first(server, offline):
    status, answer = server.post({"inputs": GOOD})
    assert status == 200
    assert [p["label"] for p in answer] == sorted(offline.label_names, key=lambda name: -as_dict(answer)[name])
    assert [p["score"] for p in answer] == sorted((p["score"] for p in answer), reverse=True)
    expected = probabilities(offline, [GOOD])[0]
    for i, name in enumerate(offline.label_names):
        assert as_dict(answer)[name] == pytest.approx(float(expected[i]), abs=1e-5)
    assert all("warnings" not in p for p in answer)  # a clean text: exactly TEI's shape


def test_a_list_of_texts_and_teis_batch_form_get_one_answer_per_text_in_order(server, offline):
    status, answer = server.post({"inputs": [GOOD, BAD]})
    assert status == 200
    expected = probabilities(offline, [GOOD, BAD])
    for row, predictions in zip(expected, answer):
        assert as_dict(predictions) == pytest.approx(dict(zip(offline.label_names, row.tolist())), abs=1e-5)
    assert server.post({"inputs": [[GOOD], [BAD]]}) == (200, answer)


def test_raw_scores_are_the_models_raw_scores(server, offline):
    status, answer = server.post({"inputs": BAD, "raw_scores": True})
    assert status == 200
    scores, _ = offline.score([BAD])
    assert as_dict(answer) == pytest.approx(dict(zip(offline.label_names, scores[0].tolist())), abs=1e-4)


def test_huggingface_hubs_inference_client_works_unchanged(server, offline):
    # huggingface_hub refuses every URL, even a local one, while HF_HUB_OFFLINE=1 (which the tests set),
    # so the client runs as a user would run it: in a process without that variable.
    script = (
        "import json, sys; from huggingface_hub import InferenceClient\n"
        f"client = InferenceClient(model='{server.url}/predict')\n"
        "text = sys.argv[1]\n"
        "print(json.dumps([[vars(p) for p in client.text_classification(text)],\n"
        "                  [vars(p) for p in client.text_classification(text, top_k=1, function_to_apply='sigmoid')]]))"
    )
    env = python_first_env({key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"})
    result = subprocess.run([sys.executable, "-c", script, GOOD], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    everything, top_sigmoid = json.loads(result.stdout)
    expected = dict(zip(offline.label_names, probabilities(offline, [GOOD])[0].tolist()))
    assert {p["label"]: p["score"] for p in everything} == pytest.approx(expected, abs=1e-5)
    scores, _ = offline.score([GOOD])
    best = int(scores[0].argmax())
    assert [p["label"] for p in top_sigmoid] == [offline.label_names[best]]
    assert top_sigmoid[0]["score"] == pytest.approx(1 / (1 + math.exp(-float(scores[0][best]))), abs=1e-5)


def test_parameters_top_k_and_function_to_apply_are_honoured(server):
    status, answer = server.post({"inputs": GOOD, "parameters": {"top_k": 1}})
    assert status == 200 and len(answer) == 1 and len(answer[0]) == 1  # the Inference API's shape: a list per text
    status, raw = server.post({"inputs": GOOD, "parameters": {"function_to_apply": "none"}})
    _, scores = server.post({"inputs": GOOD, "raw_scores": True})
    assert as_dict(raw[0]) == pytest.approx(as_dict(scores), abs=1e-6)


# --- per-input warnings --------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "code"), [("", "empty"), (UNKNOWN, "all_unknown"), (LONG, "truncated")])
def test_a_doubtful_input_gets_a_warning_in_plain_words(server, text, code):
    status, answer = server.post({"inputs": [GOOD, text]})
    assert status == 200
    assert all("warnings" not in p for p in answer[0])
    warnings = answer[1][0]["warnings"]
    assert code in [w["code"] for w in warnings]
    assert all(len(w["message"].split()) >= 3 for w in warnings)  # words, not a code
    assert all(p["warnings"] == warnings for p in answer[1])


# --- limits --------------------------------------------------------------------------------------


def test_too_many_inputs_get_413(server):
    status, answer = server.post({"inputs": [GOOD] * (MAX_INPUTS + 1)})
    assert status == 413
    assert answer["error_type"] == "validation" and str(MAX_INPUTS) in answer["error"]


def test_a_text_over_the_character_limit_is_cut_before_reading_and_says_so(server):
    status, answer = server.post({"inputs": GOOD * (5 * MAX_CHARS // len(GOOD))})
    assert status == 200
    assert "truncated" in [w["code"] for w in answer[0]["warnings"]]


def test_with_truncate_false_a_text_too_long_is_refused(server):
    status, answer = server.post({"inputs": "好" * (MAX_CHARS + 1), "truncate": False})
    assert status == 413 and "truncate" in answer["error"]
    status, answer = server.post({"inputs": [GOOD, LONG], "truncate": False})  # too many tokens, not characters
    assert status == 413 and "inputs[1]" in answer["error"]


def test_a_body_over_the_limit_gets_413_without_being_read_whole(server):
    body = json.dumps({"inputs": "好" * 20_000}).encode()  # 6 bytes a character: "\u597d"
    assert len(body) > MAX_BODY
    status, answer = server.post(body)
    assert status == 413 and f"{MAX_BODY:,}" in answer["error"]
    # a chunked body has no Content-Length: refused once what arrived passes the limit
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        head += b"Transfer-Encoding: chunked\r\n\r\n"
        chunk = b"%x\r\n%s\r\n" % (len(body), body)
        connection.sendall(head + chunk)
        assert connection.recv(4096).startswith(b"HTTP/1.1 413")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b'{"inputs": ', "JSON"),
        (b'["a"]', "object"),
        (b'{"text": "a"}', "inputs"),
        (b'{"inputs": 3}', "inputs"),
        (b'{"inputs": ["a", 3]}', "inputs"),
        (b'{"inputs": [["a", "b"]]}', "pairs"),
        (b'{"inputs": []}', "inputs"),
        (b'{"inputs": "a", "truncate": "yes"}', "truncate"),
        (b'{"inputs": "a", "raw_scores": 1}', "raw_scores"),
        (b'{"inputs": "a", "parameters": {"top_k": 0}}', "top_k"),
        (b'{"inputs": "a", "parameters": {"function_to_apply": "relu"}}', "function_to_apply"),
        (b'{"inputs": "a", "truncation_direction": "Left"}', "truncation_direction"),
    ],
)
def test_malformed_json_or_wrong_types_get_422_naming_the_problem(server, body, where):
    status, answer = server.post(body)
    assert status == 422
    assert answer["error_type"] == "validation" and where in answer["error"]


# --- health, info, metrics, docs -----------------------------------------------------------------


def test_health_and_info_describe_the_model_served(server, info, offline):
    assert server.get("/health")[0] == 200
    assert info["kind"] == offline.kind == "finetuned"
    assert info["label_names"] == offline.label_names
    assert info["max_length"] == info["max_input_length"] == offline.max_length
    assert info["validation"] == offline.info["validation"] and info["test"] == offline.info["test"]
    assert info["fingerprint"].startswith("sha256:") and info["fingerprint"] == offline.info["fingerprint"]
    assert info["model_type"]["classifier"]["id2label"] == {str(i): name for i, name in enumerate(offline.label_names)}
    assert info["max_client_batch_size"] == MAX_INPUTS and info["max_input_chars"] == MAX_CHARS
    assert info["chosen_because"] == "chosen with --model"


def test_metrics_count_requests_time_them_and_show_batches_and_the_queue(server):
    before = server.metrics()
    texts = [GOOD, BAD, LONG]
    assert server.post({"inputs": texts})[0] == 200
    assert server.post({"inputs": 3})[0] == 422
    after = server.metrics()

    def grew(key):
        return after.get(key, 0) - before.get(key, 0)

    assert grew('zh_sentiment_requests_total{endpoint="/predict",status="200"}') == 1
    assert grew('zh_sentiment_requests_total{endpoint="/predict",status="422"}') == 1
    assert grew('zh_sentiment_request_duration_seconds_count{endpoint="/predict"}') == 2
    assert grew("zh_sentiment_inputs_total") == len(texts)
    assert grew("zh_sentiment_batch_size_sum") == len(texts)
    assert grew("zh_sentiment_batch_tokens_count") >= 1
    assert after["zh_sentiment_queue_depth"] == 0  # nothing waiting now
    assert "zh_sentiment_predict_requests_in_flight" in after


def test_concurrent_requests_are_scored_together(server):
    assert_concurrent_requests_share_batches(server, tolerance=1e-5)


def assert_concurrent_requests_share_batches(server, tolerance: float) -> None:
    """16 clients at once: their texts share batches (fewer batches than requests), and each gets its own
    answer: the label it gets alone, the scores within `tolerance` of those."""
    clients = 16
    before = server.metrics()
    start = threading.Barrier(clients)
    answers = [None] * clients

    def client(i):
        start.wait()
        answers[i] = server.post({"inputs": GOOD if i % 2 else BAD})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = server.metrics()
    assert all(status == 200 for status, _ in answers)
    _, good = server.post({"inputs": GOOD})
    _, bad = server.post({"inputs": BAD})
    for i, (_, answer) in enumerate(answers):
        alone = good if i % 2 else bad
        assert answer[0]["label"] == alone[0]["label"]
        assert as_dict(answer) == pytest.approx(as_dict(alone), abs=tolerance)
    batches = after["zh_sentiment_batch_size_count"] - before["zh_sentiment_batch_size_count"]
    assert after["zh_sentiment_batch_size_sum"] - before["zh_sentiment_batch_size_sum"] == clients
    assert batches < clients


def test_openapi_docs_are_served_with_their_assets(server):
    status, text = server.get("/openapi.json")
    schema = json.loads(text)
    assert status == 200 and "/predict" in schema["paths"] and "PredictRequest" in schema["components"]["schemas"]
    status, page = server.get("/docs")
    assert status == 200 and "/static-offline-docs/swagger-ui-bundle.js" in page  # served here, not from a CDN
    assert server.get("/static-offline-docs/swagger-ui-bundle.js")[0] == 200


# --- robustness ----------------------------------------------------------------------------------


def test_a_client_that_leaves_mid_batch_does_not_hurt_the_others(server):
    _, expected = server.post({"inputs": [GOOD, BAD]})
    body = json.dumps({"inputs": ["好" * MAX_CHARS] * MAX_INPUTS}).encode()
    assert len(body) < MAX_BODY
    before = server.metrics()
    for _ in range(4):  # clients that send a heavy request and hang up at once
        connection = socket.create_connection(("127.0.0.1", server.port))
        connection.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        connection.close()
    assert server.post({"inputs": [GOOD, BAD]}) == (200, expected)
    after = server.metrics()
    assert server.get("/health")[0] == 200
    errors = [key for key in after if "requests_total" in key and 'status="5' in key]
    assert all(after[key] == before.get(key, 0) for key in errors), server.output()[-2000:]


def test_on_sigterm_the_server_finishes_the_requests_in_flight(trained_project):
    server = Server(trained_project.path).wait_ready()
    try:
        body = json.dumps({"inputs": [GOOD, BAD]}).encode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=60) as connection:
            head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            head += b"Content-Length: %d\r\n\r\n"
            connection.sendall(head % len(body) + body[:10])  # a request in flight: its body still arriving
            time.sleep(0.5)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(1)
            assert server.process.poll() is None, "it quit with a request in flight"
            connection.sendall(body[10:])
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        assert len(json.loads(answer.split(b"\r\n\r\n", 1)[1])) == 2
        # uvicorn re-raises the signal once it has shut down cleanly
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.output()
    finally:
        server.stop()


def run_serve(project, *args: str) -> subprocess.CompletedProcess:
    return project.run(sys.executable, "-m", "zh_sentiment", "serve", *args, check=False, timeout=120)


def test_a_missing_or_damaged_model_folder_stops_it_with_one_clear_line(trained_project, tmp_path, info):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for file in (trained_project.path / info["model_id"]).iterdir():
        (damaged / file.name).write_bytes(file.read_bytes())
    (damaged / "model.json").write_text("{not json", encoding="utf-8")
    for folder in (tmp_path / "missing", damaged):
        result = run_serve(trained_project, "--model-dir", str(folder))
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and folder.name in errors[0], result.stderr


@pytest.mark.parametrize(
    ("option", "value"), [("--max-inputs", "0"), ("--max-batch-tokens", "many"), ("--port", "70000")]
)
def test_bad_settings_are_refused_up_front(trained_project, option, value):
    result = run_serve(trained_project, option, value)
    assert result.returncode == 2
    assert option in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("name", [None, "baseline", "frozen_head"])  # finetuned: the module's server
def test_by_default_it_serves_the_best_model_by_validation_and_says_why_and_any_by_name(trained_project, name):
    folder, reason = choose_model(trained_project.path / "models", name)
    with running_server(trained_project.path, *(["--model", name] if name else [])) as server:
        status, text = server.get("/info")
        info = json.loads(text)
        status, answer = server.post({"inputs": [GOOD, BAD]})
        assert status == 200
        output = server.output()
    assert info["kind"] == folder.name and info["chosen_because"] == reason
    assert f"serve: model models/{folder.name} ({folder.name}): {reason}" in output
    expected = probabilities(load_model(folder, device="cpu"), [GOOD, BAD])
    for row, predictions in zip(expected, answer):
        assert as_dict(predictions) == pytest.approx(dict(zip(info["label_names"], row.tolist())), abs=1e-5)
