"""Classifying new reviews with the trained model, from the command line and from files.

zh_sentiment.cli.main runs in this process (what `zh-sentiment predict` runs, less the start-up
of Python); one test runs the real command in a subprocess."""

import io
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points

import pandas as pd
import pytest

from tests.conftest import copy_tree
from zh_sentiment import cli
from zh_sentiment.predict import parse_args
from zh_sentiment.sandbox import ROOT, python_first_env

POSITIVE_REVIEW = "前台很热情，房间干净舒服，很满意推荐"
NEGATIVE_REVIEW = "房间很脏太差，前台冷漠，失望退货"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def predict(monkeypatch, capsys):
    """predict(cwd, *args, stdin=None): `zh-sentiment predict *args` run in `cwd`, in this process."""

    def run(cwd, *args: str, stdin: str | None = None) -> Result:
        monkeypatch.chdir(cwd)
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8"))))
        capsys.readouterr()
        try:
            cli.main(["predict", *args])
            code = 0
        except SystemExit as exit:
            code = exit.code
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def test_the_command_runs_as_a_program(trained_project):
    """The one subprocess: `python -m zh_sentiment predict` from the interpreter's PATH, this checkout's code."""
    result = subprocess.run(
        ["python", "-m", "zh_sentiment", "predict", POSITIVE_REVIEW],
        cwd=trained_project.path,
        capture_output=True,
        text=True,
        env=python_first_env() | {"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("positive\t") and result.stdout.rstrip().endswith(POSITIVE_REVIEW)


def test_the_zh_sentiment_command_is_declared():
    (script,) = entry_points(group="console_scripts", name="zh-sentiment")
    assert script.value == "zh_sentiment.cli:main"


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
    args = ["--input", str(tmp_path / "in.tsv"), "--text-column", "review", "--output", str(tmp_path / "out.csv")]
    result = predict(trained_project.path, *args)
    assert result.returncode == 0, result.stderr
    out = pd.read_csv(tmp_path / "out.csv")
    assert out["id"].tolist() == [7, 8]
    assert out["review"].tolist() == [NEGATIVE_REVIEW, POSITIVE_REVIEW]
    assert out["predicted"].tolist() == ["negative", "positive"]
    assert ((out["probability_negative"] + out["probability_positive"]).round(3) == 1).all()


def test_a_copied_model_folder_works_from_anywhere(trained_project, tmp_path, predict):
    """models/ carries what predict needs; params.yaml is not read."""
    copy_tree(trained_project.path / "models/frozen_head", tmp_path / "my-model")
    result = predict(tmp_path, "--model-dir", "my-model", POSITIVE_REVIEW)
    assert not (tmp_path / "params.yaml").exists()
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
    copy_tree(trained_project.path / "models/frozen_head", tmp_path / "models")
    info = tmp_path / "models" / "model.json"
    info.write_text(info.read_text(encoding="utf-8").replace('"model": "', '"model": "/nonexistent'), encoding="utf-8")
    result = predict(trained_project.path, "--model-dir", str(tmp_path / "models"), POSITIVE_REVIEW)
    assert result.returncode == 1
    assert "model folder /nonexistent" in result.stderr and "does not exist" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "--batch-size: '0': Input should be greater than 0"),
        (["--batch-size", "x"], "--batch-size: 'x': expected a whole number"),
        (["--device", "gpu"], "--device: 'gpu': String should match pattern"),
        (["--precision", "int4"], "--precision: 'int4': Input should be 'auto', 'fp32', 'bf16', 'fp16' or 'int8'"),
    ],
)
def test_options_are_checked_as_the_embed_params_are(tmp_path, predict, args, message):
    result = predict(tmp_path, *args, POSITIVE_REVIEW)
    assert result.returncode == 2
    assert message in result.stderr


def test_valid_options_pass_the_schema():
    args = parse_args(["--batch-size", "3", "--device", "cuda:1", "--precision", "bf16", POSITIVE_REVIEW])
    assert (args.batch_size, args.device, args.precision) == (3, "cuda:1", "bf16")
