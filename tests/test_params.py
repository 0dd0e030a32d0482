"""params.yaml is checked once, against one schema, before any stage works."""

import re

import pytest

from stages import fetch
from zh_sentiment.errors import PipelineError, run
from zh_sentiment.params import load_params
from zh_sentiment.sandbox import ROOT, edit_params, git, pristine_commit, pristine_params


def write_params(tmp_path, change) -> object:
    """The pristine params.yaml, changed in place by `change(params)`, in tmp_path."""
    params = pristine_params()
    change(params)
    path = tmp_path / "params.yaml"
    edit_params(path, {}, base=params)
    return path


def error_for(tmp_path, change) -> str:
    with pytest.raises(PipelineError) as caught:
        load_params(write_params(tmp_path, change))
    return str(caught.value)


def test_the_shipped_params_are_valid(tmp_path):
    params = load_params(write_params(tmp_path, lambda p: None))
    assert params.data.dataset == "lansinuote/ChnSentiCorp"
    assert params.model.name == "bert-base-chinese"


def test_a_misspelt_key_is_named_with_the_closest_allowed_key(tmp_path):
    message = error_for(tmp_path, lambda p: p["tokenize"].update(max_lenght=p["tokenize"].pop("max_length")))
    assert "tokenize.max_lenght: unknown key; did you mean 'max_length'?" in message
    assert "tokenize.max_length: missing" in message


def test_a_number_written_as_text_is_refused(tmp_path):
    message = error_for(tmp_path, lambda p: p["tokenize"].update(max_length="128"))
    assert "tokenize.max_length = '128'" in message
    assert "valid integer" in message


@pytest.mark.parametrize(("text", "value"), [("2e-05", 2e-05), ("1e-3", 0.001), ("0.5", 0.5), ("+3", 3.0)])
def test_a_float_written_as_the_text_of_a_number_is_that_number(tmp_path, text, value):
    """`dvc exp run -S finetune.lr=0.00002` writes 2e-05, which PyYAML reads as the string "2e-05"."""
    params = load_params(write_params(tmp_path, lambda p: (p["finetune"].update(lr=text), p["train"].update(lr=text))))
    assert params.finetune.lr == params.train.lr == value


@pytest.mark.parametrize("text", ["fast", "nan", "inf", "1_000", "0x10", ""])
def test_other_text_for_a_float_is_refused(tmp_path, text):
    message = error_for(tmp_path, lambda p: p["finetune"].update(lr=text))
    assert f"finetune.lr = {text!r}: Input should be a valid number" in message


def test_a_batch_smaller_than_the_processes_is_refused(tmp_path):
    """Each process takes every processes-th review of a batch: with fewer reviews, some take none."""
    message = error_for(tmp_path, lambda p: p["finetune"].update(batch_size=1, processes=2))
    assert "finetune: finetune.batch_size (1) is smaller than finetune.processes (2)" in message
    params = load_params(write_params(tmp_path, lambda p: p["finetune"].update(batch_size=2, processes=2)))
    assert params.finetune.batch_size == params.finetune.processes == 2


def test_the_params_file_names_the_module_that_checks_it():
    header = git("show", f"{pristine_commit()}:params.yaml", cwd=ROOT).splitlines()[0]
    named = re.search(r"checked by (\S+\.py)", header).group(1)
    assert (ROOT / named).is_file() and named == "zh_sentiment/params.py"


@pytest.mark.parametrize(
    ("section", "key", "value", "allowed"),
    [
        ("train", "batch_size", 0, "greater than 0"),
        ("train", "lr", -1, "greater than 0"),
        ("data", "validation_ratio", 1.5, "less than 1"),
        ("tokenize", "max_length", 2, "greater than or equal to 3"),
        ("embed", "pooling", "max", "'cls' or 'mean'"),
        ("embed", "precision", "int4", "'auto', 'fp32', 'bf16', 'fp16' or 'int8'"),
        ("embed", "device", "gpu", "auto|cpu|mps|cuda"),
        ("data", "encoding", "klingon", "codec name"),
        ("clean", "label_map", {"neg": 0, "pos": 2}, "0..k-1"),
    ],
)
def test_an_impossible_value_is_named_with_what_is_allowed(tmp_path, section, key, value, allowed):
    message = error_for(tmp_path, lambda p: p[section].update({key: value}))
    assert f"{section}.{key} = {value!r}" in message
    assert allowed in message


def test_every_problem_is_reported_at_once(tmp_path):
    def break_three(params):
        params["train"]["epochs"] = 0
        params["embed"]["batch_size"] = -4
        params["extra"] = 1

    message = error_for(tmp_path, break_three)
    assert "3 problem(s)" in message
    assert "train.epochs" in message and "embed.batch_size" in message and "extra: unknown key" in message


def test_yaml_int_label_map_keys_match_csv_text_labels(tmp_path):
    params = load_params(write_params(tmp_path, lambda p: p["clean"].update(label_map={1: 0, 2: 1})))
    assert params.clean.label_map == {"1": 0, "2": 1}


def test_a_stage_stops_on_bad_params_before_doing_any_work(tmp_path, monkeypatch, capsys):
    write_params(tmp_path, lambda p: p["train"].update(batch_size=0))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        run(fetch.main)  # what `python -m stages.fetch` runs
    stderr = capsys.readouterr().err
    assert exit.value.code == 1
    assert stderr.startswith("error: params.yaml has 1 problem(s)")
    assert "train.batch_size = 0" in stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "data/raw").exists()
