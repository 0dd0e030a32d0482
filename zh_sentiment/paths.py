"""Where each stage reads and writes: the same paths dvc.yaml declares."""

from pathlib import Path

SPLITS = ("train", "validation", "test")

RAW_DIR = Path("data/raw")
CLEAN_DIR = Path("data/clean")
LABELS_FILE = CLEAN_DIR / "labels.json"
TOKENS_DIR = Path("data/tokens")
TOKENIZATION_FILE = TOKENS_DIR / "tokenization.json"
FEATURES_DIR = Path("data/features")
EMBEDDING_FILE = FEATURES_DIR / "embedding.json"
MODEL_DIR = Path("models")

CLEAN_METRICS = Path("metrics/clean.json")
TOKENIZE_METRICS = Path("metrics/tokenize.json")
TOKEN_LENGTHS_PLOT = Path("metrics/token_lengths.png")
TRAIN_METRICS = Path("metrics/train.json")
TRAIN_HISTORY = Path("metrics/train_history.csv")
TEST_METRICS = Path("metrics/test.json")
TEST_PREDICTIONS = Path("metrics/test_predictions.csv")
ROC_POINTS = Path("metrics/roc.csv")
MISCLASSIFIED = Path("metrics/misclassified.csv")


def must_be_local(name: str) -> bool:
    """Whether a dataset or model name can only mean a local folder: hub ids are `name` or `owner/name`."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1
