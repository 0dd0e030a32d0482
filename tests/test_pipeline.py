"""The whole pipeline, run for real by `dvc repro` on the tiny fixtures."""

from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from stages import evaluate, train
from tests.conftest import FIXTURE_PARAMS
from zh_sentiment.live import read_history
from zh_sentiment.sandbox import ran_stages

STAGES = ["fetch", "clean", "tokenize", "embed", "train", "evaluate", "baseline", "label_issues", "finetune"]
SPLITS = ["train", "validation", "test"]


def test_repro_runs_every_stage_and_writes_every_output(trained_project):
    assert trained_project.ran == STAGES
    expected = [
        *(f"data/raw/{split}.csv" for split in SPLITS),
        *(f"data/clean/{split}.csv" for split in SPLITS),
        "data/clean/labels.json",
        *(f"data/tokens/{split}.safetensors" for split in SPLITS),
        *(f"data/features/{split}.safetensors" for split in SPLITS),
        "models/frozen_head/head.pt",
        "models/frozen_head/model.json",
        "metrics/data/clean.json",
        "metrics/data/tokenize.json",
        "metrics/data/token_lengths.png",
        "metrics/frozen_head/training.json",
        "metrics/frozen_head/live/metrics.json",
        "metrics/frozen_head.json",
        "metrics/frozen_head/predictions.csv",
        "metrics/frozen_head/roc.csv",
        "metrics/frozen_head/misclassified.csv",
        "metrics/baseline.json",
        "models/baseline/model.skops",
        "models/baseline/model.json",
        *(f"metrics/baseline/{name}.csv" for name in ("validation", "predictions", "roc", "misclassified")),
        *(f"data/states/{split}.safetensors" for split in SPLITS),
        "data/states/states.json",
        *(f"models/finetuned/{name}" for name in ("model.safetensors", "config.json", "model.json")),
        "models/finetuned/tokenizer.json",
        "metrics/finetuned.json",
        *(f"metrics/finetuned/{name}" for name in ("live/metrics.json", "training.json", "predictions.csv", "roc.csv")),
        "metrics/finetuned/misclassified.csv",
        *(f"metrics/{model}/test.json" for model in ("frozen_head", "baseline", "finetuned")),
    ]
    missing = [path for path in expected if not (trained_project.path / path).is_file()]
    assert missing == []
    stages = yaml.safe_load((trained_project.path / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    declared = [
        next(iter(out)) if isinstance(out, dict) else out
        for stage in stages.values()
        for out in stage.get("outs", []) + stage.get("metrics", [])
    ]
    assert [path for path in declared if not (trained_project.path / path).exists()] == []
    assert not list(trained_project.path.rglob("*.tmp"))


def test_clean_reports_each_dirty_row(trained_project, reviews_folder):
    _, expected = reviews_folder
    report = trained_project.json("metrics/data/clean.json")["train"]
    assert {key: report[key] for key in expected} == expected
    assert sum(report["labels"].values()) == report["rows_out"]
    clean_train = pd.read_csv(trained_project.path / "data/clean/train.csv")
    assert len(clean_train) == expected["rows_out"]
    assert "前台很好 满意" in set(clean_train["text"])


def test_tokenize_reports_lengths_and_truncation(trained_project):
    max_length = FIXTURE_PARAMS["tokenize.max_length"]
    report = trained_project.json("metrics/data/tokenize.json")
    texts = pd.read_csv(trained_project.path / "data/clean/train.csv")["text"]
    lengths = texts.str.replace(" ", "").str.len() + 2  # one token per character, plus [CLS] and [SEP]
    assert report["train"]["max"] == lengths.max()
    assert report["train"]["truncated"] == (lengths > max_length).sum() > 0
    assert report["train"]["p50"] <= report["train"]["p90"] <= report["train"]["p99"] <= report["train"]["max"]

    tokens = load_file(trained_project.path / "data/tokens/train.safetensors")
    assert tokens["input_ids"].shape[0] == len(texts)
    assert tokens["lengths"].max() == max_length
    assert (tokens["lengths"] == tokens["attention_mask"].sum(1)).all()


def test_embed_writes_one_feature_vector_per_review(trained_project, tiny_bert):
    for split in SPLITS:
        features = load_file(trained_project.path / f"data/features/{split}.safetensors")
        n = len(pd.read_csv(trained_project.path / f"data/clean/{split}.csv"))
        assert features["features"].shape == (n, 128)
        assert features["labels"].shape == (n,)
    assert trained_project.json("data/features/embedding.json")["model"] == str(tiny_bert)


def test_train_keeps_the_best_epoch_and_records_the_model(trained_project):
    metrics = trained_project.json("metrics/frozen_head/training.json")
    history = read_history("frozen_head", trained_project.path)
    assert len(history) == metrics["epochs_run"] <= FIXTURE_PARAMS["train.epochs"]
    best = history.loc[history["epoch"] == metrics["best_epoch"]].iloc[0]
    assert best["validation_accuracy"] == history["validation_accuracy"].max()
    assert metrics["validation_accuracy"] == round(best["validation_accuracy"], 6)

    info = trained_project.json("models/frozen_head/model.json")
    assert info["label_names"] == ["negative", "positive"]
    assert info["num_labels"] == 2
    assert info["max_length"] == FIXTURE_PARAMS["tokenize.max_length"]
    assert info["pooling"] == "cls"


def test_toy_task_reaches_high_test_accuracy(trained_project):
    metrics = trained_project.json("metrics/frozen_head.json")
    assert metrics["n"] == 60
    assert metrics["accuracy"] >= 0.9
    assert metrics["roc_auc"] >= 0.95
    assert set(metrics) == {"n", "accuracy", "f1_macro", "roc_auc", "validation_accuracy"}  # the headline only
    details = trained_project.json("metrics/frozen_head/test.json")
    assert set(details) == {"n", "accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"}
    assert all(details[key] == metrics[key] for key in ("n", "accuracy", "f1_macro", "roc_auc"))

    predictions = pd.read_csv(trained_project.path / "metrics/frozen_head/predictions.csv")
    wrong = pd.read_csv(trained_project.path / "metrics/frozen_head/misclassified.csv")
    assert len(predictions) == metrics["n"]
    assert (predictions["actual"] == predictions["predicted"]).mean() == pytest.approx(metrics["accuracy"], abs=5e-7)
    assert len(wrong) == (predictions["actual"] != predictions["predicted"]).sum()


def test_baseline_reports_like_the_frozen_head_and_learns_the_toy_task(trained_project):
    baseline = trained_project.json("metrics/baseline.json")
    assert set(baseline) == set(trained_project.json("metrics/frozen_head.json"))
    assert baseline["n"] == 60
    assert baseline["accuracy"] >= 0.9

    table = pd.read_csv(trained_project.path / "metrics/baseline/validation.csv")
    params = yaml.safe_load((trained_project.path / "params.yaml").read_text(encoding="utf-8"))
    assert table["C"].tolist() == sorted(params["baseline"]["c_grid"])
    chosen = table.loc[table["chosen"], "validation_accuracy"].tolist()
    assert chosen == [table["validation_accuracy"].max()] == [baseline["validation_accuracy"]]


def test_second_repro_does_nothing(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "again")
    assert project.repro() == []
    assert "up to date" in project.dvc("status").stdout


def test_changing_train_params_reruns_only_train_and_evaluate(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "batch")
    project.set_params({"train.batch_size": 16})
    assert "train.batch_size" in project.dvc("params", "diff").stdout
    assert project.repro() == ["train", "evaluate"]


def test_changing_baseline_params_reruns_only_baseline_and_label_issues(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "baseline")
    project.set_params({"baseline.ngram_range": [1, 2]})
    assert "baseline.ngram_range" in project.dvc("params", "diff").stdout
    assert project.repro() == ["baseline", "label_issues"]  # label_issues' TF-IDF is the baseline's


def test_changing_max_length_reruns_tokenize_and_makes_embed_stale_but_not_fetch_or_clean(trained_project, tmp_path):
    """Up to tokenize only: that embed, then train and evaluate, re-run after a changed
    data/features is what the kill test in test_faults.py sees."""
    project = trained_project.copy(tmp_path / "max_length")
    project.set_params({"tokenize.max_length": 32})
    assert "tokenize.max_length" in project.dvc("params", "diff").stdout
    assert ran_stages(project.dvc("repro", "tokenize").stdout) == ["tokenize"]
    assert project.json("metrics/data/tokenize.json")["max_length"] == 32
    status = project.dvc("status").stdout
    assert "embed:" in status and "data/tokens" in status.split("embed:")[1]
    assert "fetch:" not in status and "clean:" not in status


def test_embed_keeps_the_states_entering_the_finetuned_layers_for_real_tokens_only(trained_project):
    tokens = load_file(trained_project.path / "data/tokens/train.safetensors")
    states = load_file(trained_project.path / "data/states/train.safetensors")
    assert states["states"].shape == (int(tokens["lengths"].sum()), 128)  # ragged: no padding stored
    assert states["states"].dtype == torch.float16
    assert (states["lengths"] == tokens["lengths"]).all()
    info = trained_project.json("data/states/states.json")
    assert (info["layers"], info["first_trained_layer"]) == (FIXTURE_PARAMS["finetune.layers"], 1)


def test_finetune_keeps_the_best_epoch_and_writes_a_self_contained_model(trained_project):
    training = trained_project.json("metrics/finetuned/training.json")
    history = read_history("finetuned", trained_project.path)
    assert set(history.columns) == {"epoch", "train_loss", "train_accuracy", "validation_loss", "validation_accuracy"}
    best = history.loc[history["epoch"] == training["best_epoch"]].iloc[0]
    assert best["validation_accuracy"] == history["validation_accuracy"].max()
    assert trained_project.json("metrics/finetuned.json")["validation_accuracy"] == round(
        best["validation_accuracy"], 6
    )
    assert trained_project.json("metrics/finetuned.json")["accuracy"] >= 0.9

    info = trained_project.json("models/finetuned/model.json")
    assert (info["kind"], info["model"], info["max_length"]) == (
        "finetuned",
        ".",
        FIXTURE_PARAMS["tokenize.max_length"],
    )
    # the top layer moved away from the starting weights, the one below did not
    tuned = load_file(trained_project.path / "models/finetuned/model.safetensors")
    original = load_file(Path(trained_project.json("data/tokens/tokenization.json")["model"]) / "model.safetensors")
    top, below = "encoder.layer.1.output.dense.weight", "encoder.layer.0.output.dense.weight"
    assert not torch.equal(tuned[f"bert.{top}"], original[top])
    assert torch.equal(tuned[f"bert.{below}"], original[below])


def test_changing_a_finetune_training_param_reruns_only_finetune(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "lr")
    project.set_params({"finetune.lr": 0.0005})
    assert "finetune.lr" in project.dvc("params", "diff").stdout
    assert project.repro() == ["finetune"]


def test_same_params_and_seed_give_identical_head_and_metrics(trained_project, tmp_path, monkeypatch):
    """train and evaluate again on the cached features: byte-identical outputs, so DVC sees nothing changed."""
    project = trained_project.copy(tmp_path / "again")
    outputs = [
        "models/frozen_head/head.pt",
        "metrics/frozen_head.json",
        "metrics/frozen_head/live/plots/metrics/train_loss.tsv",
    ]
    before = {path: (project.path / path).read_bytes() for path in outputs}
    for path in outputs:
        (project.path / path).unlink()
    monkeypatch.chdir(project.path)
    try:
        train.main()
        evaluate.main()
    finally:
        torch.use_deterministic_algorithms(False)  # train.main() turns it on for the whole process
    assert {path: (project.path / path).read_bytes() for path in outputs} == before
    assert "up to date" in project.dvc("status").stdout
