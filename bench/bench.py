"""Benchmark: what caching the frozen encoder's features buys on this machine, and what it costs.

    HF_HUB_OFFLINE=1 python -m bench.bench                 # generated reviews with ChnSentiCorp's length mix
    HF_HUB_OFFLINE=1 python -m bench.bench --csv reviews.csv --text-column text

One process, one encoder, one set of reviews:
  (a) ceiling: encoder tokens/s on full batches of one length (the mix's mean): nothing is padding
  (b) stages.encoder.embed on the real length mix: useful tokens/s, and (b)/(a)
  (c) the classic recipe: the encoder re-run on every batch of every epoch, padded to 512 (extrapolated)
  (d) ours: tokenize and embed once, then E epochs of the head (stages.train.fit); (c)/(d)
  (e) re-running after a train.batch_size change, against a full `dvc repro`, in a real temp project
  (f) peak RSS of the embed stage on N and 2N reviews
  (g) int8 and bf16 against fp32: speed, feature similarity, fixture test accuracy
The encoder has bert-base-chinese's shape and random weights: speed does not depend on the
weights, so nothing is downloaded. Prints a markdown table and writes it, with the machine,
to bench/results.md. Not a test: the numbers depend on the machine and on what else runs on it.
"""

import argparse
import math
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pandas as pd
import torch
import torch.nn.functional as F
import transformers
import yaml
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertTokenizer, PreTrainedTokenizerBase

from stages.train import fit
from tests.fixtures import write_splits, write_tiny_bert
from zh_sentiment.encoder import (
    choose_precision,
    embed,
    encode_texts,
    load_encoder,
    load_tokenizer,
    pool,
    use_all_cores,
)
from zh_sentiment.params import Params, Train, load_params
from zh_sentiment.paths import CLEAN_DIR, FEATURES_DIR, SPLITS, TOKENS_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_CONFIG = (
    REPO_ROOT.parent / "shared" / "models" / "bert-base-chinese-config"
)  # real config and tokenizer, no weights
RESULTS_FILE = REPO_ROOT / "bench" / "results.md"
CPU = torch.device("cpu")

MAX_LENGTH = 512
# ChnSentiCorp review lengths in characters: percentile -> length
CHNSENTICORP_CHARS = {50: 76, 90: 190, 95: 250, 99: 540}
MIN_CHARS, MAX_CHARS = 4, 2000
PUNCTUATION = "，。！？"
FULL_SPLITS = {"train": 9600, "validation": 1200, "test": 1200}  # ChnSentiCorp's size
EPOCHS = (3, 10)

TARGET_EMBED_VS_CEILING = 0.85
TARGET_SPEEDUP = {3: 10, 10: 30}
TARGET_RERUN_FRACTION = 0.02
RSS_NOISE = 50 * 2**20  # allocator and page-cache jitter between two runs of the same stage

# The toy fixture task as tests/conftest.py trains it (FIXTURE_PARAMS): small, and learnt.
FIXTURE_MAX_LENGTH = 64
FIXTURE_EMBED_BATCH = 16
FIXTURE_TRAIN = Train(epochs=100, batch_size=32, lr=0.01, weight_decay=0.01, patience=10, seed=42)

T = TypeVar("T")

# dvc's stage headers and the stages' summary lines ("train: best epoch ..."), not progress bars ("train:  80%|")
ECHOED = re.compile(r"^(Running stage|[a-z]+: [^\s\d])")


@dataclass
class Row:
    measurement: str
    value: str
    target: str = ""
    result: str = ""
    others: str = ""  # the share of the CPU other processes used while it was measured


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Timing:
    seconds: float
    others: float  # the share of the machine's CPU other processes used meanwhile: 0 when idle

    @property
    def others_text(self) -> str:
        return f"{self.others:.0%}"


def timed(work: Callable[[], T]) -> tuple[T, Timing]:
    """work()'s result and its wall time, with how busy other processes kept the machine meanwhile:
    on a shared machine that tells a slow method from a slow moment."""
    busy, own, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    others = busy_cpu_seconds() - busy - (own_cpu_seconds() - own)
    return result, Timing(seconds, max(0.0, others) / (seconds * os.cpu_count()))  # /proc/stat counts every CPU


def busy_cpu_seconds() -> float:
    """CPU seconds every process on the machine has used since boot, from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq = map(int, Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds used by this benchmark and the children it waited for."""
    return sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )


# ---------------------------------------------------------------- encoder and reviews


def build_encoder(folder: Path, seed: int) -> None:
    """Save a random-weight encoder of bert-base-chinese's shape and its tokenizer as a model folder,
    which every measurement then loads the way the pipeline does (stages.encoder.load_encoder)."""
    if SHARED_CONFIG.is_dir():
        config = AutoConfig.from_pretrained(SHARED_CONFIG)
        tokenizer = AutoTokenizer.from_pretrained(SHARED_CONFIG)
    else:
        config = BertConfig(
            vocab_size=21128,
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=512,
        )
        tokenizer = character_tokenizer(folder)
    torch.manual_seed(seed)
    AutoModel.from_config(config, attn_implementation="sdpa").save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def character_tokenizer(folder: Path) -> BertTokenizer:
    """Without the shared tokenizer: one token per CJK character, like bert-base-chinese's."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PUNCTUATION] + [chr(c) for c in range(0x4E00, 0x9FA6)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    return BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=False)


def review_characters(tokenizer) -> list[str]:
    """CJK characters that are one token each."""
    return sorted(token for token in tokenizer.get_vocab() if len(token) == 1 and "\u4e00" <= token <= "\u9fff")


def lognormal_sigma() -> float:
    """Least-squares fit of log(length / median) = sigma * z to ChnSentiCorp's upper percentiles."""
    median = CHNSENTICORP_CHARS[50]
    points = [
        (statistics.NormalDist().inv_cdf(p / 100), math.log(n / median))
        for p, n in CHNSENTICORP_CHARS.items()
        if p != 50
    ]
    return sum(z * y for z, y in points) / sum(z * z for z, _ in points)


def random_text(rng: random.Random, characters: list[str], length: int) -> str:
    return "".join(rng.choice(PUNCTUATION) if rng.random() < 0.08 else rng.choice(characters) for _ in range(length))


def generate_reviews(n: int, characters: list[str], rng: random.Random) -> list[str]:
    """Random characters; lengths log-normal around ChnSentiCorp's median, clipped to its range."""
    mu, sigma = math.log(CHNSENTICORP_CHARS[50]), lognormal_sigma()
    lengths = [min(MAX_CHARS, max(MIN_CHARS, round(rng.lognormvariate(mu, sigma)))) for _ in range(n)]
    return [random_text(rng, characters, length) for length in lengths]


def load_reviews(args, characters: list[str], rng: random.Random) -> list[str]:
    if args.csv is None:
        return generate_reviews(args.reviews, characters, rng)
    texts = pd.read_csv(args.csv, dtype=str, keep_default_na=False)[args.text_column].tolist()
    texts = [text for text in texts if text.strip()]
    if len(texts) < args.reviews:
        sys.exit(f"{args.csv} has {len(texts)} non-empty reviews; pass --reviews {len(texts)} or fewer")
    rng.shuffle(texts)
    return texts[: args.reviews]


def split_reviews(texts: list) -> dict[str, list]:
    """train/validation/test as 80/10/10, ChnSentiCorp's proportions."""
    n_eval = len(texts) // 10
    n_train = len(texts) - 2 * n_eval
    return {
        "train": texts[:n_train],
        "validation": texts[n_train : n_train + n_eval],
        "test": texts[n_train + n_eval :],
    }


def take(tokens: dict[str, torch.Tensor], index) -> dict[str, torch.Tensor]:
    index = torch.as_tensor(index)
    return {key: value[index] for key, value in tokens.items()}


def computed_tokens(lengths: torch.Tensor, batch_size: int) -> int:
    """Tokens the encoder computes in embed's batches: longest first, each padded to its own longest."""
    ordered = lengths.sort(descending=True).values
    return sum(int(batch.max()) * len(batch) for batch in ordered.split(batch_size))


def timed_embed(
    model, tokens, pooling: str, batch_size: int, progress: str | None = None
) -> tuple[torch.Tensor, Timing]:
    return timed(lambda: embed(model, tokens, pooling, batch_size, CPU, progress=progress))


# ---------------------------------------------------------------- (a) to (d): speed in this process


def classic_seconds_per_review(model, tokenizer, texts, batch_size, batches, pooling) -> tuple[float, Timing]:
    """The classic recipe's cost per review and epoch: tokenize padding to max_length, run the frozen
    encoder (without grad, the cheapest way to re-run it), one optimizer step of a linear head."""
    head = torch.nn.Linear(model.config.hidden_size, 2)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3)

    def step(batch_texts: list[str]) -> None:
        inputs = tokenizer(
            batch_texts, padding="max_length", truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        with torch.no_grad():
            features = pool(model(**inputs).last_hidden_state, inputs["attention_mask"], pooling)
        loss = F.cross_entropy(head(features), torch.randint(0, 2, (len(batch_texts),)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def run_batches() -> None:
        for i in range(batches):
            say(f"(c) classic batch {i + 1}/{batches}: {batch_size} reviews x {MAX_LENGTH} tokens")
            step(texts[i * batch_size : (i + 1) * batch_size])

    step(texts[:1])  # warm-up at this shape
    _, timing = timed(run_batches)
    return timing.seconds / (batches * batch_size), timing


def fit_seconds(features: torch.Tensor, labels: torch.Tensor, epochs: int, train_params: Train) -> float:
    """Wall time of stages.train.fit for exactly `epochs` epochs (patience = epochs: no early stop)."""
    split = split_reviews(list(range(len(labels))))
    train_index, validation_index = split["train"], split["validation"] + split["test"]
    params = train_params.model_copy(update={"epochs": epochs, "patience": epochs})
    start = time.perf_counter()
    fit((features[train_index], labels[train_index]), (features[validation_index], labels[validation_index]), 2, params)
    return time.perf_counter() - start


# ---------------------------------------------------------------- (e) and (f): the real stages, as child processes


@dataclass
class Child:
    timing: Timing
    output: list[str]
    peak_rss: int  # bytes: the largest resident set of the process or of any child it waited for


def run_child(command: list[str], cwd: Path, env: dict | None = None) -> Child:
    """Run `command`, echoing dvc's stage headers and the stages' summary lines as progress."""
    (returncode, output, usage), timing = timed(lambda: wait_for(command, cwd, env))
    if returncode != 0:
        tail = "\n".join(output[-40:])
        raise RuntimeError(f"`{' '.join(map(str, command))}` exited {returncode} in {cwd}:\n{tail}")
    return Child(timing, output, usage.ru_maxrss * 1024)  # ru_maxrss is in KiB on Linux


def wait_for(command: list[str], cwd: Path, env: dict | None) -> tuple[int, list[str], resource.struct_rusage]:
    with subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        output = []
        for line in process.stdout:
            output.append(line.rstrip("\n"))
            if ECHOED.match(line):
                say("    " + line.rstrip())
        # wait4, not Popen.wait: it gives this child's own rusage, where getrusage(RUSAGE_CHILDREN)
        # would give the largest RSS of any child this benchmark has waited for so far.
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, output, usage


def offline_env(**extra: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **extra}


def set_param(params_file: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load(params_file.read_text(encoding="utf-8"))
    params[section][key] = value
    params_file.write_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), encoding="utf-8")


def write_split_files(folder: Path, texts: list[str], rng: random.Random) -> Path:
    """train/validation/test CSVs (text, label); random labels: speed does not depend on them."""
    folder.mkdir(parents=True)
    for split, split_texts in split_reviews(texts).items():
        labels = [rng.randint(0, 1) for _ in split_texts]
        pd.DataFrame({"text": split_texts, "label": labels}).to_csv(
            folder / f"{split}.csv", index=False, encoding="utf-8"
        )
    return folder


def make_project(folder: Path, data_dir: Path, model_dir: Path) -> Path:
    """A copy of this DVC project in its own git repo, pointed at the benchmark's reviews and encoder."""
    folder.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(REPO_ROOT / name, folder / name)
    shutil.copytree(REPO_ROOT / "stages", folder / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_ROOT / ".dvc", folder / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    set_param(folder / "params.yaml", "data", "dataset", str(data_dir))
    set_param(folder / "params.yaml", "model", "name", str(model_dir))
    for command in (["git", "init", "-q"], ["git", "add", "-A"]):
        subprocess.run(command, cwd=folder, check=True)
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=bench",
            "-c",
            "user.email=bench@example.com",
            "commit",
            "-q",
            "-m",
            "benchmark project",
        ],
        cwd=folder,
        check=True,
    )
    return folder


def dvc_repro(project: Path) -> tuple[Child, list[str]]:
    """`dvc repro` and the stages it ran, in order."""
    child = run_child([sys.executable, "-m", "dvc", "repro"], project, offline_env())
    return child, [line.split("'")[1] for line in child.output if line.startswith("Running stage")]


def embed_stage_run(folder: Path, texts: list[str], model_dir: Path) -> tuple[Child, int, int]:
    """`python -m stages.embed` on `texts` in a scratch folder (tokenized first by stages.tokenize):
    the embed run, and the bytes of the tokens it read and of the features it wrote."""
    folder.mkdir()
    shutil.copy(REPO_ROOT / "params.yaml", folder / "params.yaml")
    set_param(folder / "params.yaml", "model", "name", str(model_dir))
    (folder / CLEAN_DIR).mkdir(parents=True)
    for split, split_texts in split_reviews(texts).items():
        pd.DataFrame({"text": split_texts, "label": 0}).to_csv(folder / CLEAN_DIR / f"{split}.csv", index=False)
    env = offline_env(PYTHONPATH=str(REPO_ROOT))  # the stages of this checkout, run in the scratch folder
    run_child([sys.executable, "-m", "stages.tokenize"], folder, env)
    child = run_child([sys.executable, "-m", "stages.embed"], folder, env)
    tokens_bytes = sum(file.stat().st_size for file in (folder / TOKENS_DIR).glob("*.safetensors"))
    features_bytes = sum(file.stat().st_size for file in (folder / FEATURES_DIR).glob("*.safetensors"))
    return child, tokens_bytes, features_bytes


# ---------------------------------------------------------------- (g) the fixture task at two precisions


def fixture_test_accuracy(folder: Path, precision: str, pooling: str) -> float:
    """Test accuracy of a head trained on the tiny fixture BERT's features at `precision`."""
    tokenizer = load_tokenizer(str(folder / "tiny-bert"))
    model = load_encoder(str(folder / "tiny-bert"), CPU, precision)
    splits = {}
    for split in SPLITS:
        frame = pd.read_csv(folder / "reviews" / f"{split}.csv")
        tokens = encode_texts(tokenizer, frame["text"].tolist(), FIXTURE_MAX_LENGTH)
        features = embed(model, tokens, pooling, FIXTURE_EMBED_BATCH, CPU)
        splits[split] = (features, torch.tensor(frame["label"].to_numpy()))
    head, _, _ = fit(splits["train"], splits["validation"], 2, FIXTURE_TRAIN)
    features, labels = splits["test"]
    with torch.no_grad():
        return (head(features).argmax(1) == labels).float().mean().item()


# ---------------------------------------------------------------- report


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def cpu_flags(*wanted: str) -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return " ".join(flag for flag in line.split(":", 1)[1].split() if flag in wanted) or "none"
    return "unknown"


def machine_lines(others_share: float) -> list[str]:
    return [
        f"- cores: {len(os.sched_getaffinity(0))} (torch threads: {torch.get_num_threads()})",
        f"- CPU: {cpu_model()}; bf16 flags: {cpu_flags('avx512_bf16', 'amx_bf16', 'amx_tile')}",
        f"- torch.backends.cpu.get_cpu_capability(): {torch.backends.cpu.get_cpu_capability()}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}",
        f"- date: {datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- CPU used by other processes during the run: {others_share:.0%} of the machine "
        "(timings are slower and noisier when this is not near 0)",
    ]


def markdown_table(rows: list[Row]) -> str:
    lines = ["| Measurement | Value | Target / note | Result | Other processes' CPU |", "|---|---|---|---|---|"]
    lines += [f"| {row.measurement} | {row.value} | {row.target} | {row.result} | {row.others} |" for row in rows]
    return "\n".join(lines)


def write_results(text: str) -> None:
    tmp = RESULTS_FILE.with_name(RESULTS_FILE.name + ".tmp")  # a killed run never leaves half a file
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, RESULTS_FILE)


def mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


# ---------------------------------------------------------------- the measurements


@dataclass
class Bench:
    """What every measurement shares: one encoder folder, one set of reviews, the project's params."""

    scratch: Path
    model_dir: Path
    tokenizer: PreTrainedTokenizerBase
    characters: list[str]
    texts: list[str]
    tokens: dict[str, torch.Tensor]  # encode_texts(texts, max_length=512), as the tokenize stage stores them
    tokenize_seconds: float
    labels: torch.Tensor  # random: speed does not depend on them
    params: Params
    rng: random.Random

    @property
    def n(self) -> int:
        return len(self.texts)

    @property
    def useful_tokens(self) -> int:
        return int(self.tokens["lengths"].sum())

    @property
    def pooling(self) -> str:
        return self.params.embed.pooling

    @property
    def batch_size(self) -> int:
        return self.params.embed.batch_size


@dataclass
class Embedded:
    features: torch.Tensor
    timing: Timing
    tokens_per_second: float  # useful tokens


def prepare(args, scratch: Path) -> Bench:
    model_dir = scratch / "encoder"
    say(
        "encoder: bert-base-chinese's shape, random weights, from "
        + (str(SHARED_CONFIG) if SHARED_CONFIG.is_dir() else "built-in numbers")
    )
    build_encoder(model_dir, args.seed)
    tokenizer = load_tokenizer(str(model_dir))
    rng = random.Random(args.seed)
    characters = review_characters(tokenizer)
    texts = load_reviews(args, characters, rng)
    start = time.perf_counter()
    tokens = encode_texts(tokenizer, texts, MAX_LENGTH)
    tokenize_seconds = time.perf_counter() - start
    labels = torch.randint(0, 2, (len(texts),), generator=torch.Generator().manual_seed(args.seed))
    return Bench(scratch, model_dir, tokenizer, characters, texts, tokens, tokenize_seconds, labels, load_params(), rng)


def describe_reviews(bench: Bench) -> list[Row]:
    chars = pd.Series([len(text) for text in bench.texts])
    p50, p90, p95, p99 = (round(chars.quantile(q)) for q in (0.5, 0.9, 0.95, 0.99))
    return [
        Row(
            f"reviews: N = {bench.n}; characters p50/p90/p95/p99/max",
            f"{p50}/{p90}/{p95}/{p99}/{chars.max()}",
            "ChnSentiCorp: 76/190/250/540/~2000",
        ),
        Row(f"tokens per review, truncated at {MAX_LENGTH}: mean", f"{bench.useful_tokens / bench.n:.1f}"),
    ]


def ceiling_and_embed(bench: Bench, model, args) -> tuple[list[Row], Embedded]:
    """(a) and (b)."""
    length, batch_size = round(bench.useful_tokens / bench.n), bench.batch_size
    ceiling_tokens = fixed_length_tokens(
        bench.tokenizer, bench.characters, length, batch_size * args.ceiling_batches, bench.rng
    )
    ceiling_count = int(ceiling_tokens["lengths"].sum())
    embed(
        model, take(ceiling_tokens, range(batch_size)), bench.pooling, batch_size, CPU
    )  # warm-up: first calls plan kernels

    # The ceiling is timed on both sides of (b), and the faster time kept: other processes come and go,
    # and they only ever slow a run down.
    say(f"(a) ceiling: {args.ceiling_batches} batches of {batch_size} x {length} tokens, before and after (b)")
    _, before = timed_embed(model, ceiling_tokens, bench.pooling, batch_size, progress="(a) ceiling")
    say(f"(b) embed: {bench.n} reviews, {bench.useful_tokens:,} tokens")
    features, timing = timed_embed(model, bench.tokens, bench.pooling, batch_size, progress="(b) embed")
    _, after = timed_embed(model, ceiling_tokens, bench.pooling, batch_size, progress="(a) ceiling")
    best = min(before, after, key=lambda t: t.seconds)
    ceiling = ceiling_count / best.seconds
    speed = bench.useful_tokens / timing.seconds

    padding = bench.useful_tokens / computed_tokens(bench.tokens["lengths"], batch_size)
    rows = [
        # not a hard ceiling: on a CPU, longer batches can run a little more tokens/s than mean-length ones
        Row(
            f"(a) ceiling: fp32 forward, full batches of {batch_size} x {length} tokens",
            f"{ceiling:,.0f} tok/s",
            f"faster of: before (b) {ceiling_count / before.seconds:,.0f} ({before.others_text} others), "
            f"after {ceiling_count / after.seconds:,.0f} ({after.others_text} others)",
            "",
            best.others_text,
        ),
        Row(
            f"(b) our embed on the length mix, N = {bench.n} (useful tokens)",
            f"{speed:,.0f} tok/s",
            f"useful / computed tokens in its batches: {padding:.3f}",
            "",
            timing.others_text,
        ),
        Row(
            "(b)/(a)",
            f"{speed / ceiling:.3f}",
            f"≥ {TARGET_EMBED_VS_CEILING}",
            verdict(speed / ceiling >= TARGET_EMBED_VS_CEILING),
        ),
    ]
    return rows, Embedded(features, timing, speed)


def fixed_length_tokens(tokenizer, characters, length: int, n: int, rng: random.Random) -> dict[str, torch.Tensor]:
    """n reviews of exactly `length` tokens: batches of them hold no padding."""
    tokens = encode_texts(tokenizer, [random_text(rng, characters, length - 2) for _ in range(n)], MAX_LENGTH)
    assert bool((tokens["lengths"] == length).all()), "expected one token per character, plus [CLS] and [SEP]"
    return tokens


def classic_and_ours(bench: Bench, model, embedded: Embedded, args) -> list[Row]:
    """(c) and (d)."""
    batches = min(args.classic_batches, bench.n // bench.batch_size)
    per_review, timing = classic_seconds_per_review(
        model, bench.tokenizer, bench.texts, bench.batch_size, batches, bench.pooling
    )
    extrapolated = f"extrapolated from {batches} batches of {bench.batch_size}"
    head_seconds = {
        epochs: fit_seconds(embedded.features, bench.labels, epochs, bench.params.train) for epochs in EPOCHS
    }
    rows = [
        Row(
            f"(c) classic, per review and epoch at {MAX_LENGTH} tokens",
            f"{per_review:.3f} s",
            extrapolated,
            "",
            timing.others_text,
        )
    ]
    for epochs in EPOCHS:
        classic = per_review * bench.n * epochs
        ours = bench.tokenize_seconds + embedded.timing.seconds + head_seconds[epochs]
        rows += [
            Row(f"(c) classic, E = {epochs}, N = {bench.n}", f"{classic:,.0f} s", extrapolated),
            Row(
                f"(d) ours, E = {epochs}: tokenize {bench.tokenize_seconds:.1f} s "
                f"+ embed {embedded.timing.seconds:.1f} s "
                f"+ head {head_seconds[epochs]:.1f} s",
                f"{ours:,.1f} s",
            ),
            Row(
                f"(c)/(d), E = {epochs}, N = {bench.n}, max_length {MAX_LENGTH}",
                f"{classic / ours:.1f}x",
                f"≥ {TARGET_SPEEDUP[epochs]}x",
                verdict(classic / ours >= TARGET_SPEEDUP[epochs]),
            ),
        ]
    return rows


def rerun_cost(bench: Bench, embedded: Embedded, args) -> list[Row]:
    """(e): a real project on a subset, then extrapolated to ChnSentiCorp's size."""
    subset = bench.texts[: args.pipeline_reviews]
    sizes = "/".join(str(len(part)) for part in split_reviews(subset).values())
    data_dir = write_split_files(bench.scratch / "pipeline-data", subset, bench.rng)
    project = make_project(bench.scratch / "project", data_dir, bench.model_dir)
    say(f"(e) dvc repro, full, {sizes} reviews")
    full, _ = dvc_repro(project)
    old_batch = bench.params.train.batch_size
    new_batch = old_batch // 2 if old_batch > 1 else 2
    set_param(project / "params.yaml", "train", "batch_size", new_batch)
    say(f"(e) dvc repro after train.batch_size {old_batch} -> {new_batch}")
    rerun, ran = dvc_repro(project)

    # At full size only the data-proportional work grows: embedding, at the measured tokens/s, and
    # training the head, with every one of train.epochs run (an upper bound: patience stops it earlier).
    full_reviews = sum(FULL_SPLITS.values())
    head_full = (
        head_epoch_seconds_at_full_size(embedded.features.shape[1], bench.params.train) * bench.params.train.epochs
    )
    embed_subset = int(bench.tokens["lengths"][: len(subset)].sum()) / embedded.tokens_per_second
    embed_full = full_reviews * bench.useful_tokens / bench.n / embedded.tokens_per_second
    full_at_size = full.timing.seconds - embed_subset + embed_full + head_full
    rerun_at_size = rerun.timing.seconds + head_full
    fraction = rerun_at_size / full_at_size
    return [
        Row(
            f"(e) full `dvc repro`, {sizes} reviews (measured)",
            f"{full.timing.seconds:.1f} s",
            "",
            "",
            full.timing.others_text,
        ),
        Row(
            f"(e) re-run after train.batch_size {old_batch} -> {new_batch} (measured)",
            f"{rerun.timing.seconds:.1f} s",
            "",
            "",
            rerun.timing.others_text,
        ),
        # evaluate runs too when the new head differs, i.e. unless every epoch is one batch either way
        Row(
            "(e) stages the re-run ran",
            ", ".join(ran),
            "train (then evaluate), nothing before",
            verdict(ran[:1] == ["train"] and set(ran) <= {"train", "evaluate"}),
        ),
        Row(
            f"(e) re-run / full at {sizes} (measured; python start-up dominates)",
            f"{rerun.timing.seconds / full.timing.seconds:.1%}",
        ),
        Row(
            f"(e) full `dvc repro`, {full_reviews:,} reviews (extrapolated)",
            f"{full_at_size:,.0f} s",
            f"embed {embed_full:,.0f} s at {embedded.tokens_per_second:,.0f} tok/s "
            f"+ fixed {full.timing.seconds - embed_subset:.0f} s "
            f"+ head ≤ {head_full:.0f} s",
        ),
        Row(f"(e) re-run, {full_reviews:,} reviews (extrapolated)", f"{rerun_at_size:,.1f} s"),
        Row(
            f"(e) re-run / full, {full_reviews:,} reviews (extrapolated)",
            f"{fraction:.2%}",
            f"≤ {TARGET_RERUN_FRACTION:.0%}",
            verdict(fraction <= TARGET_RERUN_FRACTION),
        ),
    ]


def head_epoch_seconds_at_full_size(hidden_size: int, train_params: Train) -> float:
    """Seconds one more epoch of stages.train.fit takes on ChnSentiCorp-sized features (random ones:
    the speed is the same); the difference of a 5- and a 1-epoch fit leaves out fit's fixed costs."""

    def features(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, hidden_size), torch.randint(0, 2, (n,))

    train, validation = features(FULL_SPLITS["train"]), features(FULL_SPLITS["validation"])
    seconds = {}
    for epochs in (1, 5):
        start = time.perf_counter()
        fit(train, validation, 2, train_params.model_copy(update={"epochs": epochs, "patience": epochs}))
        seconds[epochs] = time.perf_counter() - start
    return (seconds[5] - seconds[1]) / 4


def embed_stage_rss(bench: Bench, args) -> list[Row]:
    """(f): N reviews, then the same N twice, so the batches are as wide as before
    and only the number of reviews (so tokens and features) grows."""
    texts = bench.texts[: args.rss_reviews]
    rows, runs = [], {}
    for copies in (1, 2):
        say(f"(f) python -m stages.embed on {copies * len(texts)} reviews")
        runs[copies] = embed_stage_run(bench.scratch / f"rss-{copies}", texts * copies, bench.model_dir)
        child, tokens_bytes, features_bytes = runs[copies]
        rows.append(
            Row(
                f"(f) embed stage peak RSS, {copies * len(texts)} reviews",
                mib(child.peak_rss),
                f"tokens {mib(tokens_bytes)}, features {mib(features_bytes)}",
                "",
                child.timing.others_text,
            )
        )
    growth = runs[2][0].peak_rss - runs[1][0].peak_rss
    data_growth = sum(runs[2][1:]) - sum(runs[1][1:])
    rows.append(
        Row(
            "(f) peak RSS growth N -> 2N, less the growth of tokens and features",
            mib(growth - data_growth),
            f"≤ {mib(RSS_NOISE)} (noise)",
            verdict(growth - data_growth <= RSS_NOISE),
        )
    )
    return rows


def precisions(bench: Bench, fp32_model, embedded: Embedded, args) -> list[Row]:
    """(g): int8 on the whole mix and the fixture task; bf16 on a small sample (it can be very slow on CPUs)."""
    say(f"(g) int8 embed: {bench.n} reviews")
    int8_model = load_encoder(str(bench.model_dir), CPU, "int8")
    int8_features, int8 = timed_embed(
        int8_model, bench.tokens, bench.pooling, bench.batch_size, progress="(g) int8 embed"
    )
    del int8_model
    fp32_features = embedded.features
    # Random-weight BERT features all point nearly the same way, so the raw cosine is near 1 for any two
    # reviews; centred on the fp32 mean it measures what tells reviews apart. Each floor is two different reviews.
    mean = fp32_features.mean(0)
    rows = [
        Row(
            "(g) int8 embed on the same mix (useful tokens)",
            f"{bench.useful_tokens / int8.seconds:,.0f} tok/s",
            f"int8 / fp32: {embedded.timing.seconds / int8.seconds:.2f}x",
            "",
            int8.others_text,
        ),
        Row(
            "(g) cosine(int8, fp32 features), mean over the same reviews",
            f"{mean_cosine(int8_features, fp32_features):.4f}",
            f"floor {mean_cosine(fp32_features, fp32_features.roll(1, 0)):.4f}",
        ),
        Row(
            "(g) the same, both centred on the fp32 mean feature",
            f"{mean_cosine(int8_features - mean, fp32_features - mean):.4f}",
            f"floor {mean_cosine(fp32_features - mean, (fp32_features - mean).roll(1, 0)):.4f}",
        ),
    ]

    say("(g) fixture task (tests/fixtures.py): tiny BERT in fp32 and int8")
    write_tiny_bert(bench.scratch / "fixture" / "tiny-bert")
    write_splits(bench.scratch / "fixture" / "reviews")
    accuracy = {p: fixture_test_accuracy(bench.scratch / "fixture", p, bench.pooling) for p in ("fp32", "int8")}
    rows.append(
        Row(
            "(g) fixture test accuracy fp32 / int8 (60 test reviews)",
            f"{accuracy['fp32']:.4f} / {accuracy['int8']:.4f}",
            f"int8 - fp32: {100 * (accuracy['int8'] - accuracy['fp32']):+.1f} points",
        )
    )

    sample, batch = take(bench.tokens, range(args.bf16_reviews)), args.bf16_reviews // 2
    sample_tokens = int(sample["lengths"].sum())
    say(f"(g) bf16 and fp32: 2 batches of {batch} reviews, {sample_tokens:,} tokens")
    bf16_model = load_encoder(str(bench.model_dir), CPU, "bf16")
    embed(bf16_model, take(bench.tokens, [0]), bench.pooling, 1, CPU)  # warm-up
    bf16_features, bf16 = timed_embed(bf16_model, sample, bench.pooling, batch, progress="(g) bf16 embed")
    del bf16_model
    _, fp32 = timed_embed(fp32_model, sample, bench.pooling, batch)
    sample_fp32 = fp32_features[: args.bf16_reviews]
    picked = choose_precision("auto", CPU)
    rows += [
        Row(
            f"(g) bf16 / fp32 tokens/s, {args.bf16_reviews} reviews in 2 batches",
            f"{fp32.seconds / bf16.seconds:.2f}x",
            f"bf16 {sample_tokens / bf16.seconds:,.0f}, fp32 {sample_tokens / fp32.seconds:,.0f} tok/s",
            "",
            f"{bf16.others_text} / {fp32.others_text}",
        ),
        Row(
            "(g) cosine(bf16, fp32 features) on that sample, centred",
            f"{mean_cosine(bf16_features - mean, sample_fp32 - mean):.4f}",
        ),
        Row("(g) choose_precision('auto', cpu)", picked, "fp32", verdict(picked == "fp32")),
    ]
    return rows


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a, b, dim=1).mean().item()


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=1024, help="N for (a)-(d) and (g); a small N pads more")
    parser.add_argument("--ceiling-batches", type=int, default=3, help="full batches timed for the ceiling (a)")
    parser.add_argument("--classic-batches", type=int, default=2, help="batches padded to 512 timed for (c)")
    parser.add_argument("--pipeline-reviews", type=int, default=160, help="reviews in the dvc project of (e)")
    parser.add_argument("--rss-reviews", type=int, default=64, help="N for the peak RSS of (f), which also runs 2N")
    parser.add_argument("--bf16-reviews", type=int, default=32, help="reviews (two batches) timed in bf16 and fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--csv", type=Path, help="read reviews from this CSV instead of generating them")
    parser.add_argument("--text-column", default="text")
    args = parser.parse_args()
    if (
        not 20
        <= min(args.pipeline_reviews, args.rss_reviews)
        <= max(args.pipeline_reviews, args.rss_reviews)
        <= args.reviews
    ):
        parser.error(
            "--pipeline-reviews and --rss-reviews must be from 20 (10% each for validation and test) to --reviews"
        )
    if not 2 <= args.bf16_reviews <= args.reviews:
        parser.error("--bf16-reviews must be from 2 to --reviews")
    return args


def measure(args) -> tuple[list[Row], Bench]:
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        bench = prepare(args, Path(scratch))
        model = load_encoder(str(bench.model_dir), CPU, "fp32")
        rows = describe_reviews(bench)
        speed_rows, embedded = ceiling_and_embed(bench, model, args)
        rows += speed_rows
        rows += classic_and_ours(bench, model, embedded, args)
        rows += rerun_cost(bench, embedded, args)
        rows += embed_stage_rss(bench, args)
        rows += precisions(bench, model, embedded, args)
    return rows, bench


def main() -> None:
    args = parse_args()
    use_all_cores()
    (rows, bench), run = timed(lambda: measure(args))
    table = markdown_table(rows)
    minutes = f"{run.seconds / 60:.1f} min"
    say(f"\n{table}\n\nwall time: {minutes}; CPU used by other processes meanwhile: {run.others_text} of the machine")
    source = f"from {args.csv}" if args.csv else "generated with ChnSentiCorp's lengths"
    write_results(
        "# Benchmark: frozen BERT, features cached\n\n"
        f"`HF_HUB_OFFLINE=1 python -m bench.bench {' '.join(sys.argv[1:])}`: wall time {minutes}.\n"
        f"Encoder: bert-base-chinese's shape with random weights, fp32 unless stated; pooling {bench.pooling}, "
        f"embed.batch_size {bench.batch_size}; reviews {source}. (c) is extrapolated from the batches named; "
        "(e) at 12,000 reviews is extrapolated from the measured fixed costs and the measured embed tokens/s. "
        "The last column is the share of the machine's CPU that other processes used during that measurement.\n\n"
        "## Machine\n\n" + "\n".join(machine_lines(run.others)) + "\n\n## Results\n\n" + table + "\n"
    )
    say(f"wrote {RESULTS_FILE.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
