"""The rules of the clean stage, one test each: what is fixed, what is dropped and counted, and what stops
the pipeline. Everything runs in-process on tiny hand-written splits."""

import pandas as pd
import pytest

from stages.clean import clean_splits, drop_duplicates, label_names, parse_label
from zh_sentiment.errors import PipelineError
from zh_sentiment.params import Clean
from zh_sentiment.paths import SPLITS
from zh_sentiment.text import normalize_text


def clean_params(**changes) -> Clean:
    """The shipped clean section of params.yaml, with `changes`."""
    values = {"label_map": {}, "label_names": ["negative", "positive"], "remove_cross_split_duplicates": True}
    return Clean(**{**values, **changes})


def table(*rows) -> pd.DataFrame:
    """A split as data/raw holds it: text and label cells as text, None for an empty cell."""
    return pd.DataFrame(list(rows), columns=["text", "label"], dtype=object)


def raw(train=None, validation=None, test=None) -> dict[str, pd.DataFrame]:
    """Three usable splits with distinct texts; pass rows to replace one."""
    return {
        "train": table(*(train or [("训练好", "1"), ("训练差", "0")])),
        "validation": table(*(validation or [("验证好", "1"), ("验证差", "0")])),
        "test": table(*(test or [("测试好", "1"), ("测试差", "0")])),
    }


def records(frame: pd.DataFrame) -> list[tuple[str, int]]:
    return list(zip(frame["text"], frame["label"]))


# Text normalisation


def test_runs_of_whitespace_collapse_to_one_space_and_the_ends_are_stripped():
    assert normalize_text("  房间 \t 很\n\n干净\r\n ") == ("房间 很 干净", ["whitespace_normalized"])


def test_ideographic_and_non_breaking_spaces_count_as_whitespace():
    assert normalize_text("好评\u3000\u3000推荐\u00a0了") == ("好评 推荐 了", ["whitespace_normalized"])


def test_control_characters_are_removed():
    assert normalize_text("早餐\x07太差\x1b") == ("早餐太差", ["control_chars_removed"])


@pytest.mark.parametrize("invisible", ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"])
def test_zero_width_characters_are_removed(invisible):
    assert normalize_text(f"前台{invisible}很好") == ("前台很好", ["zero_width_removed"])


def test_a_zero_width_space_between_spaces_leaves_one_space():
    assert normalize_text("前台 \u200b 很好") == ("前台 很好", ["zero_width_removed", "whitespace_normalized"])


def test_a_clean_text_needs_no_fix():
    assert normalize_text("房间 很干净。") == ("房间 很干净。", [])


def test_each_fix_is_counted_once_per_row_in_its_split():
    splits, _, report = clean_splits(
        raw(train=[(" 很好 ", "1"), ("很\x07差", "0"), ("一\u200b般  般", "0")]), clean_params()
    )
    assert records(splits["train"]) == [("很好", 1), ("很差", 0), ("一般 般", 0)]
    assert report["train"]["fixed"] == {"whitespace_normalized": 2, "control_chars_removed": 1, "zero_width_removed": 1}
    assert report["test"]["fixed"] == {"whitespace_normalized": 0, "control_chars_removed": 0, "zero_width_removed": 0}


# Rows dropped


def test_missing_and_blank_texts_are_dropped_and_counted_as_empty_text():
    blank = [(None, "1"), ("", "0"), ("   ", "1"), ("\u200b", "0"), ("\x07\t", "1")]
    splits, _, report = clean_splits(raw(train=[*blank, ("很好", "1"), ("很差", "0")]), clean_params())
    assert records(splits["train"]) == [("很好", 1), ("很差", 0)]
    assert report["train"]["dropped"]["empty_text"] == 5
    # a text fixed into nothing counts as dropped, not as fixed
    assert sum(report["train"]["fixed"].values()) == 0


def test_exact_duplicates_keep_the_first_copy_and_are_counted():
    splits, _, report = clean_splits(
        raw(train=[("很好", "1"), ("很差", "0"), ("很好", "1"), ("很好", "1")]), clean_params()
    )
    assert records(splits["train"]) == [("很好", 1), ("很差", 0)]
    assert report["train"]["dropped"]["duplicate"] == 2


def test_texts_equal_after_normalisation_are_duplicates():
    splits, _, report = clean_splits(raw(train=[("很 好", "1"), ("  很  好", "1"), ("很差", "0")]), clean_params())
    assert records(splits["train"]) == [("很 好", 1), ("很差", 0)]
    assert report["train"]["dropped"]["duplicate"] == 1


def test_a_text_with_conflicting_labels_keeps_the_majority_label():
    frame = table(("一般", 0), ("很好", 1), ("一般", 1), ("一般", 1))
    kept, dropped = drop_duplicates(frame)
    assert records(kept) == [("很好", 1), ("一般", 1)]  # the first copy with the winning label, in place
    assert dropped == {"duplicate": 1, "conflicting_label": 1}


def test_a_tie_between_labels_drops_every_copy():
    frame = table(("一般", 0), ("很好", 1), ("一般", 1), ("一般", 0), ("一般", 1))
    kept, dropped = drop_duplicates(frame)
    assert records(kept) == [("很好", 1)]
    assert dropped == {"duplicate": 0, "conflicting_label": 4}


def test_conflicting_labels_are_counted_in_the_report():
    splits, _, report = clean_splits(
        raw(train=[("一般", "0"), ("一般", "1"), ("很好", "1"), ("很差", "0")]), clean_params()
    )
    assert records(splits["train"]) == [("很好", 1), ("很差", 0)]
    assert report["train"]["dropped"]["conflicting_label"] == 2


# Texts shared between splits


def test_a_text_shared_with_a_later_split_leaves_the_earlier_one():
    splits, _, report = clean_splits(
        raw(
            train=[("共享一", "1"), ("共享二", "0"), ("共享三", "1"), ("训练", "0"), ("训练二", "1")],
            validation=[("共享一", "1"), ("共享三", "1"), ("验证", "0")],
            test=[("共享二", "0"), ("共享三", "1"), ("测试", "1")],
        ),
        clean_params(remove_cross_split_duplicates=True),
    )
    # train < validation < test: a shared text stays only in the latest split that has it
    assert list(splits["train"]["text"]) == ["训练", "训练二"]
    assert list(splits["validation"]["text"]) == ["共享一", "验证"]
    assert list(splits["test"]["text"]) == ["共享二", "共享三", "测试"]
    assert report["train"]["dropped"]["also_in_validation"] == 2
    assert report["train"]["dropped"]["also_in_test"] == 1  # 共享三 already left with validation
    assert report["validation"]["dropped"]["also_in_test"] == 1
    assert "kept_overlap" not in report["train"]


def test_shared_texts_are_only_reported_when_removal_is_off():
    splits, _, report = clean_splits(
        raw(
            train=[("共享", "1"), ("训练", "0"), ("训练二", "1")],
            validation=[("共享", "1"), ("验证", "0")],
            test=[("共享", "1"), ("测试", "0")],
        ),
        clean_params(remove_cross_split_duplicates=False),
    )
    assert "共享" in set(splits["train"]["text"]) and "共享" in set(splits["validation"]["text"])
    assert report["train"]["kept_overlap"] == {"also_in_validation": 1, "also_in_test": 1}
    assert report["validation"]["kept_overlap"] == {"also_in_test": 1}
    assert "also_in_test" not in report["train"]["dropped"]


# Labels


@pytest.mark.parametrize(("cell", "expected"), [("1", 1), ("0", 0), ("1.0", 1), (" 1 ", 1), ("7", 7)])
def test_integer_labels_are_accepted_also_as_floats_and_with_spaces(cell, expected):
    assert parse_label(cell, {}) == expected


@pytest.mark.parametrize("cell", ["x", "-1", "", None, "1.5", "nan", "inf", "positive"])
def test_labels_that_are_no_non_negative_integer_are_rejected(cell):
    assert parse_label(cell, {}) is None


def test_string_labels_are_mapped_through_label_map():
    params = clean_params(label_map={"negative": 0, "positive": 1})
    splits, names, _ = clean_splits(
        raw(
            train=[("很好", "positive"), ("很差", " negative ")],
            validation=[("还行", "positive")],
            test=[("不行", "negative")],
        ),
        params,
    )
    assert records(splits["train"]) == [("很好", 1), ("很差", 0)]
    assert names == ["negative", "positive"]


def test_yaml_integer_keys_of_label_map_match_text_labels():
    params = clean_params(label_map={1: 0, 2: 1}, label_names=[])  # YAML `{1: 0, 2: 1}` gives int keys
    splits, names, _ = clean_splits(
        raw(train=[("很差", "1"), ("很好", "2")], validation=[("还行", "2")], test=[("不行", "1")]), params
    )
    assert records(splits["train"]) == [("很差", 0), ("很好", 1)]
    assert names == ["1", "2"]


def test_a_label_outside_the_allowed_set_stops_with_its_row_and_value():
    rows = [("很好", "1"), ("很差", "x"), ("一般", "-1"), ("还行", None), ("不行", "2"), ("好", "0")]
    with pytest.raises(PipelineError) as error:
        clean_splits(raw(train=rows), clean_params())
    message = str(error.value)
    assert message.startswith("data/raw/train.csv: 4 label(s) not allowed")
    assert "row 2: 'x'; row 3: '-1'; row 4: (empty); row 5: '2'" in message
    assert "integers 0..1" in message and "clean.label_map" in message


def test_bad_label_rows_are_numbered_as_in_the_raw_file_even_after_dropped_rows():
    with pytest.raises(PipelineError, match=r"row 3: 'x'"):
        clean_splits(raw(validation=[("", "1"), ("很好", "1"), ("很差", "x")]), clean_params())


def test_at_most_five_bad_label_rows_are_shown():
    rows = [(f"评论{i}", "bad") for i in range(8)] + [("很好", "1"), ("很差", "0")]
    with pytest.raises(PipelineError) as error:
        clean_splits(raw(test=rows), clean_params())
    assert "8 label(s) not allowed" in str(error.value)
    assert "row 5: 'bad'" in str(error.value) and "row 6" not in str(error.value)


def test_a_text_label_missing_from_label_map_is_named_with_the_map_keys():
    params = clean_params(label_map={"negative": 0, "positive": 1})
    with pytest.raises(PipelineError) as error:
        clean_splits(raw(train=[("很好", "positive"), ("一般", "neutral"), ("很差", "negative")]), params)
    message = str(error.value)
    assert "row 2: 'neutral'" in message
    assert "'negative', 'positive' (the keys of clean.label_map)" in message
    assert "add them to clean.label_map" in message


# Label names


def test_label_names_come_from_clean_label_names():
    assert label_names(clean_params(label_names=["差评", "好评"]), [0, 1]) == ["差评", "好评"]


def test_label_names_come_from_the_label_map_keys_when_label_names_is_empty():
    params = clean_params(label_map={"neg": 0, "bad": 0, "pos": 1}, label_names=[])
    assert label_names(params, [0, 1]) == ["neg", "pos"]  # the first key of each id


def test_label_names_are_the_ids_when_neither_is_given():
    assert label_names(clean_params(label_names=[]), [1, 0, 2, 1]) == ["0", "1", "2"]


def test_label_names_must_match_the_number_of_label_map_ids():
    params = clean_params(label_map={"neg": 0, "pos": 1}, label_names=["negative", "neutral", "positive"])
    with pytest.raises(PipelineError, match=r"clean.label_names has 3 names but clean.label_map maps to 2 ids"):
        label_names(params, [0, 1])


def test_ids_with_a_gap_stop_and_suggest_a_label_map():
    # 1-based labels would otherwise make a third class, 0, that never occurs
    with pytest.raises(PipelineError, match=r"the labels are the ids 1, 2.*first is 0.*clean.label_map"):
        clean_splits(
            raw(train=[("很差", "1"), ("很好", "2")], validation=[("还行", "1")], test=[("不行", "2")]),
            clean_params(label_names=[]),
        )


def test_a_ten_class_dataset_takes_its_number_of_labels_from_the_data():
    train = [(f"训练{i}", str(i)) for i in range(10)]
    splits, names, report = clean_splits(
        raw(train=train, validation=[("验证", "9")], test=[("测试", "3")]), clean_params(label_names=[])
    )
    assert names == [str(i) for i in range(10)]
    assert sorted(splits["train"]["label"]) == list(range(10))
    assert report["train"]["labels"] == {str(i): 1 for i in range(10)}


# The report and splits that cannot be used


def test_the_report_counts_rows_in_and_out_and_labels_per_name():
    _, _, report = clean_splits(
        raw(train=[("很好", "1"), ("很好", "1"), ("  ", "0"), ("很差", "0"), ("不错", "1")]), clean_params()
    )
    assert report["train"]["rows_in"] == 5
    assert report["train"]["rows_out"] == 3
    assert report["train"]["labels"] == {"negative": 1, "positive": 2}
    assert report["train"]["dropped"] == {
        "empty_text": 1,
        "duplicate": 1,
        "conflicting_label": 0,
        "also_in_validation": 0,
        "also_in_test": 0,
    }


def test_a_split_empty_after_cleaning_stops_with_the_split_and_the_count_per_reason():
    validation = [("", "1"), ("   ", "0"), ("测试好", "1")]  # blank, blank, and a copy of a test review
    with pytest.raises(PipelineError) as error:
        clean_splits(raw(validation=validation), clean_params())
    assert str(error.value).startswith(
        "split 'validation' is empty after cleaning: 3 rows in; "
        "dropped: empty_text 2, duplicate 0, conflicting_label 0, also_in_test 1."
    )
    assert "data/raw/validation.csv" in str(error.value)


def test_an_empty_test_split_stops_too():
    with pytest.raises(PipelineError, match=r"^split 'test' is empty after cleaning: 1 rows in; dropped: empty_text 1"):
        clean_splits(raw(test=[(None, "1")]), clean_params())


def test_a_training_split_with_a_single_class_stops():
    with pytest.raises(PipelineError) as error:
        clean_splits(raw(train=[("很好", "1"), ("不错", "1"), ("很好", "1")]), clean_params())
    message = str(error.value)
    assert message.startswith("split 'train' has a single class ('positive') after cleaning (2 rows; dropped:")
    assert "duplicate 1" in message and "at least two" in message


def test_validation_and_test_may_hold_a_single_class():
    splits, _, _ = clean_splits(raw(validation=[("验证好", "1")], test=[("测试差", "0")]), clean_params())
    assert len(splits["validation"]) == len(splits["test"]) == 1


# Label names that disagree with the labels (issue 9)


def test_label_names_that_contradict_label_map_stop():
    # every positive review would be called "negative"
    params = clean_params(label_map={"positive": 0, "negative": 1}, label_names=["negative", "positive"])
    with pytest.raises(PipelineError) as error:
        label_names(params, [0, 1])
    message = str(error.value)
    assert message.startswith(
        "clean.label_names says id 0 is 'negative', but clean.label_map maps 'positive' to 0 and 'negative' to 1."
    )
    assert "clean.label_names: [positive, negative] (or [] for exactly that)" in message


def test_label_names_may_be_any_key_of_their_id():
    params = clean_params(label_map={"差": 0, "差评": 0, "好评": 1}, label_names=["差评", "好评"])
    assert label_names(params, [0, 1]) == ["差评", "好评"]


def test_more_label_names_than_classes_in_the_data_stop():
    # a third, empty class would lower macro F1 and hide ROC AUC
    params = clean_params(label_names=["negative", "neutral", "positive"])
    with pytest.raises(PipelineError) as error:
        clean_splits(raw(), params)
    assert str(error.value).startswith(
        "data/raw: no review has the label id(s) 2 ('positive'), but clean.label_names name 3 classes"
    )


def test_a_label_map_class_without_reviews_stops():
    params = clean_params(label_map={"neg": 0, "pos": 1, "neutral": 2}, label_names=[])
    splits = {name: table(*[(f"{name}{i}", label) for i, label in enumerate(["neg", "pos"])]) for name in SPLITS}
    with pytest.raises(PipelineError, match=r"no review has the label id\(s\) 2 \('neutral'\), but clean.label_map"):
        clean_splits(splits, params)


def test_repeated_label_names_stop():
    with pytest.raises(PipelineError, match=r"^clean.label_names names 'good' more than once"):
        clean_splits(raw(), clean_params(label_names=["good", "good"]))


def test_label_names_must_match_the_source_class_label_names():
    with pytest.raises(PipelineError) as error:
        clean_splits(raw(), clean_params(label_names=["positive", "negative"]), source_names=["negative", "positive"])
    assert "the source names its labels [negative, positive] (its label column is a ClassLabel" in str(error.value)
    assert "Set clean.label_names: [negative, positive], or []" in str(error.value)


def test_the_source_class_label_names_are_used_when_label_names_is_empty():
    _, names, _ = clean_splits(raw(), clean_params(label_names=[]), source_names=["差评", "好评"])
    assert names == ["差评", "好评"]
