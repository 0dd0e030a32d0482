"""Offline stand-ins for the real thing: a tiny BERT and small review splits with a learnable signal.

The tiny model has the same architecture as bert-base-chinese, shrunk, with random
weights and a vocabulary built from the characters the fixture reviews use. The
reviews carry sentiment in a few words, so even frozen random features separate them.
"""

import random
from pathlib import Path

import pandas as pd
import torch
from transformers import BertConfig, BertModel, BertTokenizer

POSITIVE = ["很好", "干净", "喜欢", "满意", "推荐", "舒服", "超值", "热情"]
NEGATIVE = ["太差", "很脏", "失望", "难吃", "退货", "吵闹", "糟糕", "冷漠"]
NEUTRAL = list("这家酒店的房间服务早餐位置价格书本质量快递包装前台环境设施我们住了两晚感觉总体来说还有一点")
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def review(rng: random.Random, label: int, length: int) -> str:
    """About `length` characters; a third of them belong to words of the review's sentiment."""
    words = POSITIVE if label == 1 else NEGATIVE
    pieces = [rng.choice(words) if rng.random() < 0.3 else rng.choice(NEUTRAL) for _ in range(length)]
    return "".join(pieces) + "。"


def reviews(n: int, seed: int, long_every: int = 10) -> pd.DataFrame:
    """n labelled reviews, balanced; every `long_every`-th is long enough to be truncated at 64 tokens."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        length = rng.randint(70, 120) if i % long_every == 0 else rng.randint(4, 30)
        rows.append({"text": review(rng, label, length), "label": label})
    return pd.DataFrame(rows)


def write_splits(folder: Path, sizes=(240, 60, 60), suffix: str = ".csv", encoding: str = "utf-8") -> Path:
    """train/validation/test files with distinct reviews (different seeds)."""
    folder.mkdir(parents=True, exist_ok=True)
    for seed, (split, n) in enumerate(zip(("train", "validation", "test"), sizes)):
        frame = reviews(n, seed=seed + 1)
        frame.to_csv(folder / f"{split}{suffix}", index=False, sep="\t" if suffix == ".tsv" else ",", encoding=encoding)
    return folder


def vocabulary() -> list[str]:
    chars = sorted(set("".join(POSITIVE + NEGATIVE + NEUTRAL) + "。，！？"))
    return SPECIAL_TOKENS + chars


def write_tiny_bert(folder: Path, seed: int = 0, max_positions: int = 128) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    vocab_file = folder / "vocab.txt"
    vocab_file.write_text("\n".join(vocabulary()) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(vocab=str(vocab_file), do_lower_case=False)
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocabulary()),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=256,
        max_position_embeddings=max_positions,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def add_dirty_rows(folder: Path) -> dict:
    """Append to train.csv one case of each cleaning rule; return the counts clean must report."""
    train = pd.read_csv(folder / "train.csv")
    test = pd.read_csv(folder / "test.csv")
    dirty = pd.DataFrame(
        [
            {"text": "   ", "label": 0},  # blank
            {"text": None, "label": 1},  # missing
            train.iloc[0].to_dict(),  # exact duplicate
            {"text": "房间位置很好", "label": 0},  # same text, both labels: a tie, both dropped
            {"text": "房间位置很好", "label": 1},
            test.iloc[0].to_dict(),  # leaked from test
            {"text": "  前台\u200b很好  满意 ", "label": 1},  # zero-width space, extra whitespace
            {"text": "早餐\x07太差", "label": 0},  # control character
        ]
    )
    pd.concat([train, dirty]).to_csv(folder / "train.csv", index=False)
    return {
        "rows_in": len(train) + len(dirty),
        "rows_out": len(train) + 2,
        "dropped": {
            "empty_text": 2,
            "duplicate": 1,
            "conflicting_label": 2,
            "also_in_validation": 0,
            "also_in_test": 1,
        },
        "fixed": {"whitespace_normalized": 1, "control_chars_removed": 1, "zero_width_removed": 1},
    }
