"""Whether bf16 pays on this CPU: a short timed probe, decided once per machine and torch version.

Whether a CPU runs bf16 matmuls faster than fp32 is a fact about the CPU and the torch build, not
about the CPU's name: on 2-core AMD EPYC machines with torch 2.13, bf16 ran 2-3x faster than fp32
on one with AVX512-BF16 and about 7x slower on one with AVX2 only. So `precision: auto` times a
few encoder-layer-shaped matmuls (a bert-base feed-forward block on 512 tokens) in both and takes
bf16 only where it is clearly faster (SPEEDUP_NEEDED). The probe takes a second or two.

A loaded machine slows both sides, but not always equally, so the decision is taken once and kept
in a cache file outside the project (PRECISION_CACHE, or $ZH_SENTIMENT_PRECISION_CACHE), keyed by
the CPU and the torch version: every later run on the same machine reads it and decides the same.
Delete the file (or its entry) to probe again.
"""

import json
import os
import platform
import time
from functools import cache
from pathlib import Path

import torch
import torch.nn.functional as F

from zh_sentiment.errors import PipelineError
from zh_sentiment.outputs import write_json

SPEEDUP_NEEDED = 1.3  # bf16 must beat fp32 by this much: a small gain is not worth the rounding
CACHE_ENV = "ZH_SENTIMENT_PRECISION_CACHE"
PRECISION_CACHE = Path("~/.cache/zh-sentiment/precision.json")
TOKENS, HIDDEN, INTERMEDIATE = 512, 768, 3072  # one bert-base feed-forward block on 512 tokens
ROUNDS = 5


def cache_file() -> Path:
    return Path(os.environ.get(CACHE_ENV) or PRECISION_CACHE).expanduser()


def cpuinfo(field: str) -> str:
    """The first `field` line of /proc/cpuinfo (Linux), or "" where there is none."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":")[0].strip() == field), "")


def machine_key() -> str:
    """What the decision depends on. The CPU's name alone is not enough (the two EPYC machines above
    share it), so its bf16-related instruction sets and torch's own dispatch level go in too."""
    isa = sorted(set(cpuinfo("flags").split()) & {"avx512_bf16", "amx_bf16", "amx_tile", "avx512f", "avx2"})
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    capability = torch.backends.cpu.get_cpu_capability()
    name = cpuinfo("model name") or platform.processor()
    return f"{name} | {cores} cores | {capability} | {' '.join(isa)} | torch {torch.__version__}"


def time_matmuls(dtype: torch.dtype) -> float:
    """Seconds for one feed-forward block (two Linear layers, as nn.Linear calls them), the best of ROUNDS."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(TOKENS, HIDDEN, generator=generator).to(dtype)
    up = torch.randn(INTERMEDIATE, HIDDEN, generator=generator).to(dtype) / HIDDEN**0.5
    down = torch.randn(HIDDEN, INTERMEDIATE, generator=generator).to(dtype) / INTERMEDIATE**0.5
    F.linear(F.linear(x, up), down)  # warm-up: the first call picks and prepares the kernels
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        F.linear(F.linear(x, up), down)
        best = min(best, time.perf_counter() - start)
    return best


def probe() -> tuple[float, float]:
    """(fp32 seconds, bf16 seconds) for the same work on this machine."""
    with torch.inference_mode():
        return time_matmuls(torch.float32), time_matmuls(torch.bfloat16)


def decide(fp32_seconds: float, bf16_seconds: float) -> dict:
    """The decision and the figures it came from: what embedding.json and model.json record."""
    speedup = fp32_seconds / bf16_seconds
    return {
        "choice": "bf16" if speedup >= SPEEDUP_NEEDED else "fp32",
        "bf16_speedup": round(speedup, 3),
        "speedup_needed": SPEEDUP_NEEDED,
        "fp32_ms": round(fp32_seconds * 1000, 3),
        "bf16_ms": round(bf16_seconds * 1000, 3),
        "probe": f"{TOKENS} x {HIDDEN} -> {INTERMEDIATE} -> {HIDDEN} linear, best of {ROUNDS}",
        "machine": machine_key(),
    }


def cpu_decision(run_probe=probe) -> dict:
    """This machine's decision: from the cache file, or probed now and added to it."""
    path, key = cache_file(), machine_key()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}  # none yet, or unreadable: probe and write a fresh one
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), dict) and known[key].get("choice") in ("bf16", "fp32"):
        return known[key]
    decision = decide(*run_probe())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**known, key: decision})
    except OSError as err:  # a read-only home: decide for this run only, and say the choice may not stick
        print(f"precision: could not keep the decision in {path} ({err}); set {CACHE_ENV} to a writable file")
    return decision


@cache
def cached_cpu_decision() -> dict:
    """cpu_decision, once per process."""
    return cpu_decision()


def cpu_has_fast_bf16() -> bool:
    """Whether bf16 is clearly faster than fp32 on this CPU: measured once per machine (zh_sentiment/precision.py),
    since CPUs of the same name differ (AVX512-BF16 makes bf16 2-3x faster, AVX2 alone about 7x slower)."""
    return cached_cpu_decision()["choice"] == "bf16"


def choose_precision(requested: str, device: torch.device, source: str = "embed") -> str:
    """`source` names the settings in messages: "embed" (the params) or "predict" (its options)."""
    if requested == "int8" and device.type != "cpu":
        if source == "predict":
            raise PipelineError("predict: int8 (dynamic quantization) runs on the CPU only; use --device cpu.")
        raise PipelineError("embed.precision int8 (dynamic quantization) runs on the CPU only; set embed.device: cpu.")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def precision_probe(requested: str, device: torch.device) -> dict | None:
    """The probe's figures behind an `auto` choice on the CPU (what embedding.json and model.json record), else None."""
    return cached_cpu_decision() if requested == "auto" and device.type == "cpu" else None
