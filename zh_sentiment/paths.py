"""Where each stage reads and writes: the same paths dvc.yaml declares."""

from pathlib import Path

SPLITS = ("train", "validation", "test")

# Local sources in this folder are a DVC dependency of fetch, so that editing them re-runs it.
SOURCE_DIR = Path("data/source")
RAW_DIR = Path("data/raw")
SOURCE_LABELS_FILE = RAW_DIR / "labels.json"  # the source's own label names (a ClassLabel), when it has them
# Reviewed label decisions, read by clean and kept in git. Not in data/source, fetch's dependency:
# editing a decision re-runs clean and what follows, not fetch.
LABEL_FIXES = Path("data/label_fixes.csv")
CLEAN_DIR = Path("data/clean")
LABELS_FILE = CLEAN_DIR / "labels.json"
TOKENS_DIR = Path("data/tokens")
TOKENIZATION_FILE = TOKENS_DIR / "tokenization.json"
FEATURES_DIR = Path("data/features")
EMBEDDING_FILE = FEATURES_DIR / "embedding.json"
STATES_DIR = Path("data/states")  # hidden states entering the top finetune.layers layers (empty with layers: all)
STATES_FILE = STATES_DIR / "states.json"

MODELS_DIR = Path("models")
HEAD_FILE = "head.pt"  # in models/frozen_head: the linear head's state dict
INFO_FILE = "model.json"  # in every model folder: what predict needs to apply it (zh_sentiment.model_folder.ModelInfo)

# The weight files of a model folder, in the order from_pretrained prefers them.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
BASELINE = "baseline"  # TF-IDF + logistic regression (stage baseline)
BASELINE_FILE = "model.skops"  # in models/baseline: the fitted scikit-learn pipeline, saved without pickle
FROZEN_HEAD = "frozen_head"  # a linear head on the frozen encoder's features (stages train, evaluate)
FINETUNED = "finetuned"  # the encoder's top layers (or all) trained with a head (stage finetune)

# metrics/<model>.json are the DVC metrics, one small file per model, so that `dvc metrics show`
# reads as a comparison of the models. Everything else is a report or plot data, not a metric.
METRICS_DIR = Path("metrics")
DATA_REPORTS_DIR = METRICS_DIR / "data"
CLEAN_REPORT = DATA_REPORTS_DIR / "clean.json"
TOKENIZE_REPORT = DATA_REPORTS_DIR / "tokenize.json"
TOKEN_LENGTHS_PLOT = DATA_REPORTS_DIR / "token_lengths.png"
LABEL_ISSUES_REPORT = DATA_REPORTS_DIR / "label_issues.csv"  # the likely label errors, worst first
LABEL_ISSUES_COUNTS = DATA_REPORTS_DIR / "label_issues.json"  # how many per split, and how good the models were


def model_dir(model: str) -> Path:
    """The trained model folder: what predict reads."""
    return MODELS_DIR / model


def model_metrics(model: str) -> Path:
    """The model's headline metrics (test and validation), a DVC metrics file."""
    return METRICS_DIR / f"{model}.json"


def model_reports(model: str) -> Path:
    """The model's reports and plot data: training history, test predictions, ROC points, mistakes."""
    return METRICS_DIR / model


def must_be_local(name: str) -> bool:
    """Whether a dataset or model name can only mean a local folder: hub ids are `name` or `owner/name`.

    `models-src/bert-base-chinese` has the form of a hub id, but when `models-src/` is a folder here
    it names a folder under it (the README's offline recipe), so a missing one is a missing folder.
    """
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name or name.endswith("/"):
        return True
    return "/" in name and Path(name.split("/")[0]).is_dir()
