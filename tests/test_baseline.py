"""The baseline stage (TF-IDF + logistic regression): C is picked on validation, never on test."""

import json

import pandas as pd
import pytest
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer

from stages.baseline import choose_c
from tests.conftest import new_project
from tests.fixtures import reviews
from zh_sentiment.errors import PipelineError
from zh_sentiment.params import Baseline, load_params
from zh_sentiment.sandbox import pristine_params

SMALL_C, LARGE_C = 0.0001, 100.0


def write_clean(folder, train: pd.DataFrame, validation: pd.DataFrame, test: pd.DataFrame) -> None:
    folder.mkdir(parents=True)
    for name, frame in (("train", train), ("validation", validation), ("test", test)):
        frame.to_csv(folder / f"{name}.csv", index=False)
    (folder / "labels.json").write_text(json.dumps({"names": ["negative", "positive"]}), encoding="utf-8")


def test_c_is_chosen_on_validation_not_test(tmp_path, fixture_params):
    """A tiny C learns only the prior (train is 2:1 negative): 0.5 on balanced validation and test.
    A large C learns the words: ~1 on validation, ~0 on test, whose labels are validation's flipped.
    So validation picks the large C, and test, had it been asked, would have picked the small one."""
    project = new_project(tmp_path / "project", {**fixture_params, "baseline.c_grid": [SMALL_C, LARGE_C]})
    train = reviews(240, seed=1)
    train = train.drop(train.index[train["label"] == 1][::2])
    validation = reviews(60, seed=2)
    test = validation.assign(label=1 - validation["label"])
    write_clean(project.path / "data/clean", train, validation, test)

    project.stage("baseline")

    table = pd.read_csv(project.path / "metrics/baseline/validation.csv")
    assert table["C"].tolist() == [SMALL_C, LARGE_C]
    small, large = table["validation_accuracy"]
    assert small == 0.5 and large >= 0.9
    assert table.loc[table["chosen"], "C"].tolist() == [LARGE_C]
    metrics = project.json("metrics/baseline.json")
    assert metrics["validation_accuracy"] == large
    assert metrics["accuracy"] == pytest.approx(1 - large, abs=1e-6)  # the small C would have scored 0.5 here
    assert metrics["n"] == len(test)


def test_an_exact_tie_keeps_the_smaller_c():
    """README: ties go to the smaller C. 1/3 is stored rounded (0.333333), below its exact value."""
    train = reviews(120, seed=1)
    validation = reviews(3, seed=2)
    validation.loc[validation.index[:2], "label"] = 1 - validation["label"].iloc[:2]  # both Cs get 1 of 3 right
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), min_df=2, sublinear_tf=True)
    x_train = vectorizer.fit_transform(train["text"])
    params = Baseline(ngram_range=[1, 3], min_df=2, c_grid=[100.0, 10.0], max_iter=1000)
    _, table = choose_c(
        (x_train, train["label"].to_numpy()),
        (vectorizer.transform(validation["text"]), validation["label"].to_numpy()),
        params,
    )
    assert table["validation_accuracy"].tolist() == [0.333333, 0.333333]
    assert table.loc[table["chosen"], "C"].tolist() == [10.0]


def test_single_class_train_is_a_clear_error(tmp_path, fixture_params):
    project = new_project(tmp_path / "project", fixture_params)
    train = reviews(40, seed=1)
    write_clean(project.path / "data/clean", train[train["label"] == 0], reviews(20, seed=2), reviews(20, seed=3))
    result = project.stage("baseline", check=False)
    assert result.returncode == 1
    assert "at least two classes" in result.stderr and "Traceback" not in result.stderr
    assert not (project.path / "metrics/baseline.json").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ngram_range", [3, 1], "1 <= lo <= hi"),
        ("ngram_range", [0, 2], "1 <= lo <= hi"),
        ("ngram_range", [1, 2, 3], "1 <= lo <= hi"),
        ("c_grid", [], "at least 1"),
        ("c_grid", [1.0, 0.0], "greater than 0"),
        ("min_df", 0, "greater than 0"),
        ("max_iter", "100", "valid integer"),
    ],
)
def test_bad_baseline_params_are_named(tmp_path, key, value, message):
    raw = pristine_params()
    raw["baseline"][key] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    with pytest.raises(PipelineError, match=rf"baseline\.{key}.*{message}"):
        load_params(tmp_path / "params.yaml")
