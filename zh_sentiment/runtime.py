"""Which engine runs an encoder model's forward pass: PyTorch, or ONNX Runtime on an exported model.

    --runtime torch       PyTorch eager, in the precision model.json records (or --precision)
    --runtime onnx        ONNX Runtime on onnx/model.onnx (fp32), written by `zh-sentiment export`
    --runtime onnx-int8   ONNX Runtime on onnx/model_quantized.onnx (dynamic int8 weights)
    --runtime auto        the fastest of those this folder has, measured on this machine

Which is fastest is a fact about the CPU and the model's shape, not about the weights: on a 2-core
AMD EPYC with AVX512-VNNI, ONNX Runtime's int8 ran bert-base 2.45x faster than PyTorch fp32 and
1.35x faster than bf16 (issue 22); on AVX2-only CPUs bf16 is 7x slower and PyTorch's own int8
slower than fp32. So `auto` times one small batch (PROBE_REVIEWS x PROBE_TOKENS random tokens) in
each runtime the folder passed validation for, once per machine, library versions and model shape,
and keeps the decision in a cache file beside the precision probe's (RUNTIME_CACHE, or
$ZH_SENTIMENT_RUNTIME_CACHE): later runs read it and decide the same. Delete it to probe again.
"""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.outputs import write_json
from zh_sentiment.precision import machine_key

RUNTIMES = ("auto", "torch", "onnx", "onnx-int8")
CACHE_ENV = "ZH_SENTIMENT_RUNTIME_CACHE"
RUNTIME_CACHE = Path("~/.cache/zh-sentiment/runtime.json")
PROBE_REVIEWS, PROBE_TOKENS, ROUNDS = 4, 64, 3
# A runtime later in RUNTIMES replaces an earlier one only when this much faster: a gain within a loaded
# machine's noise is not worth another engine (nor int8's rounding).
SPEEDUP_NEEDED = 1.1

Logits = Callable[[dict[str, torch.Tensor]], torch.Tensor]


class OnnxLogits:
    """An ONNX Runtime session (CPU) on an exported model's checked bytes: token tensors -> logits."""

    def __init__(self, data: bytes, path: Path):
        import onnxruntime as ort  # here: PyTorch-only use never loads it

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: its notes on the graph are not the user's business
        # Its pool's threads block between runs instead of spinning: spinning took the cores a server's event
        # loop and batcher need (2 cores, 16 clients: 1.97 against 1.43 reviews/s, best of 2 rounds taken in
        # turns; offline predict the same, 1.69 against 1.65; docs/onnx.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own, unexported exception types
            raise PipelineError(
                f"{path}: ONNX Runtime cannot load it ({first_line(err)}). Export it again (zh-sentiment export)."
            ) from None
        self.inputs = [node.name for node in self.session.get_inputs()]

    def __call__(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        feeds = {name: inputs[name].cpu().numpy() for name in self.inputs}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def cache_file() -> Path:
    return Path(os.environ.get(CACHE_ENV) or RUNTIME_CACHE).expanduser()


def probe_key(shape: str, candidates: list[str]) -> str:
    """What the decision depends on: the machine (zh_sentiment/precision.py), onnxruntime's version, the
    model's shape and PyTorch's precision (in `shape`), and which runtimes there were to choose from."""
    import onnxruntime as ort

    return f"{machine_key()} | onnxruntime {ort.__version__} | {shape} | {' '.join(candidates)}"


def probe_inputs(vocab_size: int, names: list[str]) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab_size, (PROBE_REVIEWS, PROBE_TOKENS), generator=generator)
    made = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    return {name: made[name] for name in names}


def time_logits(logits: Logits, inputs: dict[str, torch.Tensor]) -> float:
    """Seconds for one forward pass, the best of ROUNDS after a warm-up (the first call plans kernels)."""
    with torch.inference_mode():
        logits(inputs)
        best = float("inf")
        for _ in range(ROUNDS):
            start = time.perf_counter()
            logits(inputs)
            best = min(best, time.perf_counter() - start)
    return best


def decide(milliseconds: dict[str, float]) -> str:
    """The fastest, a later runtime (RUNTIMES' order) only when SPEEDUP_NEEDED faster than the choice so far."""
    choice = None
    for name in RUNTIMES:
        if name in milliseconds and (choice is None or milliseconds[choice] >= SPEEDUP_NEEDED * milliseconds[name]):
            choice = name
    return choice


def cached_decision(key: str) -> dict | None:
    try:
        known = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    found = known.get(key) if isinstance(known, dict) else None
    return found if isinstance(found, dict) and found.get("choice") in RUNTIMES else None


def probe(key: str, runtimes: dict[str, Logits], inputs: dict[str, torch.Tensor]) -> dict:
    """Time each runtime on `inputs`; the decision, also added to the cache file."""
    milliseconds = {name: round(time_logits(logits, inputs) * 1000, 3) for name, logits in runtimes.items()}
    decision = {
        "choice": decide(milliseconds),
        "ms": milliseconds,
        "speedup_needed": SPEEDUP_NEEDED,
        "probe": f"{PROBE_REVIEWS} reviews x {PROBE_TOKENS} tokens, best of {ROUNDS}",
    }
    path = cache_file()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {**(known if isinstance(known, dict) else {}), key: decision})
    except OSError as err:  # a read-only home: decide for this run only, and say the choice may not stick
        print(f"runtime: could not keep the decision in {path} ({err}); set {CACHE_ENV} to a writable file")
    return decision


def reason(decision: dict, cached: bool) -> str:
    timings = ", ".join(f"{name} {ms:.1f} ms" for name, ms in decision["ms"].items())
    where = f"decided earlier on this machine ({cache_file()})" if cached else "measured now"
    return f"the fastest that passed validation ({timings} a batch; {where})"
