"""zh-sentiment export and the ONNX Runtime runtimes, for real: the trained fixtures' models exported with
torch.onnx.export, validated, loaded by predict and served. The server tests are test_serve.py's own,
run against `serve --runtime onnx-int8` (a representative set: answers, raw scores, notes, limits), and its
batching test with int8's tolerance: dynamic quantization scales each batch's activations by that batch's
range, so a review's score moves (~1e-5) with the reviews that share its batch; its label does not."""

import json
import shutil
import sys

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import copy_tree
from tests.server import running_server
from tests.test_serve import (  # noqa: F401  (collected here: the same specification, another runtime)
    BAD,
    GOOD,
    LONG,
    SMALL_LIMITS,
    assert_concurrent_requests_share_batches,
    test_a_doubtful_input_gets_a_warning_in_plain_words,
    test_a_list_of_texts_and_teis_batch_form_get_one_answer_per_text_in_order,
    test_a_text_over_the_character_limit_is_cut_before_reading_and_says_so,
    test_one_text_gets_every_label_with_its_probability_highest_first,
    test_parameters_top_k_and_function_to_apply_are_honoured,
    test_raw_scores_are_the_models_raw_scores,
    test_too_many_inputs_get_413,
    test_with_truncate_false_a_text_too_long_is_refused,
)
from zh_sentiment import runtime
from zh_sentiment.errors import PipelineError
from zh_sentiment.inference import load_model
from zh_sentiment.model_folder import ONNX_FILES, read_info
from zh_sentiment.onnx_export import MAX_FP32_DIFFERENCE, MIN_INT8_AGREEMENT

TEXTS = [GOOD, BAD, LONG, "房间还行", "xyz", GOOD + BAD]


@pytest.fixture(scope="module")
def exported(trained_project, tmp_path_factory):
    """A copy of the trained project with the fine-tuned model exported (fp32 and int8) and the frozen head (fp32)."""
    project = trained_project.copy(tmp_path_factory.mktemp("exported") / "project")
    for args in (["--model", "finetuned", "--int8"], ["--model", "frozen_head"]):
        result = project.run(sys.executable, "-m", "zh_sentiment", "export", *args)
        assert "export:" in result.stdout and "Traceback" not in result.stderr
    return project


@pytest.fixture(scope="module")
def finetuned(exported):
    return exported.path / "models" / "finetuned"


def test_export_writes_optimums_layout_validated_and_fingerprinted(exported, finetuned):
    info = read_info(finetuned)
    assert set(info["onnx"]) == {"onnx", "onnx-int8"}
    for name, record in info["onnx"].items():
        assert record["file"] == ONNX_FILES[name] and (finetuned / record["file"]).is_file()
        assert record["file"] in info["files"]  # its sha256: covered by the fingerprint
        assert record["validation"]["n"] == record["test"]["n"] == 60  # the fixtures' validation and test splits
    assert info["onnx"]["onnx"]["validation"]["max_abs_logit_difference"] <= MAX_FP32_DIFFERENCE
    assert info["onnx"]["onnx-int8"]["validation"]["label_agreement"] >= MIN_INT8_AGREEMENT
    frozen = read_info(exported.path / "models" / "frozen_head")
    assert set(frozen["onnx"]) == {"onnx"} and "onnx/model.onnx" in frozen["files"]
    # what Optimum's ORTModelForSequenceClassification and TEI-style tools expect: the tokenizer's inputs, logits out
    session = ort.InferenceSession(finetuned / "onnx" / "model.onnx", providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert [o.name for o in session.get_outputs()] == ["logits"]


@pytest.mark.parametrize("model", ["finetuned", "frozen_head"])
def test_exported_logits_equal_pytorchs_within_the_bound(exported, model):
    folder = exported.path / "models" / model
    reference, reference_notes = load_model(folder, "cpu", "fp32", runtime="torch").score(TEXTS, batch_size=4)
    onnx = load_model(folder, "cpu", runtime="onnx")
    assert onnx.runtime == "onnx" and onnx.precision == "fp32"
    logits, notes = onnx.score(TEXTS, batch_size=4)  # batches of other sizes and widths than the traced example
    assert np.abs(logits - reference).max() <= MAX_FP32_DIFFERENCE
    assert notes == reference_notes  # truncated and unknown-token notes whatever the runtime
    if model == "finetuned":
        int8, _ = load_model(folder, "cpu", runtime="onnx-int8").score(TEXTS, batch_size=4)
        assert np.array_equal(int8.argmax(1), reference.argmax(1)) and not np.array_equal(int8, reference)


def test_a_changed_or_swapped_onnx_file_is_refused_by_its_fingerprint(exported, tmp_path):
    folder = copy_tree(exported.path / "models" / "finetuned", tmp_path / "finetuned")
    quantized = folder / "onnx" / "model_quantized.onnx"
    data = bytearray(quantized.read_bytes())
    data[len(data) // 2] ^= 0xFF
    quantized.write_bytes(bytes(data))
    with pytest.raises(PipelineError, match=r"onnx/model_quantized.onnx changed since"):
        load_model(folder, "cpu", runtime="onnx-int8")
    # another model's export in its place: the same name, other bytes
    shutil.copy(exported.path / "models" / "frozen_head" / "onnx" / "model.onnx", folder / "onnx" / "model.onnx")
    with pytest.raises(PipelineError, match=r"onnx/model.onnx.* changed since"):
        load_model(folder, "cpu", runtime="onnx")


def test_an_onnx_file_model_json_does_not_record_is_never_loaded(exported, trained_project, tmp_path):
    folder = copy_tree(trained_project.path / "models" / "finetuned", tmp_path / "finetuned")
    shutil.copytree(exported.path / "models" / "finetuned" / "onnx", folder / "onnx")
    with pytest.raises(PipelineError, match="records no validated onnx/model_quantized.onnx. Export it first"):
        load_model(folder, "cpu", runtime="onnx-int8")
    assert load_model(folder, "cpu", runtime="auto").runtime == "torch"  # and auto says why
    assert "no ONNX export" in load_model(folder, "cpu", runtime="auto").runtime_reason


def test_auto_takes_the_fastest_runtime_measured_once_and_says_why(finetuned, tmp_path, monkeypatch):
    cache = tmp_path / "runtime.json"
    monkeypatch.setenv(runtime.CACHE_ENV, str(cache))
    first = load_model(finetuned, "cpu", runtime="auto")
    assert "measured now" in first.runtime_reason
    (decision,) = json.loads(cache.read_text(encoding="utf-8")).values()
    assert set(decision["ms"]) == {"torch", "onnx", "onnx-int8"}
    assert first.runtime == decision["choice"] == runtime.decide(decision["ms"])
    again = load_model(finetuned, "cpu", runtime="auto")
    assert again.runtime == first.runtime and "decided earlier on this machine" in again.runtime_reason
    # --precision is PyTorch's: auto keeps PyTorch, and an ONNX runtime refuses it
    assert load_model(finetuned, "cpu", "fp32", runtime="auto").runtime == "torch"
    with pytest.raises(PipelineError, match="--precision applies to --runtime torch"):
        load_model(finetuned, "cpu", "fp32", runtime="onnx")


def test_decide_prefers_the_simpler_runtime_unless_clearly_faster():
    assert runtime.decide({"torch": 100.0, "onnx": 95.0, "onnx-int8": 40.0}) == "onnx-int8"
    assert runtime.decide({"torch": 100.0, "onnx": 95.0}) == "torch"  # 5% is within a loaded machine's noise
    assert runtime.decide({"torch": 100.0, "onnx-int8": 95.0}) == "torch"


def test_predict_says_which_runtime_and_answers_as_pytorch(exported):
    result = exported.run(
        sys.executable, "-m", "zh_sentiment", "predict", "--model", "finetuned", "--runtime", "onnx-int8", GOOD, BAD
    )
    assert "predict: runtime onnx-int8: asked for (--runtime onnx-int8)" in result.stderr
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == ["positive", "negative"]


# --- serve --runtime onnx-int8: test_serve.py's tests, imported above, against these fixtures ------------------


@pytest.fixture(scope="module")
def server(exported):
    with running_server(exported.path, "--model", "finetuned", "--runtime", "onnx-int8", *SMALL_LIMITS) as server:
        yield server


@pytest.fixture(scope="module")
def info(server) -> dict:
    status, text = server.get("/info")
    assert status == 200
    return json.loads(text)


@pytest.fixture(scope="module")
def offline(exported, info):
    """The same model and runtime through the Python API: what the server must answer."""
    return load_model(exported.path / info["model_id"], device="cpu", runtime="onnx-int8")


def test_info_reports_the_runtime_and_why(info):
    assert info["runtime"] == "onnx-int8"
    assert info["runtime_chosen_because"] == "asked for (--runtime onnx-int8)"


def test_concurrent_requests_are_scored_together_and_keep_their_labels(server):
    """test_serve's batching test, the scores within int8's batch-to-batch tolerance."""
    assert_concurrent_requests_share_batches(server, tolerance=1e-3)
