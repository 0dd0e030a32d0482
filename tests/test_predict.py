"""Classifying new reviews with the trained model, from the command line and from files.

zh_sentiment.cli.main runs in this process (what `zh-sentiment predict` runs, less the start-up
of Python); one test runs the real command in a subprocess."""

import io
import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import copy_tree
from zh_sentiment import cli
from zh_sentiment.baseline import load_baseline
from zh_sentiment.errors import PipelineError
from zh_sentiment.inference import MODEL_NAMES, load_model
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
    copy_tree(trained_project.path / "models/finetuned", tmp_path / "my-model")
    result = predict(tmp_path, "--model-dir", "my-model", POSITIVE_REVIEW)
    assert not (tmp_path / "params.yaml").exists()
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("positive\t")


def test_no_trained_model_is_a_clear_error(tmp_path, predict):
    result = predict(tmp_path, POSITIVE_REVIEW)
    assert result.returncode == 1
    assert "no trained model in models/ (baseline, frozen_head, finetuned)" in result.stderr
    assert "dvc repro" in result.stderr


# Which model


def set_validation_accuracy(project, accuracies: dict) -> None:
    for kind, accuracy in accuracies.items():
        path = project.path / "models" / kind / "model.json"
        info = json.loads(path.read_text(encoding="utf-8"))
        info["validation"]["accuracy"] = accuracy
        path.unlink()  # DVC's outputs are read-only hard links into its cache: replace, never edit in place
        path.write_text(json.dumps(info), encoding="utf-8")


@pytest.mark.parametrize("best", ["baseline", "frozen_head", "finetuned"])
def test_the_default_model_is_the_best_by_validation_accuracy_never_by_test(trained_project, tmp_path, predict, best):
    project = trained_project.copy(tmp_path / "project")
    set_validation_accuracy(project, {kind: 0.9 if kind == best else 0.8 for kind in MODEL_NAMES})
    info = project.path / "models" / "baseline" / "model.json"  # a test score that must not count
    raw = json.loads(info.read_text(encoding="utf-8"))
    raw["test"]["accuracy"] = 1.0 if best != "baseline" else 0.0
    info.unlink()
    info.write_text(json.dumps(raw), encoding="utf-8")
    result = predict(project.path, POSITIVE_REVIEW)
    assert result.returncode == 0, result.stderr
    assert f"predict: model models/{best} ({best}): the best validation accuracy" in result.stderr
    assert f"{best} 0.9000" in result.stderr


def test_a_tie_goes_to_the_cheaper_model_and_model_picks_any(trained_project, tmp_path, predict):
    project = trained_project.copy(tmp_path / "project")
    set_validation_accuracy(project, {"baseline": 0.9, "frozen_head": 0.9, "finetuned": 0.9})
    assert "model models/baseline (baseline)" in predict(project.path, POSITIVE_REVIEW).stderr
    result = predict(project.path, "--model", "finetuned", POSITIVE_REVIEW)
    assert result.returncode == 0 and "model models/finetuned (finetuned): chosen with --model" in result.stderr
    assert result.stdout.startswith("positive\t")


def test_the_baseline_model_loads_without_pickle_and_refuses_foreign_types(trained_project, tmp_path):
    import skops.io

    folder = copy_tree(trained_project.path / "models/baseline", tmp_path / "baseline")
    assert type(load_baseline(folder)).__name__ == "Pipeline"
    skops.io.dump({"model": Path("anything")}, folder / "model.skops")  # a type skops does not trust
    with pytest.raises(PipelineError, match="holds types this project does not load"):
        load_baseline(folder)


def test_pipeline_on_the_finetuned_folder_gives_predicts_probabilities(trained_project, tmp_path, predict):
    from transformers import pipeline

    test = trained_project.path / "data/clean/test.csv"
    result = predict(
        trained_project.path, "--model", "finetuned", "--input", str(test), "--output", str(tmp_path / "p.csv")
    )
    assert result.returncode == 0, result.stderr
    ours = pd.read_csv(tmp_path / "p.csv")[["probability_negative", "probability_positive"]].to_numpy()
    texts = pd.read_csv(test, keep_default_na=False)["text"].tolist()
    classify = pipeline("text-classification", model=str(trained_project.path / "models/finetuned"), top_k=None)
    theirs = [{s["label"]: s["score"] for s in scores} for scores in classify(texts, truncation=True, batch_size=16)]
    theirs = np.array([[row["negative"], row["positive"]] for row in theirs])
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


# Empty, truncated and unknown reviews


def test_empty_reviews_are_skipped_and_counted_the_same_from_stdin_arguments_and_files(
    trained_project, tmp_path, predict
):
    stdin = predict(trained_project.path, "-", stdin=f"{NEGATIVE_REVIEW}\n\n{POSITIVE_REVIEW}\n  \n")
    assert stdin.returncode == 0 and len(stdin.stdout.splitlines()) == 2
    assert "predict: 2 empty review(s) skipped (line 2, 4)." in stdin.stderr
    arguments = predict(trained_project.path, POSITIVE_REVIEW, " ")
    assert arguments.returncode == 0 and len(arguments.stdout.splitlines()) == 1
    assert "predict: 1 empty review(s) skipped (review 2)." in arguments.stderr

    pd.DataFrame({"text": [POSITIVE_REVIEW, " ", NEGATIVE_REVIEW, None]}).to_csv(tmp_path / "in.csv", index=False)
    file = predict(trained_project.path, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"))
    assert file.returncode == 0, file.stderr
    assert "predict: 2 empty review(s) skipped (row 2, 4)." in file.stderr
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert out["predicted"].tolist() == ["positive", "", "negative", ""]
    assert out["notes"].tolist() == ["", "empty review", "", "empty review"]
    only_empty = predict(trained_project.path, " ", "")
    assert only_empty.returncode == 1 and "no reviews to classify" in only_empty.stderr


def test_unknown_and_truncated_reviews_are_noted_per_review_and_summed_up(trained_project, tmp_path, predict):
    long_review = POSITIVE_REVIEW * 300  # 5,400 characters; max_length is 64 tokens
    result = predict(trained_project.path, "--model", "finetuned", "😀😀😀", long_review, POSITIVE_REVIEW)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith("\t[all_unknown]") and lines[1].endswith("\t[truncated]") and "[" not in lines[2]
    assert "1 review(s) made only of characters the model does not know" in result.stderr
    assert "1 review(s) truncated to the model's max_length (review 2)" in result.stderr
    pd.DataFrame({"text": ["😀😀😀", long_review]}).to_csv(tmp_path / "in.csv", index=False)
    args = ["--model", "finetuned", "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv")]
    assert predict(trained_project.path, *args).returncode == 0
    notes = pd.read_csv(tmp_path / "out.csv")["notes"].tolist()
    assert "knows none of this review's characters" in notes[0]
    assert "long review (5,400 characters): only its first 62 tokens were read" in notes[1]


# Files: never destroyed, and scored when labelled


def test_output_equal_to_input_is_refused_and_the_input_is_untouched(trained_project, tmp_path, predict):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": [POSITIVE_REVIEW]}).to_csv(path, index=False)
    before = path.read_bytes()
    result = predict(trained_project.path, "--input", str(path), "--output", str(tmp_path / "." / "reviews.csv"))
    assert result.returncode == 1 and "is the --input file: predict never overwrites its input" in result.stderr
    assert path.read_bytes() == before


def test_input_columns_that_output_would_overwrite_are_refused(trained_project, tmp_path, predict):
    path = tmp_path / "labelled.csv"
    pd.DataFrame({"text": [POSITIVE_REVIEW], "predicted": ["human label"]}).to_csv(path, index=False)
    result = predict(trained_project.path, "--input", str(path), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 1
    assert "already has the column(s) predicted, which --output would overwrite" in result.stderr
    assert not (tmp_path / "out.csv").exists()


def test_an_input_named_as_the_output_plus_tmp_is_untouched(trained_project, tmp_path, predict):
    """The output is written under a name of its own, never `<output>.tmp`, which may be the input."""
    source = tmp_path / "r.csv.tmp"
    pd.DataFrame({"text": [POSITIVE_REVIEW, NEGATIVE_REVIEW]}).to_csv(source, index=False)
    before = source.read_bytes()
    result = predict(trained_project.path, "--input", str(source), "--output", str(tmp_path / "r.csv"))
    assert result.returncode == 0, result.stderr
    assert source.read_bytes() == before
    assert pd.read_csv(tmp_path / "r.csv")["predicted"].tolist() == ["positive", "negative"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv", "r.csv.tmp"]


def folder_contents(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in folder.iterdir()}


def test_a_users_out_csv_tmp_is_untouched_when_out_csv_is_written(trained_project, tmp_path, predict):
    pd.DataFrame({"text": [POSITIVE_REVIEW]}).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "out.csv.tmp").write_text("my notes", encoding="utf-8")
    result = predict(trained_project.path, "--input", str(tmp_path / "in.csv"), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.csv.tmp").read_text(encoding="utf-8") == "my notes"
    assert pd.read_csv(tmp_path / "out.csv")["predicted"].tolist() == ["positive"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "out.csv", "out.csv.tmp"]


def limit_file_size(size: int):
    """For preexec_fn: writing past `size` bytes fails with EFBIG (Python ignores SIGXFSZ, which would kill)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def test_a_write_that_fails_midway_leaves_every_file_as_it_was(trained_project, tmp_path):
    """The real command, under a file size limit that the predictions outgrow: the write of --output fails
    midway. The user's out.csv.tmp and the previous out.csv are as they were, and nothing is left behind."""
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": [POSITIVE_REVIEW, NEGATIVE_REVIEW] * 50}).to_csv(source, index=False)
    (tmp_path / "out.csv").write_text("the previous predictions", encoding="utf-8")
    (tmp_path / "out.csv.tmp").write_text("my notes", encoding="utf-8")
    before = folder_contents(tmp_path)
    args = ["--model-dir", str(trained_project.path / "models/baseline"), "--input", "in.csv", "--output", "out.csv"]
    result = subprocess.run(
        ["python", "-m", "zh_sentiment", "predict", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=python_first_env() | {"PYTHONPATH": str(ROOT)},
        preexec_fn=limit_file_size(source.stat().st_size),  # the output holds the input's cells and more
    )
    assert result.returncode == 1
    assert "error: --output out.csv: cannot write it ([Errno 27] File too large)." in result.stderr
    assert folder_contents(tmp_path) == before


@pytest.mark.parametrize(
    ("name", "lines", "columns", "reason"),
    [  # pandas would read the first review's extra leading field as an index, and its text from the next field
        ("in.csv", ["text,label", f"{POSITIVE_REVIEW},好,1", f"{NEGATIVE_REVIEW},0"], [], "line 2, saw 3"),
        ("in.tsv", ["text\tlabel", f"{POSITIVE_REVIEW}\t好\t1", f"{NEGATIVE_REVIEW}\t0"], [], "line 2, saw 3"),
        ("in.csv", [f"1,{POSITIVE_REVIEW}", f"0,{NEGATIVE_REVIEW},好"], ["--columns", "label,text"], "line 2, saw 3"),
        ("in.tsv", [f"1\t{POSITIVE_REVIEW}\t好", f"0\t{NEGATIVE_REVIEW}"], ["--columns", "label,text"], "line 1 has 3"),
    ],
)
def test_a_row_with_more_fields_than_the_header_is_one_error_naming_file_and_line(
    trained_project, tmp_path, predict, name, lines, columns, reason
):
    source = tmp_path / name
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = predict(trained_project.path, "--input", str(source), *columns, "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {source}: ") and reason in result.stderr
    assert len(result.stderr.splitlines()) == 1  # no traceback, nor a hint to get one
    assert [p.name for p in tmp_path.iterdir()] == [name]


@pytest.mark.parametrize(
    ("lines", "columns", "where"),
    [
        (["text,text", f"{NEGATIVE_REVIEW},x"], [], "the header row"),
        ([f"{NEGATIVE_REVIEW},x"], ["--columns", "text,text"], "--columns"),
    ],
    ids=["header", "--columns"],
)
def test_two_columns_of_one_name_are_one_error_naming_it(trained_project, tmp_path, predict, lines, columns, where):
    """Which of the two holds the reviews would be a guess (the header's second one was renamed text.1)."""
    source = tmp_path / "in.csv"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = predict(trained_project.path, "--input", str(source), *columns)
    assert result.returncode == 1
    assert where in result.stderr and "'text' more than once" in result.stderr
    assert len(result.stderr.splitlines()) == 1  # no traceback


def test_a_row_with_fewer_fields_than_the_header_has_empty_cells(trained_project, tmp_path, predict):
    """As a blank line is a row of empty cells: an empty review is skipped, an empty label is named."""
    source = tmp_path / "in.csv"
    source.write_text(f"id,text,label\n1\n2,{NEGATIVE_REVIEW}\n3,{NEGATIVE_REVIEW},0\n", encoding="utf-8")
    result = predict(trained_project.path, "--input", str(source), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 0, result.stderr
    assert "predict: 1 empty review(s) skipped (row 1)." in result.stderr
    assert pd.read_csv(tmp_path / "out.csv")["predicted"].tolist() == [np.nan, "negative", "negative"]
    result = predict(trained_project.path, "--input", str(source), "--label-column", "label")
    assert result.returncode == 1
    assert "2 label(s) the model does not have (row 1: (empty), row 2: (empty))" in result.stderr


def test_a_labelled_file_is_scored_with_accuracy_f1_and_confusion(trained_project, predict):
    test = trained_project.path / "data/clean/test.csv"  # labels as ids 0/1
    result = predict(trained_project.path, "--model", "finetuned", "--input", str(test), "--label-column", "label")
    assert result.returncode == 0, result.stderr
    metrics = trained_project.json("metrics/finetuned.json")  # what the finetune stage measured on the same file
    assert f"scored 60 labelled reviews: accuracy {metrics['accuracy']:.4f}, f1_macro {metrics['f1_macro']:.4f}" in (
        result.stdout
    )
    assert "predicted negative" in result.stdout and "actual positive" in result.stdout


def test_labels_the_model_does_not_have_are_named(trained_project, tmp_path, predict):
    pd.DataFrame({"text": [POSITIVE_REVIEW, NEGATIVE_REVIEW], "y": ["positive", "meh"]}).to_csv(
        tmp_path / "in.csv", index=False
    )
    result = predict(trained_project.path, "--input", str(tmp_path / "in.csv"), "--label-column", "y")
    assert result.returncode == 1
    assert "1 label(s) the model does not have (row 2: 'meh')" in result.stderr


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


def test_each_model_folder_carries_its_validation_and_test_metrics(trained_project):
    """What /info and the default choice read: validation from the folder, test where the stage measured it
    (the frozen head's in metrics/frozen_head.json, written by evaluate)."""
    for kind in MODEL_NAMES:
        classifier = load_model(trained_project.path / "models" / kind)
        headline = trained_project.json(f"metrics/{kind}.json")
        assert classifier.info["validation"]["accuracy"] == pytest.approx(headline["validation_accuracy"], abs=1e-6)
        assert classifier.info["test"]["accuracy"] == headline["accuracy"]
