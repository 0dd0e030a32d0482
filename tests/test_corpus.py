"""Scoring a corpus: a folder or glob of CSV/TSV/JSONL/Parquet files into a folder of shards, resumable.

The model is a tiny BERT with a fresh classification head, saved as the finetune stage saves it (no
`dvc repro`: what is under test is reading, scoring, writing and resuming, and the scores are checked against
the model's own Classifier.score)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from bench.common import finetuned_folder
from tests.fixtures import reviews, write_tiny_bert
from zh_sentiment import cli
from zh_sentiment.inference import load_model
from zh_sentiment.sandbox import ROOT, python_first_env

LABELS = ["negative", "positive"]


def write_model(folder: Path) -> Path:
    """A models/finetuned-style folder: a tiny BERT and a fresh head, model.json with its fingerprint."""
    return finetuned_folder(write_tiny_bert(folder.parent / "tiny-bert"), folder, LABELS, max_length=64)


def write_inputs(folder: Path, rows: int = 300) -> pd.DataFrame:
    """The same reviews split over a CSV, a JSONL and a Parquet file (ids r0, r1, ...); a few are empty."""
    table = reviews(rows, seed=3)[["text"]]
    table.insert(0, "id", [f"r{i}" for i in range(rows)])
    table.loc[[5, rows - 1], "text"] = ""
    folder.mkdir(parents=True)
    third = rows // 3
    table.iloc[:third].to_csv(folder / "a.csv", index=False)
    table.iloc[third : 2 * third].to_json(folder / "b.jsonl", orient="records", lines=True, force_ascii=False)
    table.iloc[2 * third :].to_parquet(folder / "c.parquet", index=False)
    return table


def run_predict(capsys, *args: str) -> tuple[int, str]:
    """`zh-sentiment predict *args` in this process: its exit code and stderr."""
    capsys.readouterr()
    try:
        cli.main(["predict", *map(str, args)])
        code = 0
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err


def read_output(folder: Path) -> pd.DataFrame:
    """The output folder as any Parquet reader sees it (names starting with . or _ are not data)."""
    return pd.read_parquet(folder).sort_values(["id"] if "id" in pd.read_parquet(folder).columns else ["file", "row"])


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_model(tmp_path_factory.mktemp("corpus") / "model")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    folder = tmp_path_factory.mktemp("corpus") / "reviews"
    return folder, write_inputs(folder)


@pytest.fixture(scope="module")
def expected(model, corpus) -> pd.DataFrame:
    """Each review's probabilities from the model's own scorer, by id."""
    table = corpus[1]
    logits, _ = load_model(model).score(table["text"].tolist())
    probabilities = softmax(logits, axis=1)
    return pd.DataFrame({"id": table["id"], "negative": probabilities[:, 0], "positive": probabilities[:, 1]})


def test_a_folder_of_csv_jsonl_and_parquet_gives_every_row_once_with_the_models_scores(
    model, corpus, expected, tmp_path, capsys
):
    folder, table = corpus
    out = tmp_path / "scored"
    code, err = run_predict(
        capsys, "--input", folder, "--output", out, "--model-dir", model, "--id-column", "id", "--rows-per-shard", 40
    )
    assert code == 0, err
    assert "300/300" in err and "row/s" in err  # progress: rows done, rate (and the time left on a terminal)
    assert sorted(p.name for p in out.iterdir())[:3] == [
        "_manifest.json",
        "a.csv.part-00000.parquet",
        "a.csv.part-00001.parquet",
    ]
    scored = read_output(out).merge(expected, on="id")
    assert len(scored) == len(table) and scored["id"].is_unique
    kept = scored["notes"] != "empty review: there is no text to classify"
    assert (~kept).sum() == 2 and (scored.loc[~kept, "predicted"] == "").all()
    assert scored.loc[~kept, "probability"].isna().all()
    np.testing.assert_allclose(scored.loc[kept, "probability_positive"], scored.loc[kept, "positive"], atol=1e-5)
    best = np.where(scored["positive"] > scored["negative"], "positive", "negative")
    assert (scored.loc[kept, "predicted"] == best[kept]).all()


def test_a_glob_picks_its_files_and_without_id_column_rows_are_named_by_file_and_row(model, corpus, tmp_path, capsys):
    folder, table = corpus
    out = tmp_path / "scored"
    code, err = run_predict(
        capsys, "--input", f"{folder}/*.jsonl", "--output", out, "--model-dir", model, "--output-format", "csv"
    )
    assert code == 0, err
    (shard,) = out.glob("*.csv")
    scored = pd.read_csv(shard)
    assert list(scored.columns[:3]) == ["file", "row", "predicted"]
    assert set(scored["file"]) == {"b.jsonl"} and scored["row"].tolist() == list(range(1, 101))


def test_killed_midway_and_run_again_every_id_is_written_exactly_once(model, corpus, tmp_path, capsys):
    """SIGKILL to the command (2 worker processes), then the same command: it scores only what is missing."""
    folder, table = corpus
    out = tmp_path / "scored"
    command = ["--input", folder, "--output", out, "--model-dir", model, "--id-column", "id", "--rows-per-shard", 20]
    process = subprocess.Popen(
        [sys.executable, "-m", "zh_sentiment", "predict", *map(str, command), "--processes", "2"],
        env=python_first_env() | {"PYTHONPATH": str(ROOT)},
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(out.glob("*.parquet")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    workers = children(process.pid)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert workers, "the two worker processes had started"
    finished = len(list(out.glob("*.parquet")))
    assert 0 < finished < 15, "killed midway"
    wait_until_gone(workers)

    code, err = run_predict(capsys, *command)
    assert code == 0, err
    assert f"{finished} done already" in err
    scored = read_output(out)
    assert sorted(scored["id"]) == sorted(table["id"]) and scored["id"].is_unique
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_until_gone(pids: list[int], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists() and "Z" not in state(pid)]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes {alive} outlived the command that started them")


def state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"


def test_a_damaged_input_is_named_and_the_other_shards_are_kept(model, tmp_path, capsys):
    folder = tmp_path / "reviews"
    table = write_inputs(folder, rows=60)
    data = (folder / "c.parquet").read_bytes()
    (folder / "c.parquet").write_bytes(data[: len(data) // 2])  # a copy cut short
    with (folder / "b.jsonl").open("a", encoding="utf-8") as file:
        file.write('{"id": "x", "text": "很好"\n')  # a line without its closing brace
    out = tmp_path / "scored"
    command = ["--input", folder, "--output", out, "--model-dir", model, "--id-column", "id"]
    code, err = run_predict(capsys, *command)
    assert code == 1
    assert f"{folder / 'c.parquet'}: cannot be read" in err
    assert f"{folder / 'b.jsonl'}, line 21: not JSON" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.glob("*.parquet")) == ["a.csv.part-00000.parquet"]

    table.iloc[40:].to_parquet(folder / "c.parquet", index=False)  # mended
    code, err = run_predict(capsys, *command)
    assert code == 1 and "b.jsonl" in err and "c.parquet" not in err
    assert "1 done already" in err
    assert sorted(read_output(out)["id"]) == sorted(table["id"].iloc[list(range(20)) + list(range(40, 60))])


def test_a_rerun_with_other_settings_is_refused_rather_than_mixed(model, corpus, tmp_path, capsys):
    folder, _ = corpus
    out = tmp_path / "scored"
    code, err = run_predict(
        capsys, "--input", f"{folder}/a.csv", "--output", out, "--model-dir", model, "--rows-per-shard", 50
    )
    assert code == 0, err
    code, err = run_predict(
        capsys, "--input", f"{folder}/a.csv", "--output", out, "--model-dir", model, "--rows-per-shard", 60
    )
    assert code == 1 and "rows_per_shard differ" in err and str(out / "_manifest.json") in err
    assert json.loads((out / "_manifest.json").read_text())["settings"]["rows_per_shard"] == 50


def test_an_output_inside_the_input_folder_is_refused(model, corpus, capsys):
    folder, _ = corpus
    code, err = run_predict(capsys, "--input", folder, "--output", folder / "scored", "--model-dir", model)
    assert code == 1 and "inside --input" in err and not (folder / "scored").exists()


def test_ray_options_without_ray_and_a_missing_ray_say_what_to_do(model, corpus, tmp_path, capsys, monkeypatch):
    folder, _ = corpus
    code, err = run_predict(
        capsys, "--input", folder, "--output", tmp_path / "o", "--model-dir", model, "--actors-per-node", 2
    )
    assert code == 1 and "--actors-per-node go(es) with --ray ADDRESS" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed: `import ray` fails
    code, err = run_predict(
        capsys, "--input", folder, "--output", tmp_path / "o", "--model-dir", model, "--ray", "auto"
    )
    assert code == 1 and "pip install -r requirements-ray.txt" in err
    assert os.path.isfile(ROOT / "requirements-ray.txt")
