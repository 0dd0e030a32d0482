"""Bad input (issue 3): every way the data, the params or the model can be wrong stops with a message that
names the file, row, column or param, says what is wrong and what to do; messy but usable input just works.

Stages run in-process in a temporary project root (params.yaml + data/); the command-line behaviour
(exit 1, one `error:` message, no traceback unless PIPELINE_DEBUG=1) is checked through a Project copy.
Everything is offline and tiny; the full `dvc repro` is covered by test_pipeline.py.
"""

import json
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pandas as pd
import pytest
import torch

from stages import clean, fetch
from tests.conftest import ROOT, new_project
from tests.fixtures import write_tiny_bert
from zh_sentiment import encoder, predict
from zh_sentiment.errors import PipelineError
from zh_sentiment.sandbox import edit_params, pristine_params
from zh_sentiment.tables import read_table

SPLITS = ("train", "validation", "test")
OLD_SAVE_TO_DISK = ROOT / "tests/data/chnsenticorp-datasets-2.14"

REVIEWS = {
    "train": [("房间很干净", "1"), ("服务太差", "0"), ("早餐很好", "1"), ("前台冷漠", "0")],
    "validation": [("推荐这家", "1"), ("很吵闹", "0")],
    "test": [("很舒服", "1"), ("难吃退货", "0")],
}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty project root to run stages in: they read ./params.yaml and write ./data and ./metrics."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_params(folder: Path, changes: dict) -> None:
    """The pristine params.yaml with `changes` (dotted keys such as data.dataset) in `folder`."""
    edit_params(folder / "params.yaml", changes, base=pristine_params())


def write_folder(folder: Path, reviews=REVIEWS, suffix=".csv", encoding="utf-8", header=("text", "label")) -> Path:
    """One file per split, written line by line as a user's tool would (no quoting); None is an empty cell."""
    folder.mkdir(parents=True, exist_ok=True)
    sep = "\t" if suffix == ".tsv" else ","
    for split, rows in reviews.items():
        lines = [sep.join(header)] + [sep.join("" if cell is None else cell for cell in row) for row in rows]
        (folder / f"{split}{suffix}").write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return folder


def read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")


def run_fetch(workdir: Path, changes: dict) -> dict[str, pd.DataFrame]:
    """Run fetch with `changes` to params.yaml; return data/raw/<split>.csv."""
    write_params(workdir, changes)
    fetch.main()
    return {split: read_csv(workdir / f"data/raw/{split}.csv") for split in SPLITS}


def fetch_error(workdir: Path, changes: dict) -> str:
    write_params(workdir, changes)
    with pytest.raises(PipelineError) as error:
        fetch.main()
    return str(error.value)


def rows(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(frame["text"], frame["label"]))


# Encodings


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_gbk_file_is_read_with_auto_encoding(workdir, suffix):
    source = write_folder(workdir / "source", suffix=suffix, encoding="gbk", header=("评论", "标签"))
    raw = run_fetch(workdir, {"data.dataset": str(source), "data.text_column": "评论", "data.label_column": "标签"})
    for split in SPLITS:
        assert list(raw[split].columns) == ["text", "label"]
        assert rows(raw[split]) == REVIEWS[split]


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_a_gb18030_file_is_read_with_auto_encoding(workdir, suffix):
    reviews = {**REVIEWS, "train": [*REVIEWS["train"], ("𠀀字不在GBK里", "1")]}  # U+20000 exists in GB18030 only
    source = write_folder(workdir / "source", reviews, suffix=suffix, encoding="gb18030")
    raw = run_fetch(workdir, {"data.dataset": str(source)})
    assert rows(raw["train"]) == reviews["train"]


def test_a_utf8_csv_with_bom_is_read_with_auto_encoding(workdir):
    source = write_folder(workdir / "source", encoding="utf-8-sig")
    raw = run_fetch(workdir, {"data.dataset": str(source)})
    assert list(raw["train"].columns) == ["text", "label"]  # the header is 'text', not '\ufefftext'
    assert rows(raw["train"]) == REVIEWS["train"]


def test_a_utf8_csv_with_bom_is_read_with_an_explicit_utf8_encoding(workdir):
    source = write_folder(workdir / "source", encoding="utf-8-sig")
    raw = run_fetch(workdir, {"data.dataset": str(source), "data.encoding": "utf-8"})
    assert rows(raw["train"]) == REVIEWS["train"]


def test_an_explicit_encoding_is_honoured(workdir):
    reviews = {split: [("房間很乾淨", "1"), ("服務太差", "0")] for split in SPLITS}  # traditional Chinese
    source = write_folder(workdir / "source", reviews, encoding="big5")
    assert rows(run_fetch(workdir, {"data.dataset": str(source), "data.encoding": "big5"})["test"]) == reviews["test"]


def test_a_wrong_explicit_encoding_names_the_file_and_data_encoding(workdir):
    source = write_folder(workdir / "source", encoding="gbk")
    message = fetch_error(workdir, {"data.dataset": str(source), "data.encoding": "utf-8"})
    assert message.startswith(f"{source / 'train.csv'}: not valid utf-8")
    assert "Set data.encoding to the file's encoding, or to auto" in message


# Columns and table syntax


def test_a_missing_text_column_in_a_csv_folder_lists_the_columns_found(workdir):
    source = write_folder(workdir / "source", header=("review", "label"))
    message = fetch_error(workdir, {"data.dataset": str(source)})
    assert message == (
        f"{source / 'train.csv'}: no column 'text' (from data.text_column). Columns found: 'review', 'label'. "
        "Set data.text_column to one of them."
    )


def test_a_missing_label_column_in_a_csv_folder_lists_the_columns_found(workdir):
    source = write_folder(workdir / "source", header=("text", "sentiment"))
    message = fetch_error(workdir, {"data.dataset": str(source)})
    assert "no column 'label' (from data.label_column). Columns found: 'text', 'sentiment'." in message


def test_a_missing_label_column_in_a_save_to_disk_folder_lists_the_columns_found(workdir):
    message = fetch_error(workdir, {"data.dataset": str(OLD_SAVE_TO_DISK), "data.label_column": "sentiment"})
    assert message.startswith(f"split 'train' of {OLD_SAVE_TO_DISK}: no column 'sentiment'")
    assert "Columns found: 'text', 'label'. Set data.label_column to one of them." in message


def test_a_csv_row_with_an_extra_field_is_named_by_file_and_line(workdir):
    source = write_folder(workdir / "source")
    (source / "train.csv").write_text("text,label\n房间很干净,1\n便宜,干净,1\n", encoding="utf-8")
    message = fetch_error(workdir, {"data.dataset": str(source)})
    assert message.startswith(f"{source / 'train.csv'}: cannot be read as a table (Expected 2 fields in line 3, saw 3")
    assert "double quotes" in message


def test_an_empty_split_file_is_named(workdir):
    source = write_folder(workdir / "source")
    (source / "validation.csv").write_bytes(b"")
    message = fetch_error(workdir, {"data.dataset": str(source)})
    assert message.startswith(f"{source / 'validation.csv'} is empty; it needs a header row")


# Labels (fetch, then clean)


def fetch_and_clean(workdir: Path, source: Path, changes: dict | None = None) -> None:
    run_fetch(workdir, {"data.dataset": str(source), **(changes or {})})
    clean.main()


def test_labels_outside_the_allowed_set_are_named_with_rows_and_values(workdir):
    train = [("房间很干净", "1"), ("服务太差", "0"), ("早餐很好", "2"), ("前台冷漠", "0"), ("一般", "好评")]
    source = write_folder(workdir / "source", {**REVIEWS, "train": train})
    with pytest.raises(PipelineError) as error:
        fetch_and_clean(workdir, source)
    message = str(error.value)
    assert message.startswith("data/raw/train.csv: 2 label(s) not allowed; allowed: integers 0..1")
    assert "row 3: '2'; row 5: '好评'" in message
    assert "clean.label_map" in message and "clean.label_names" in message


def test_text_labels_not_covered_by_label_map_are_named_with_rows_and_values(workdir):
    labels = {"1": "positive", "0": "negative"}
    reviews = {split: [(text, labels[label]) for text, label in split_rows] for split, split_rows in REVIEWS.items()}
    reviews["test"] = [("很舒服", "positive"), ("还行吧", "neutral"), ("难吃退货", "Negative")]
    source = write_folder(workdir / "source", reviews)
    with pytest.raises(PipelineError) as error:
        fetch_and_clean(workdir, source, {"clean.label_map": {"negative": 0, "positive": 1}})
    message = str(error.value)
    assert message.startswith("data/raw/test.csv: 2 label(s) not allowed; allowed: 'negative', 'positive'")
    assert "row 2: 'neutral'; row 3: 'Negative'" in message
    assert "add them to clean.label_map" in message


def test_text_labels_covered_by_label_map_become_ids(workdir):
    labels = {"1": "好评", "0": "差评"}
    reviews = {split: [(text, labels[label]) for text, label in split_rows] for split, split_rows in REVIEWS.items()}
    source = write_folder(workdir / "source", reviews)
    fetch_and_clean(workdir, source, {"clean.label_map": {"差评": 0, "好评": 1}, "clean.label_names": []})
    assert list(read_csv(workdir / "data/clean/train.csv")["label"]) == ["1", "0", "1", "0"]
    assert json.loads((workdir / "data/clean/labels.json").read_text(encoding="utf-8")) == {"names": ["差评", "好评"]}


# Splits that cannot be used (clean on data/raw files)


def write_raw(workdir: Path, reviews: dict) -> None:
    (workdir / "data/raw").mkdir(parents=True)
    for split, split_rows in reviews.items():
        pd.DataFrame(split_rows, columns=["text", "label"]).to_csv(workdir / f"data/raw/{split}.csv", index=False)


def test_a_split_empty_after_cleaning_stops_clean_with_the_split_and_counts_per_reason(workdir):
    write_params(workdir, {})
    write_raw(workdir, {**REVIEWS, "test": [("   ", "1"), (None, "0"), ("\u200b", "1")]})
    with pytest.raises(PipelineError) as error:
        clean.main()
    assert str(error.value).startswith(
        "split 'test' is empty after cleaning: 3 rows in; dropped: empty_text 3, duplicate 0, conflicting_label 0."
    )
    assert not (workdir / "data/clean").exists() and not (workdir / "metrics/data/clean.json").exists()


def test_a_training_split_with_a_single_class_stops_clean_with_the_counts_per_reason(workdir):
    write_params(workdir, {})
    train = [("房间很干净", "1"), ("早餐很好", "1"), ("服务太差", "0"), ("服务太差", "1")]  # the tie is dropped
    write_raw(workdir, {**REVIEWS, "train": train})
    with pytest.raises(PipelineError) as error:
        clean.main()
    message = str(error.value)
    assert message.startswith("split 'train' has a single class ('positive') after cleaning (2 rows; dropped:")
    assert "conflicting_label 2" in message and "at least two" in message


# Dirty texts


def test_missing_blank_control_and_zero_width_texts_are_cleaned_or_dropped_and_counted(workdir):
    train = [
        *REVIEWS["train"],
        (None, "1"),  # empty cell
        ("  \t ", "0"),  # whitespace only
        ("  位置\u200b很好 ,  满意 ", "1"),  # zero-width space, extra whitespace
        ("早餐\x07太差", "0"),  # control character
        ("\u200b", "1"),  # nothing but a zero-width space
    ]
    source = workdir / "source"
    write_folder(source)
    pd.DataFrame(train, columns=["text", "label"]).to_csv(source / "train.csv", index=False)  # quotes the comma
    fetch_and_clean(workdir, source)

    texts = list(read_csv(workdir / "data/clean/train.csv")["text"])
    assert texts == [text for text, _ in REVIEWS["train"]] + ["位置很好 , 满意", "早餐太差"]
    report = json.loads((workdir / "metrics/data/clean.json").read_text(encoding="utf-8"))["train"]
    assert report["rows_in"] == 9 and report["rows_out"] == 6
    assert report["dropped"]["empty_text"] == 3
    assert report["fixed"] == {"whitespace_normalized": 1, "control_chars_removed": 1, "zero_width_removed": 1}


def test_a_blank_line_in_a_csv_is_a_row_without_text_dropped_and_counted(workdir):
    source = write_folder(workdir / "source")
    (source / "train.csv").write_text("text,label\n房间很干净,1\n\n服务太差,0\n早餐很好,1\n", encoding="utf-8")
    fetch_and_clean(workdir, source)
    assert len(read_csv(workdir / "data/raw/train.csv")) == 4
    report = json.loads((workdir / "metrics/data/clean.json").read_text(encoding="utf-8"))["train"]
    assert (report["rows_out"], report["dropped"]["empty_text"]) == (3, 1)


def test_rows_after_a_blank_line_keep_their_numbers_in_errors(workdir):
    source = write_folder(workdir / "source")
    (source / "train.csv").write_text("text,label\n房间很干净,1\n\n服务太差,x\n", encoding="utf-8")
    with pytest.raises(PipelineError, match=r"row 3: 'x'"):
        fetch_and_clean(workdir, source)


# Splits


def test_a_requested_split_that_does_not_exist_lists_the_splits_found(workdir):
    source = write_folder(workdir / "source")
    message = fetch_error(workdir, {"data.dataset": str(source), "data.test_split": "nope"})
    assert message == (
        "data.test_split: the dataset has no split 'nope'. Splits found: test, train, validation. "
        "Set data.test_split in params.yaml to one of them."
    )


def test_a_missing_validation_split_is_carved_from_train_by_ratio_and_seed(workdir):
    train = [(f"训练评论{i}", str(i % 2)) for i in range(40)]
    source = write_folder(workdir / "source", {"train": train, "test": REVIEWS["test"]})
    changes = {"data.dataset": str(source), "data.validation_ratio": 0.25, "data.split_seed": 7}

    raw = run_fetch(workdir, changes)
    assert (len(raw["train"]), len(raw["validation"])) == (30, 10)
    assert set(raw["train"]["text"]).isdisjoint(raw["validation"]["text"])
    assert sorted(rows(raw["train"]) + rows(raw["validation"])) == sorted(train)
    assert run_fetch(workdir, changes)["validation"].equals(raw["validation"])  # deterministic
    other_seed = run_fetch(workdir, {**changes, "data.split_seed": 8})["validation"]
    assert set(other_seed["text"]) != set(raw["validation"]["text"])


def test_carving_validation_from_a_save_to_disk_folder_leaves_the_folder_untouched(workdir):
    source = shutil.copytree(OLD_SAVE_TO_DISK, workdir / "source")
    before = sorted(str(path.relative_to(source)) for path in source.rglob("*"))
    raw = run_fetch(workdir, {"data.dataset": str(source), "data.validation_split": "dev"})
    assert (len(raw["train"]), len(raw["validation"])) == (5, 1)  # 10% of 6 rows, rounded up
    assert sorted(str(path.relative_to(source)) for path in source.rglob("*")) == before


def test_too_few_training_rows_to_carve_a_validation_split_is_an_error(workdir):
    source = write_folder(workdir / "source", {"train": [("房间很干净", "1")], "test": REVIEWS["test"]})
    message = fetch_error(workdir, {"data.dataset": str(source)})
    assert message.startswith("data.validation_ratio: cannot carve a validation split from 1 training row(s)")
    assert "Add a 'validation' split" in message


# Formats


def test_a_save_to_disk_folder_written_by_datasets_2_14_loads(workdir):
    raw = run_fetch(workdir, {"data.dataset": str(OLD_SAVE_TO_DISK)})
    assert [len(raw[split]) for split in SPLITS] == [6, 2, 2]
    assert rows(raw["train"])[:2] == [("房间很干净", "1"), ("服务太差", "0")]
    assert all(set(raw[split]["label"]) == {"0", "1"} for split in SPLITS)  # ClassLabel ids, not names


def test_a_folder_of_tsv_files_loads_and_a_leading_quote_does_not_swallow_lines(workdir):
    train = [('"好"的开始，后来一般', "1"), ("服务太差", "0"), ('说"还行"的人', "1"), ("前台冷漠", "0")]
    source = write_folder(workdir / "source", {**REVIEWS, "train": train}, suffix=".tsv")
    raw = run_fetch(workdir, {"data.dataset": str(source)})
    assert rows(raw["train"]) == train
    assert rows(raw["test"]) == REVIEWS["test"]


# Where the data is


def test_a_dataset_folder_that_does_not_exist_is_named(workdir):
    message = fetch_error(workdir, {"data.dataset": "./data/source"})
    assert message.startswith(f"data.dataset: folder {workdir / 'data/source'} does not exist.")


def test_a_dataset_name_that_is_neither_a_folder_nor_on_the_hub_says_both(workdir):
    message = fetch_error(workdir, {"data.dataset": "data/source"})  # reads as a hub id as well
    assert message.startswith("data.dataset: 'data/source' is no folder here and could not be loaded")


def test_a_dataset_path_that_is_a_file_is_refused(workdir):
    source = write_folder(workdir / "source")
    message = fetch_error(workdir, {"data.dataset": str(source / "train.csv")})
    assert message.startswith(f"data.dataset: {source / 'train.csv'} is a file; point it at the folder")


def test_a_folder_without_split_files_lists_what_it_holds(workdir):
    source = workdir / "source"
    source.mkdir()
    (source / "reviews.xlsx").write_bytes(b"")
    message = fetch_error(workdir, {"data.dataset": str(source)})
    assert "neither a save_to_disk folder" in message and "It holds: reviews.xlsx." in message


# The command line


@pytest.fixture(scope="module")
def cli_project(tmp_path_factory):
    """A project copy whose stages run as the user runs them, with an empty Hugging Face cache.

    Each test writes its own params.yaml there.
    """
    project = new_project(tmp_path_factory.mktemp("cli") / "project", {})
    # an empty cache, so that the hub dataset cannot be found offline even where it was downloaded once
    hf_home = tmp_path_factory.mktemp("hf-home")
    env = {key: value for key, value in os.environ.items() if key != "PIPELINE_DEBUG"}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HOME=str(hf_home),
        HF_HUB_CACHE=str(hf_home / "hub"),
        HF_DATASETS_CACHE=str(hf_home / "datasets"),
    )
    return project, env


def run_stage(cli_project, name: str, **extra_env):
    project, env = cli_project
    return project.run(sys.executable, "-m", f"stages.{name}", check=False, env={**env, **extra_env})


def assert_one_error_message(result) -> str:
    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    return result.stderr


def test_an_unreachable_hub_dataset_is_a_short_error_saying_how_to_use_a_local_folder(cli_project):
    project, _ = cli_project
    write_params(project.path, {"data.dataset": "lansinuote/ChnSentiCorp"})
    stderr = assert_one_error_message(run_stage(cli_project, "fetch"))
    assert "could not be loaded from the Hugging Face Hub" in stderr
    assert "save_to_disk('data/source/mydata')" in stderr and "set data.dataset in params.yaml to it" in stderr
    assert stderr.rstrip().endswith("(set PIPELINE_DEBUG=1 for the full traceback)")
    assert len(stderr.splitlines()) <= 3


def test_pipeline_debug_gives_the_traceback_of_a_hub_error(cli_project):
    project, _ = cli_project
    write_params(project.path, {"data.dataset": "lansinuote/ChnSentiCorp"})
    result = run_stage(cli_project, "fetch", PIPELINE_DEBUG="1")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "PipelineError: data.dataset:" in result.stderr


def test_a_bad_data_folder_on_the_command_line_is_one_error_message(cli_project, tmp_path):
    project, _ = cli_project
    write_params(project.path, {"data.dataset": str(tmp_path / "missing")})
    stderr = assert_one_error_message(run_stage(cli_project, "fetch"))
    assert f"folder {tmp_path / 'missing'} does not exist" in stderr


def test_a_wrong_encoding_on_the_command_line_is_one_error_message(cli_project, tmp_path):
    project, _ = cli_project
    source = write_folder(tmp_path / "source", encoding="gbk")
    write_params(project.path, {"data.dataset": str(source), "data.encoding": "utf-8"})
    stderr = assert_one_error_message(run_stage(cli_project, "fetch"))
    assert "train.csv: not valid utf-8" in stderr and "data.encoding" in stderr


@pytest.mark.parametrize(
    ("suffix", "columns", "lines", "reason"),
    [  # pandas would read the first review's extra leading field as an index, and its text from the next field
        (".csv", [], ["text,label", "便宜,干净,1", "服务太差,0"], "line 2, saw 3; line 1 is the header"),
        (".tsv", [], ["text\tlabel", "便宜\t干净\t1", "服务太差\t0"], "line 2, saw 3; line 1 is the header"),
        (".tsv", ["label", "text"], ["1\t便宜\t干净", "0\t服务太差"], "line 1 has 3 field(s) but data.columns"),
    ],
)
def test_a_row_with_more_fields_than_the_header_stops_fetch_with_one_line_naming_file_and_line(
    cli_project, tmp_path, suffix, columns, lines, reason
):
    project, _ = cli_project
    source = write_folder(tmp_path / "source", suffix=suffix)
    train = source / f"train{suffix}"
    train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    write_params(project.path, {"data.dataset": str(source), "data.columns": columns})
    stderr = assert_one_error_message(run_stage(cli_project, "fetch"))
    assert stderr.startswith(f"error: {train}") and reason in stderr
    assert len(stderr.splitlines()) == 1
    assert not (project.path / "data/raw").exists()  # no test of this module's project runs fetch through


# The model


def test_an_unreachable_hub_model_is_an_error_saying_how_to_use_a_local_folder():
    if huggingface_hub.try_to_load_from_cache("bert-base-chinese", "config.json"):
        pytest.skip("bert-base-chinese is in the local hub cache, so it loads offline")
    for load in (encoder.load_tokenizer, encoder.max_positions):
        with pytest.raises(PipelineError) as error:
            load("bert-base-chinese")
        message = str(error.value)
        assert message.startswith("could not load model 'bert-base-chinese'")
        assert "save_pretrained(folder)" in message and "point model.name at that folder" in message
        assert isinstance(error.value.__cause__, OSError)  # kept for PIPELINE_DEBUG=1


@pytest.mark.parametrize(
    ("deleted", "missing", "load"),
    [
        (["config.json"], "config.json", encoder.load_tokenizer),
        (["config.json"], "config.json", encoder.max_positions),
        (["tokenizer.json", "vocab.txt"], "tokenizer (tokenizer.json or vocab.txt)", encoder.load_tokenizer),
        (
            ["model.safetensors"],
            "weights (model.safetensors or pytorch_model.bin)",
            lambda name: encoder.load_encoder(name, torch.device("cpu"), "fp32"),
        ),
    ],
)
def test_a_model_folder_without_a_needed_file_names_what_is_missing(tmp_path, deleted, missing, load):
    folder = write_tiny_bert(tmp_path / "tiny-bert")
    for name in deleted:
        (folder / name).unlink()
    with pytest.raises(PipelineError) as error:
        load(str(folder))
    assert str(error.value).startswith(f"model.name: model folder {folder} lacks {missing}.")
    assert "save_pretrained(folder)" in str(error.value)


def test_a_model_folder_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(PipelineError, match=r"^model.name: model folder .*no-model does not exist"):
        encoder.load_tokenizer(str(tmp_path / "no-model"))


class OutOfMemoryEncoder(torch.nn.Module):
    """Stands in for BERT: every forward pass runs out of memory, as a too large batch does on a GPU."""

    config = SimpleNamespace(hidden_size=4)

    def forward(self, **inputs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_in_embed_suggests_a_smaller_batch_size():
    """A unit test of the error path only: no GPU runs out of memory here, the stand-in raises the error."""
    tokens = {
        "input_ids": torch.ones(5, 6, dtype=torch.int32),
        "attention_mask": torch.ones(5, 6, dtype=torch.int8),
        "token_type_ids": torch.zeros(5, 6, dtype=torch.int8),
        "lengths": torch.tensor([6, 5, 4, 3, 2]),
    }
    with pytest.raises(PipelineError) as error:
        encoder.embed(OutOfMemoryEncoder(), tokens, "cls", batch_size=4, device=torch.device("cpu"))
    message = str(error.value)
    assert message.startswith("out of memory on cpu embedding 4 reviews of 6 tokens.")
    assert "Lower embed.batch_size (now 4) in params.yaml, e.g. to 2." in message


# Issue 9: local sources read fresh, and seen by DVC under data/source


def flip_last_label(path: Path, same_inode: bool) -> None:
    """Flip the last row's label (0 <-> 1) keeping the file's size and mtime: in place (same inode),
    or as editors save, through a new file renamed over the old one."""
    before = path.stat()
    data = path.read_bytes()
    assert data.endswith((b",0\n", b",1\n"))
    data = data[:-2] + (b"1\n" if data.endswith(b",0\n") else b"0\n")
    if same_inode:
        path.write_bytes(data)
    else:
        new = path.with_name(path.name + ".new")
        new.write_bytes(data)
        os.replace(new, path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert (after.st_ino == before.st_ino) == same_inode


def test_an_edit_that_keeps_size_and_mtime_is_read_by_the_next_fetch(workdir):
    source = write_folder(workdir / "source")
    assert run_fetch(workdir, {"data.dataset": str(source)})["test"]["label"].iloc[-1] == "0"
    (source / "test.csv").write_text("text,label\n很舒服,1\n难吃退货,1\n", encoding="utf-8")
    assert run_fetch(workdir, {"data.dataset": str(source)})["test"]["label"].iloc[-1] == "1"
    flip_last_label(source / "test.csv", same_inode=True)
    assert run_fetch(workdir, {"data.dataset": str(source)})["test"]["label"].iloc[-1] == "0"


def dvc_repro(project, *args: str) -> list[str]:
    output = project.dvc("repro", *args).stdout
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def test_editing_a_source_under_data_source_reruns_fetch_and_clean_on_plain_dvc_repro(tmp_path):
    project = new_project(tmp_path / "project", {"data.dataset": "data/source/reviews"})
    source = write_folder(project.path / "data/source/reviews")
    assert dvc_repro(project, "clean") == ["fetch", "clean"]
    assert dvc_repro(project, "clean") == []  # nothing changed: nothing runs

    flip_last_label(source / "test.csv", same_inode=False)  # as an editor saves
    assert dvc_repro(project, "clean") == ["fetch", "clean"]
    assert list(read_csv(project.path / "data/clean/test.csv")["label"]) == ["1", "1"]
    assert dvc_repro(project, "clean") == []

    # DVC itself cannot see an edit that keeps inode, size and mtime; --force reads the file afresh
    flip_last_label(source / "validation.csv", same_inode=True)
    assert dvc_repro(project, "clean") == []
    assert dvc_repro(project, "--force", "fetch") == ["fetch"]
    assert dvc_repro(project, "clean") == ["clean"]
    assert list(read_csv(project.path / "data/clean/validation.csv")["label"]) == ["1", "1"]


def test_a_source_outside_data_source_is_read_with_a_note_that_dvc_does_not_see_its_edits(workdir, capsys):
    source = write_folder(workdir / "elsewhere")
    run_fetch(workdir, {"data.dataset": str(source)})
    assert f"{source} is outside data/source/, so DVC does not see edits to its files" in capsys.readouterr().out


# Issue 9: encodings told apart by the text, not by whether the bytes decode

SIMPLIFIED = [
    ("房间很干净，服务也热情，下次还会入住。", "1"),
    ("早餐太差了，品种少而且都凉了。", "0"),
    ("这本书印刷质量不错，内容也很实用。", "1"),
    ("物流太慢，等了一个星期才到，包装也破了。", "0"),
    ("建议：", "1"),  # two characters: short GBK files are where detectors go wrong
    ("扣盖感觉不够严实", "0"),
]
TRADITIONAL = [
    ("房間很乾淨，服務人員也很親切，下次還會再來。", "1"),
    ("隔音很差，整晚都聽到隔壁的聲音，睡不好。", "0"),
    ("價格合理，交通方便，離捷運站只要五分鐘。", "1"),
    ("商品與圖片不符，品質很差，已經申請退貨。", "0"),
]


def write_table(path: Path, reviews, encoding: str, header: bool = True) -> Path:
    sep = "\t" if path.suffix == ".tsv" else ","
    lines = ([sep.join(("text", "label"))] if header else []) + [sep.join(row) for row in reviews]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


@pytest.mark.parametrize(
    ("encoding", "reviews"),
    [
        *(("gbk", [review]) for review in SIMPLIFIED),  # one short review per file
        ("gbk", SIMPLIFIED),
        ("gb18030", [*SIMPLIFIED, ("𠀀字不在GBK里", "1")]),
        *(("big5", [review]) for review in TRADITIONAL),
        ("big5", TRADITIONAL),
        ("utf-8", SIMPLIFIED),
        ("utf-8-sig", TRADITIONAL),
        ("utf-16", SIMPLIFIED),  # with a byte order mark
        ("utf-16-le", SIMPLIFIED),  # without
        ("utf-16-be", TRADITIONAL),
        ("utf-32", SIMPLIFIED),  # its little-endian BOM starts like UTF-16's
        ("utf-32-le", TRADITIONAL),
        ("utf-32-be", SIMPLIFIED),
    ],
)
@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_auto_reads_chinese_reviews_in_each_encoding(tmp_path, encoding, reviews, suffix):
    path = write_table(tmp_path / f"train{suffix}", reviews, encoding)
    table = read_table(path)
    assert list(table.columns) == ["text", "label"]
    assert rows(table) == reviews


def test_a_big5_folder_is_read_as_big5_by_fetch_with_auto(workdir, capsys):
    reviews = {"train": TRADITIONAL, "validation": TRADITIONAL[:2], "test": TRADITIONAL[2:]}
    source = write_folder(workdir / "source", reviews, encoding="big5")
    raw = run_fetch(workdir, {"data.dataset": str(source)})
    assert rows(raw["train"]) == TRADITIONAL
    assert "train.csv: read as cp950 (data.encoding: auto)" in capsys.readouterr().out


def test_a_file_that_reads_as_no_chinese_encoding_names_the_file_and_data_encoding(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("text,label\nホテルの部屋はとても綺麗でした,1\n".encode("shift_jis"))
    with pytest.raises(PipelineError) as error:
        read_table(path)
    assert str(error.value).startswith(f"{path}: cannot tell its encoding")
    assert "Set data.encoding to the file's encoding" in str(error.value)


def test_predict_input_errors_name_its_own_options(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes("text,label\nホテルの部屋はとても綺麗でした,1\n".encode("shift_jis"))
    with pytest.raises(PipelineError, match="Set --encoding to the file's encoding") as error:
        read_table(path, encoding_param="--encoding", columns_param="--columns")
    assert "data.encoding" not in str(error.value)


# Issue 9: a split file with a header and no rows


@pytest.mark.parametrize("content", ["text,label\n", "text,label\n\n\n"])
def test_a_split_file_with_a_header_and_no_rows_is_named(workdir, content):
    source = write_folder(workdir / "source")
    (source / "test.csv").write_text(content, encoding="utf-8")
    message = fetch_error(workdir, {"data.dataset": str(source)})
    assert message.startswith(f"{source / 'test.csv'} has a header row but no reviews.")


# Issue 9: the source's own label names (ClassLabel) reach clean


def test_a_save_to_disk_source_records_its_class_label_names_for_clean(workdir):
    run_fetch(workdir, {"data.dataset": str(OLD_SAVE_TO_DISK)})
    assert json.loads((workdir / "data/raw/labels.json").read_text(encoding="utf-8")) == {
        "names": ["negative", "positive"]
    }
    write_params(workdir, {"data.dataset": str(OLD_SAVE_TO_DISK), "clean.label_names": ["positive", "negative"]})
    with pytest.raises(PipelineError, match=r"^clean.label_names is \[positive, negative\] but the source names"):
        clean.main()
    write_params(workdir, {"data.dataset": str(OLD_SAVE_TO_DISK), "clean.label_names": []})
    clean.main()
    assert json.loads((workdir / "data/clean/labels.json").read_text(encoding="utf-8")) == {
        "names": ["negative", "positive"]
    }


def test_a_csv_source_writes_no_source_label_names(workdir):
    run_fetch(workdir, {"data.dataset": str(write_folder(workdir / "source"))})
    assert not (workdir / "data/raw/labels.json").exists()


# Issue 11 item 6: folders as people have them


def test_a_dev_file_is_the_validation_split_when_there_is_no_validation_file(workdir, capsys):
    source = write_folder(workdir / "source", {"train": REVIEWS["train"], "dev": REVIEWS["validation"]}, ".tsv")
    write_folder(source, {"test": REVIEWS["test"]}, ".tsv")
    raw = run_fetch(workdir, {"data.dataset": str(source)})
    assert rows(raw["validation"]) == REVIEWS["validation"]
    assert rows(raw["train"]) == REVIEWS["train"]  # nothing carved from train
    assert "no split 'validation'; using 'dev' as the validation split" in capsys.readouterr().out


def test_files_that_map_to_no_split_are_named_in_a_warning_and_not_read(workdir, capsys):
    source = write_folder(workdir / "source")
    (source / "unlabeled.csv").write_bytes(b"\xff\xfe garbage that would not even decode")
    (source / "notes.txt").write_text("where the data came from", encoding="utf-8")
    (source / "dev.csv").write_text("text,label\n还行,1\n", encoding="utf-8")  # validation.csv wins
    raw = run_fetch(workdir, {"data.dataset": str(source)})
    assert rows(raw["validation"]) == REVIEWS["validation"]
    assert "warning: dev.csv, notes.txt, unlabeled.csv in" in capsys.readouterr().out


def test_headerless_files_are_read_with_data_columns(workdir):
    reviews = {split: [(label, text) for text, label in split_rows] for split, split_rows in REVIEWS.items()}
    source = workdir / "source"
    source.mkdir()
    for split, split_rows in reviews.items():
        write_table(source / f"{split}.tsv", split_rows, "utf-8", header=False)
    raw = run_fetch(workdir, {"data.dataset": str(source), "data.columns": ["label", "text"]})
    assert rows(raw["train"]) == REVIEWS["train"]
    assert rows(raw["test"]) == REVIEWS["test"]


@pytest.mark.parametrize("order", [["text", "label"], ["label", "text"]])
def test_a_headerless_file_read_as_if_it_had_a_header_says_to_set_data_columns_in_its_order(workdir, order):
    source = workdir / "source"
    source.mkdir()
    for split, split_rows in REVIEWS.items():
        rows_in_order = [row if order[0] == "text" else row[::-1] for row in split_rows]
        write_table(source / f"{split}.tsv", rows_in_order, "utf-8", header=False)
    message = fetch_error(workdir, {"data.dataset": str(source)})
    assert message.startswith(f"{source / 'train.tsv'}: no column 'text' (from data.text_column).")
    assert "The first row looks like a review, not a header" in message
    assert f"data.columns: [{', '.join(order)}]" in message
    assert f"data.columns: [{', '.join(reversed(order))}]" not in message
    # and the hint, followed, reads the file
    assert rows(run_fetch(workdir, {"data.dataset": str(source), "data.columns": order})["train"]) == REVIEWS["train"]


def test_a_header_row_in_a_file_said_to_have_none_is_an_error(workdir):
    source = write_folder(workdir / "source", suffix=".tsv")
    message = fetch_error(workdir, {"data.dataset": str(source), "data.columns": ["text", "label"]})
    assert message.startswith(f"{source / 'train.tsv'}: the first row (text, label) looks like a header")
    assert "set data.columns: []" in message


def test_data_columns_with_a_saved_dataset_is_an_error(workdir):
    message = fetch_error(workdir, {"data.dataset": str(OLD_SAVE_TO_DISK), "data.columns": ["text", "label"]})
    assert message.startswith("data.columns names the columns of CSV/TSV files without a header row")


def test_predict_reads_a_headerless_input_with_columns(tmp_path):
    path = write_table(tmp_path / "in.tsv", [("1", "房间很干净"), ("0", "服务太差")], "gbk", header=False)
    texts, table = predict.read_reviews(predict.parse_args(["--input", str(path), "--columns", "label,text"]))
    assert texts == ["房间很干净", "服务太差"]
    assert list(table["label"]) == ["1", "0"]
    with pytest.raises(PipelineError, match="--columns label,text"):
        predict.read_reviews(predict.parse_args(["--input", str(path)]))
