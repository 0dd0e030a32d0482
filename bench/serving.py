"""Serving: offline predict against transformers' pipeline, the server under 16 clients, one review's latency.

All on one fine-tuned model folder (the bench encoder with a fresh sequence-classification head,
saved as the finetune stage saves it) and the same length mix of reviews:
- offline: Classifier.score, what `zh-sentiment predict` runs (batches of 32, longest first), against
  transformers.pipeline("text-classification", batch_size=32) on the same folder and reviews;
- server: `zh-sentiment serve` in a subprocess, 16 client threads each sending one review per request
  until the reviews run out (a bounded loop), against offline throughput;
- latency: one median-length review through the server (POST to answer) against the model's bare
  forward pass on that review's tokens;
- padding: what a server's batch is, 16 reviews of mixed lengths, as one padded pass against passes cut
  where a row would be under inference.CPU_MIN_FILL its own tokens (what score() does on a CPU).
"""

import http.client
import json
import queue
import socket
import statistics
import subprocess
import threading
import time
from pathlib import Path

import torch
from transformers import pipeline
from transformers.utils import logging as transformers_logging

from bench.common import Row, Setup, best_seconds, finetuned_folder
from zh_sentiment.inference import CPU_MIN_FILL, load_model, token_batches
from zh_sentiment.sandbox import ROOT, command_dying_with_parent, python_first_env

LABELS = ["negative", "positive"]
BATCH_SIZE = 32  # predict's default, and the pipeline's here
CLIENTS = 16
LATENCY_RUNS = 10
PADDING_BATCHES = 6  # batches of CLIENTS reviews in the padding measurement


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(folder: Path, port: int) -> subprocess.Popen:
    command = command_dying_with_parent("serve", "--model-dir", str(folder), "--port", str(port))
    process = subprocess.Popen(
        [*command, "--no-access-log"],
        cwd=ROOT,
        env=python_first_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited {process.returncode}: {process.stderr.read().decode()[-2000:]}")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/health")
            if connection.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError("the server did not start within 300 s")


def post(connection: http.client.HTTPConnection, text: str) -> list:
    connection.request("POST", "/predict", json.dumps({"inputs": text}), {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"POST /predict answered {response.status}: {answer}")
    return answer


def serve_all(port: int, texts: list[str]) -> float:
    """Seconds for CLIENTS threads, each on its own keep-alive connection, to get every review answered."""
    work: queue.SimpleQueue = queue.SimpleQueue()
    for text in texts:
        work.put(text)
    failures = []

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        try:
            while True:
                try:
                    text = work.get_nowait()
                except queue.Empty:
                    return
                post(connection, text)
        except Exception as err:  # noqa: BLE001 (reported below, with the run)
            failures.append(err)
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"{len(failures)} clients failed, e.g. {failures[0]}")
    return time.perf_counter() - start


def forward_seconds(model, tokens: dict, inputs: list[str], min_fill: float) -> float:
    """Seconds to run PADDING_BATCHES server-sized batches of the mix through the bare model."""
    start = time.perf_counter()
    for first in range(0, PADDING_BATCHES * CLIENTS, CLIENTS):
        lengths = tokens["lengths"][first : first + CLIENTS].tolist()
        for batch in token_batches(lengths, CLIENTS, None, min_fill):
            index = torch.tensor(batch) + first
            width = max(lengths[i] for i in batch)
            with torch.inference_mode():
                model(**{key: tokens[key][index, :width].long() for key in inputs})
    return time.perf_counter() - start


def measure(setup: Setup) -> list[Row]:
    transformers_logging.disable_progress_bar()
    texts, repeats = setup.texts, setup.scale.repeats
    folder = finetuned_folder(setup.model_dir, setup.scratch / "serving-finetuned", LABELS, setup.scale.max_length)
    classifier = load_model(folder, device="cpu")
    classifier.score(texts[:2])  # warm-up: first calls plan kernels
    offline_seconds, _ = best_seconds(lambda: classifier.score(texts, BATCH_SIZE), repeats)

    classify = pipeline("text-classification", model=str(folder), device="cpu", trust_remote_code=False)
    classify(texts[:2], batch_size=2, truncation=True)
    pipeline_seconds, _ = best_seconds(lambda: classify(texts, batch_size=BATCH_SIZE, truncation=True), repeats)

    # one review of the mix's median length, and its tokens as the model reads them
    review = sorted(texts, key=len)[len(texts) // 2]
    tokens = classifier.tokenizer([review], truncation=True, max_length=classifier.max_length, return_tensors="pt")
    inputs = {key: tokens[key] for key in classifier.inputs}
    with torch.inference_mode():
        classifier.model(**inputs)  # warm-up
    one_pass, cut = [], []
    for _ in range(setup.scale.repeats):  # alternately, so that both are timed under the same load
        one_pass.append(forward_seconds(classifier.model, setup.tokens, classifier.inputs, 0.0))
        cut.append(forward_seconds(classifier.model, setup.tokens, classifier.inputs, CPU_MIN_FILL))

    port = free_port()
    server = start_server(folder, port)
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        post(connection, review)  # warm-up
        forwards, latencies = [], []
        for _ in range(LATENCY_RUNS):  # alternately, so that both are timed under the same load
            with torch.inference_mode():
                forwards.append(best_seconds(lambda: classifier.model(**inputs), 1)[0])
            latencies.append(best_seconds(lambda: post(connection, review), 1)[0])
        connection.close()
        serve_all(port, texts[: 2 * CLIENTS])  # warm-up: every client's connection, batches of every size
        served_seconds = min(serve_all(port, texts) for _ in range(repeats))
    finally:
        server.terminate()
        server.wait(timeout=60)

    n = len(texts)
    offline, piped, served = n / offline_seconds, n / pipeline_seconds, n / served_seconds
    latency, forward = min(latencies), min(forwards)
    return [
        Row(f"offline predict, {n} reviews of the length mix (batches of {BATCH_SIZE})", offline, "reviews/s"),
        Row(f'transformers.pipeline("text-classification", batch_size={BATCH_SIZE}), same reviews', piped, "reviews/s"),
        Row("offline predict / pipeline", offline / piped, "x", "target ≥ 1.5×"),
        Row(f"server, {CLIENTS} concurrent clients, one review per request", served, "reviews/s"),
        Row("server / offline predict throughput", served / offline, "x", "target ≥ 0.8"),
        Row(
            f"one review ({len(review)} characters) through the server",
            latency * 1000,
            "ms",
            f"median of {LATENCY_RUNS}: {statistics.median(latencies) * 1000:.1f} ms",
        ),
        Row("the bare model forward on that review", forward * 1000, "ms"),
        Row("server latency overhead over the forward", latency / forward - 1, "%", "target ≤ 20%"),
        Row(
            f"{CLIENTS} reviews of the mix: one padded pass / passes at least {CPU_MIN_FILL:.0%} filled",
            min(one_pass) / min(cut),
            "x",
            f"{PADDING_BATCHES} such batches, the bare model forward",
        ),
    ]
