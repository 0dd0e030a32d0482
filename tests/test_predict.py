"""Classifying new reviews with the trained model, from the command line and from files.

The command runs in-process (zh_sentiment.cli.main, as `zh-sentiment` runs it): importing torch
and transformers again in a subprocess for each test would cost seconds each.
"""

import io
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from zh_sentiment import cli

POSITIVE_REVIEW = "前台很热情，房间干净舒服，很满意推荐"
NEGATIVE_REVIEW = "房间很脏太差，前台冷漠，失望退货"


@pytest.fixture
def predict(capsys, monkeypatch):
    """Run `zh-sentiment predict ARGS` in the given folder; return its exit code, stdout and stderr."""

    def run(cwd, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
        monkeypatch.chdir(cwd)
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8"))))
        capsys.readouterr()
        try:
            cli.main(["predict", *args])
            code = 0
        except SystemExit as stopped:
            code = stopped.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_reviews_on_the_command_line_get_label_and_probability(trained_project, predict):
    result = predict(trained_project.path, POSITIVE_REVIEW, NEGATIVE_REVIEW)
    assert result.returncode == 0, result.stderr
    lines = [line.split("\t") for line in result.stdout.splitlines()]
    assert [(label, text) for label, _, text in lines] == [("positive", POSITIVE_REVIEW), ("negative", NEGATIVE_REVIEW)]
    assert all(0.5 < float(probability) <= 1 for _, probability, _ in lines)


def test_reviews_from_stdin_one_per_line(trained_project, predict):
    result = predict(trained_project.path, "-", stdin=f"{NEGATIVE_REVIEW}\n\n{POSITIVE_REVIEW}\n")
    assert result.returncode == 0, result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["negative", "positive"]


def test_a_gbk_tsv_file_gets_a_prediction_per_row(trained_project, tmp_path, predict):
    reviews = pd.DataFrame({"id": [7, 8], "review": [NEGATIVE_REVIEW, POSITIVE_REVIEW]})
    reviews.to_csv(tmp_path / "in.tsv", sep="\t", index=False, encoding="gbk")
    result = predict(
        trained_project.path,
        "--input",
        str(tmp_path / "in.tsv"),
        "--text-column",
        "review",
        "--output",
        str(tmp_path / "out.csv"),
    )
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["id"].tolist() == [7, 8]
    assert out["review"].tolist() == [NEGATIVE_REVIEW, POSITIVE_REVIEW]
    assert out["predicted"].tolist() == ["negative", "positive"]
    assert ((out["probability_negative"] + out["probability_positive"]).round(3) == 1).all()


def test_a_copied_model_folder_works_from_anywhere(trained_project, tmp_path, predict):
    """models/ carries what predict needs; params.yaml is not read."""
    shutil.copytree(trained_project.path / "models/frozen_head", tmp_path / "my-model")
    result = predict(tmp_path, "--model-dir", "my-model", POSITIVE_REVIEW)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("positive\t")


def test_no_trained_model_is_a_clear_error(tmp_path, predict):
    result = predict(tmp_path, POSITIVE_REVIEW)
    assert result.returncode == 1
    assert "no trained model in models/frozen_head/" in result.stderr and "dvc repro" in result.stderr


def test_a_row_without_text_is_named(trained_project, tmp_path, predict):
    pd.DataFrame({"text": [POSITIVE_REVIEW, " ", NEGATIVE_REVIEW, None]}).to_csv(tmp_path / "in.csv", index=False)
    result = predict(trained_project.path, "--input", str(tmp_path / "in.csv"))
    assert result.returncode == 1
    assert "2 review(s) without text" in result.stderr and ": 2, 4." in result.stderr


def test_a_missing_encoder_is_a_clear_error(trained_project, tmp_path, predict):
    shutil.copytree(trained_project.path / "models/frozen_head", tmp_path / "models")
    info = tmp_path / "models" / "model.json"
    info.write_text(info.read_text(encoding="utf-8").replace('"model": "', '"model": "/nonexistent'), encoding="utf-8")
    result = predict(trained_project.path, "--model-dir", str(tmp_path / "models"), POSITIVE_REVIEW)
    assert result.returncode == 1
    assert "model folder /nonexistent" in result.stderr and "does not exist" in result.stderr
