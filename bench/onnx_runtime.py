"""ONNX Runtime against PyTorch: predict and server throughput per runtime (int8's accuracy: onnx_accuracy.py).

- speed: a fine-tuned folder on the bench encoder (bert-base's shape, random weights; bench/serving.py's),
  exported by `zh-sentiment export --int8` (validated on 32 reviews of the mix), then Classifier.score (what
  `zh-sentiment predict` runs, batches of 32) on the length mix in each runtime: PyTorch fp32, PyTorch in the
  precision `auto` takes here (today's default), ONNX fp32, ONNX int8, and what `--runtime auto` picks. The
  runtimes take turns, round after round, so that the machine's load falls on each alike; best round kept.
- server: `zh-sentiment serve` (`--runtime auto`) under 16 clients against offline predict in the same runtime,
  the two taking turns in the same way.
"""

import os
import time
from pathlib import Path

import pandas as pd
import torch

from bench.common import Row, Setup, finetuned_folder
from bench.serving import BATCH_SIZE, LABELS, free_port, serve_all, start_server
from zh_sentiment import onnx_export, runtime
from zh_sentiment.inference import load_model
from zh_sentiment.precision import choose_precision, cpuinfo

VALIDATION_REVIEWS = 16
SPEED_REVIEWS = 48  # of the length mix, longest first (issue 22 timed 96: halved for a loaded machine)
DEFAULT, BF16 = "PyTorch fp32 (today's default)", "PyTorch bf16 (--precision auto here)"


def cpu_flags() -> str:
    flags = set(cpuinfo("flags").split())
    return ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx2", "avx512_vnni", "avx512_bf16"))


def exported_folder(setup: Setup) -> Path:
    folder = finetuned_folder(setup.model_dir, setup.scratch / "onnx-finetuned", LABELS, setup.scale.max_length)
    validation = setup.scratch / "onnx-validation.csv"
    pd.DataFrame({"text": setup.texts[:VALIDATION_REVIEWS]}).to_csv(validation, index=False)
    missing = setup.scratch / "no-test-split.csv"
    onnx_export.main(["--model-dir", str(folder), "--int8", "--validation", str(validation), "--test", str(missing)])
    return folder


def speed(setup: Setup, folder: Path) -> tuple[list[Row], dict]:
    texts = setup.texts[:SPEED_REVIEWS]
    encoded = setup.tokenizer(texts, truncation=True, max_length=setup.scale.max_length)
    tokens = sum(len(ids) for ids in encoded["input_ids"])
    # a fine-tuned model.json records fp32 (its weights), so predict's default is PyTorch fp32 on every CPU;
    # --precision auto takes bf16 where the precision probe finds it faster
    runners = {"PyTorch fp32 (today's default)": load_model(folder, "cpu", runtime="torch")}
    if choose_precision("auto", torch.device("cpu"), "predict") == "bf16":
        runners["PyTorch bf16 (--precision auto here)"] = load_model(folder, "cpu", "bf16", runtime="torch")
    runners["ONNX Runtime fp32"] = load_model(folder, "cpu", runtime="onnx")
    runners["ONNX Runtime int8"] = load_model(folder, "cpu", runtime="onnx-int8")
    auto = load_model(folder, "cpu", runtime="auto")
    chosen = {"torch": DEFAULT, "onnx": "ONNX Runtime fp32", "onnx-int8": "ONNX Runtime int8"}[auto.runtime]
    seconds, logits = dict.fromkeys(runners, float("inf")), {}
    for classifier in runners.values():
        classifier.score(texts[:2])  # warm-up: first calls plan kernels
    for _ in range(setup.scale.repeats):  # alternately, so that each is timed under the same load
        for name, classifier in runners.items():
            start = time.perf_counter()
            logits[name], _ = classifier.score(texts, BATCH_SIZE)
            seconds[name] = min(seconds[name], time.perf_counter() - start)
    rows = []
    for name in runners:
        difference = float(abs(logits[name] - logits[DEFAULT]).max())
        agreement = float((logits[name].argmax(1) == logits[DEFAULT].argmax(1)).mean())
        rows.append(
            Row(
                f"predict in {name}, {len(texts)} reviews of the mix ({tokens:,} tokens)",
                tokens / seconds[name],
                "tok/s",
                f"{seconds[DEFAULT] / seconds[name]:.2f}× fp32; max |logit difference| {difference:.2g}, "
                f"same label {agreement:.0%}",
            )
        )
    rows.append(
        Row(
            "`--runtime auto` / today's default (PyTorch fp32) predict throughput",
            seconds[DEFAULT] / seconds[chosen],
            "x",
            f"auto took {auto.runtime}: {auto.runtime_reason}; CPU {cpu_flags()}; target ≥ 2× without fast bf16",
        )
    )
    if BF16 in runners:
        rows.append(
            Row(
                "`--runtime auto` / PyTorch bf16 predict throughput",
                seconds[BF16] / seconds[chosen],
                "x",
                "target ≥ 1.3× on a CPU with fast bf16",
            )
        )
    return rows, {"texts": texts, "auto": auto}


def server(setup: Setup, folder: Path, measured: dict) -> list[Row]:
    """The server against offline predict in the same runtime, taking turns round after round (as the
    runtimes do above), so that a load that changes falls on both alike; best round of each kept."""
    texts, auto = measured["texts"], measured["auto"]
    port = free_port()
    process = start_server(folder, port)  # serve's default: --runtime auto, the same cached decision
    offline, served = float("inf"), float("inf")
    try:
        serve_all(port, texts[:32])  # warm-up: every client's connection, batches of every size
        auto.score(texts[:2])
        for _ in range(setup.scale.repeats):
            start = time.perf_counter()
            auto.score(texts, BATCH_SIZE)
            offline = min(offline, time.perf_counter() - start)
            served = min(served, serve_all(port, texts))
    finally:
        process.terminate()
        process.wait(timeout=60)
    return [
        Row(
            f"server ({auto.runtime}), 16 concurrent clients, one review per request",
            len(texts) / served,
            "reviews/s",
            f"offline predict in {auto.runtime}, timed in turns with it: {len(texts) / offline:.2f} reviews/s",
        ),
        Row(f"server / offline predict throughput, {auto.runtime}", offline / served, "x", "target ≥ 0.8"),
    ]


def measure(setup: Setup) -> list[Row]:
    os.environ[runtime.CACHE_ENV] = str(setup.scratch / "runtime.json")  # auto measures now, on this run's machine
    folder = exported_folder(setup)
    rows, measured = speed(setup, folder)
    return rows + server(setup, folder, measured)
