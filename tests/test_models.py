"""Model folders and predict: model.json's schema and the fingerprints of every file that shapes a model's
output, no code from a model folder, precision, damaged files, predict's inputs and outputs, the tokenizer's
assumptions, and messages that name the right thing.

predict runs in-process (predict.main) on model folders written around the tiny BERT by the stages' own
writers (save_frozen_head, stages.finetune.save_model): no `dvc repro` is needed for these.
"""

import errno
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoModel, DistilBertConfig, DistilBertModel

from stages.finetune import save_model
from tests.fixtures import reviews, write_tiny_bert
from zh_sentiment import classifier, encoder, inference, model_folder, predict
from zh_sentiment.classifier import save_frozen_head
from zh_sentiment.errors import PipelineError
from zh_sentiment.model_folder import fingerprint, read_info
from zh_sentiment.outputs import atomic_dir, write_json
from zh_sentiment.params import load_params
from zh_sentiment.paths import must_be_local
from zh_sentiment.report import write_test_report
from zh_sentiment.sandbox import ROOT, python_first_env

POSITIVE_REVIEW = "前台很热情，房间干净舒服，很满意推荐"
NEGATIVE_REVIEW = "房间很脏太差，前台冷漠，失望退货"


def model_info(encoder_location: str | None, **changes) -> dict:
    info = {
        "model": encoder_location,
        "max_length": 64,
        "pooling": "cls",
        "precision": "fp32",
        "num_labels": 2,
        "label_names": ["negative", "positive"],
        "validation": {"accuracy": 0.5},
        "test": None,
    }
    return {**info, **changes}


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_bert, tmp_path_factory) -> Path:
    """A frozen_head model folder on the tiny BERT (a random head: these tests are about files, not accuracy)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("classifier") / "frozen_head"
    save_frozen_head(torch.nn.Linear(128, 2), model_info(str(tiny_bert)), folder)
    return folder


@pytest.fixture(scope="session")
def tiny_finetuned_dir(tiny_bert, tmp_path_factory) -> Path:
    """A finetuned model folder as the finetune stage writes it (an untrained head: about files, not accuracy)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("finetuned") / "finetuned"
    model = encoder.load_classification_model(str(tiny_bert), ["negative", "positive"])
    info = model_info(".", pooling="model", test={"n": 60, "accuracy": 0.5})
    save_model(model, encoder.load_tokenizer(str(tiny_bert)), info, folder)
    return folder


@pytest.fixture
def model_dir(tiny_model_dir, tmp_path) -> Path:
    """A copy of the frozen_head folder to damage."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.fixture
def finetuned_dir(tiny_finetuned_dir, tmp_path) -> Path:
    """A copy of the finetuned folder to damage."""
    return Path(shutil.copytree(tiny_finetuned_dir, tmp_path / "finetuned"))


def edit_info(folder: Path, **changes) -> None:
    info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    info.update(changes)
    for key in [key for key, value in changes.items() if value is None]:
        del info[key]
    (folder / "model.json").write_text(json.dumps(info), encoding="utf-8")


def edit_info_as_trained(folder: Path, **changes) -> None:
    """model.json with `changes`, fingerprinted as if training had written them."""
    info = {**json.loads((folder / "model.json").read_text(encoding="utf-8")), **changes}
    (folder / "model.json").write_text(json.dumps({**info, "fingerprint": fingerprint(info)}), encoding="utf-8")


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **changes}), encoding="utf-8")


def run_predict(folder: Path, *args: str) -> None:
    predict.main(["--model-dir", str(folder), *args])


def predict_error(folder: Path, *args: str) -> str:
    with pytest.raises(PipelineError) as caught:
        predict.main(["--model-dir", str(folder), *args])
    return str(caught.value)


# model.json: one schema, and the fingerprints of what shapes the output


def test_a_frozen_head_folder_records_its_own_and_its_encoders_files(tiny_model_dir, tiny_bert):
    info = read_info(tiny_model_dir)
    assert info["kind"] == "frozen_head" and info["validation"] == {"accuracy": 0.5}
    assert set(info["files"]) == {"head.pt"}
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= set(info["encoder_files"])
    assert info["fingerprint"].startswith("sha256:") and len(info["fingerprint"]) == 7 + 64


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"pooling": "max"}, "pooling"),
        ({"pooling": None}, "pooling: Field required"),
        ({"label_names": ["negative", "positive", "neutral"]}, "label_names has 3 names for num_labels = 2"),
        ({"label_names": ["positive", "positive"]}, "not unique"),
        ({"max_length": "64"}, "max_length"),
        ({"fingerprint": None}, "fingerprint"),
        ({"validation": {"loss": 0.1}}, "validation has no accuracy"),
        ({"encoder_files": None}, "encoder_files"),
        ({"extra": 1}, "extra"),
    ],
)
def test_an_invalid_or_incomplete_model_json_is_refused_naming_the_file_and_key(model_dir, changes, named):
    edit_info(model_dir, **changes)
    with pytest.raises(PipelineError) as caught:
        inference.load_model(model_dir)
    assert str(model_dir / "model.json") in str(caught.value) and named in str(caught.value)


def test_model_json_that_is_not_json_is_named(model_dir):
    (model_dir / "model.json").write_text('{"kind": "frozen_head",', encoding="utf-8")
    with pytest.raises(PipelineError, match="model.json is not valid JSON"):
        inference.load_model(model_dir)


def test_predict_refuses_an_encoder_swapped_for_another_of_the_same_shape(model_dir, tmp_path):
    other = write_tiny_bert(tmp_path / "other-bert", seed=1)
    edit_info(model_dir, model=str(other))
    message = predict_error(model_dir, POSITIVE_REVIEW)
    assert f"the encoder {other} is not what this model was trained with" in message
    assert "model.safetensors changed" in message


def test_a_hub_id_resolves_to_the_cache_it_was_loaded_from(tiny_bert, tmp_path, monkeypatch):
    """A hub id's files are those of its cached snapshot (here a hand-made cache: no network)."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--owner--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_bert, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert classifier.weights_folder("owner/tiny") == snapshot


@pytest.mark.parametrize(
    ("file", "edit"),
    [
        ("config.json", {"hidden_act": "relu"}),
        ("config.json", {"layer_norm_eps": 10}),
        ("config.json", {"num_hidden_layers": 1}),
        ("tokenizer_config.json", {"do_lower_case": True}),
    ],
)
def test_a_frozen_heads_encoder_with_any_shaping_file_changed_is_refused(tiny_bert, tmp_path, file, edit):
    encoder_copy = Path(shutil.copytree(tiny_bert, tmp_path / "bert"))
    folder = tmp_path / "frozen_head"
    save_frozen_head(torch.nn.Linear(128, 2), model_info(str(encoder_copy)), folder)
    inference.load_model(folder)  # as written: accepted
    edit_json(encoder_copy / file, **edit)
    message = predict_error(folder, POSITIVE_REVIEW)
    assert f"{file} changed since" in message and "train the model again" in message


def test_a_finetuned_folder_is_a_standard_hugging_face_folder(tiny_finetuned_dir):
    """AutoModelForSequenceClassification and pipeline() load it with its labels, and agree with predict."""
    from transformers import AutoModelForSequenceClassification, pipeline

    model = AutoModelForSequenceClassification.from_pretrained(tiny_finetuned_dir, trust_remote_code=False)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    texts = reviews(20, seed=7)["text"].tolist()  # some longer than max_length: truncated the same way
    classify = pipeline("text-classification", model=str(tiny_finetuned_dir), top_k=None, truncation=True)
    theirs = np.array(
        [[s["score"] for s in sorted(r, key=lambda s: model.config.label2id[s["label"]])] for r in classify(texts)]
    )
    logits, _ = inference.load_model(tiny_finetuned_dir).score(texts)
    ours = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_batches_are_cut_by_size_tokens_and_padding():
    assert inference.token_batches([100, 50, 90, 45], batch_size=32, max_batch_tokens=None) == [[0, 2, 1, 3]]
    assert inference.token_batches([100, 50, 90, 45], 32, None, min_fill=0.8) == [[0, 2], [1, 3]]
    assert inference.token_batches([100, 50, 90, 45], 32, max_batch_tokens=200) == [[0, 2], [1, 3]]
    assert inference.token_batches([100, 50, 90, 45], batch_size=3, max_batch_tokens=None) == [[0, 2, 1], [3]]
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 512, 300).tolist()
    batches = inference.token_batches(lengths, batch_size=16, max_batch_tokens=4096, min_fill=0.8)
    assert sorted(i for batch in batches for i in batch) == list(range(300))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 16 and (len(batch) == 1 or len(batch) * width <= 4096)
        assert all(lengths[i] >= 0.8 * width for i in batch)


def test_scores_do_not_depend_on_how_reviews_are_batched(tiny_finetuned_dir):
    classifier = inference.load_model(tiny_finetuned_dir)
    texts = reviews(24, seed=3)["text"].tolist()
    together, _ = classifier.score(texts, batch_size=32)
    alone = np.concatenate([classifier.score([text])[0] for text in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize(
    ("file", "edit"),
    [
        ("config.json", {"hidden_act": "relu"}),
        ("config.json", {"layer_norm_eps": 10}),
        ("config.json", {"num_hidden_layers": 1}),
    ],
)
def test_a_finetuned_folder_with_its_config_edited_is_refused(finetuned_dir, file, edit):
    edit_json(finetuned_dir / file, **edit)
    assert f"{file} changed since" in predict_error(finetuned_dir, POSITIVE_REVIEW)


def test_a_finetuned_folder_missing_a_file_or_with_one_added_says_which(finetuned_dir):
    (finetuned_dir / "vocab.txt").write_text("[PAD]\n[UNK]\n", encoding="utf-8")  # a tokenizer reads it: it shapes
    message = predict_error(finetuned_dir, POSITIVE_REVIEW)
    assert "vocab.txt added since" in message and "remove any added since" in message
    (finetuned_dir / "vocab.txt").unlink()
    (finetuned_dir / "model.safetensors").unlink()
    assert "model.safetensors missing" in predict_error(finetuned_dir, POSITIVE_REVIEW)


def test_a_finetuned_folder_with_shuffled_token_ids_is_refused(finetuned_dir):
    path = finetuned_dir / "tokenizer.json"
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    names = list(vocab)
    tokenizer["model"]["vocab"] = dict(zip(names, reversed(list(vocab.values()))))
    path.write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    assert "tokenizer.json changed since" in predict_error(finetuned_dir, POSITIVE_REVIEW)


def test_a_finetuned_model_with_nan_weights_is_refused(finetuned_dir):
    """Even with model.json updated to match: a diverged model gives NaN scores that look like answers."""
    weights = load_file(finetuned_dir / "model.safetensors")
    weights["classifier.weight"][:] = float("nan")
    save_file(weights, finetuned_dir / "model.safetensors", metadata={"format": "pt"})
    info = read_info(finetuned_dir)
    digest = model_folder.sha256(finetuned_dir / "model.safetensors")
    edit_info_as_trained(finetuned_dir, files={**info["files"], "model.safetensors": digest})
    assert "weight tensors are NaN or inf (e.g. classifier.weight)" in predict_error(finetuned_dir, POSITIVE_REVIEW)


# No code from a model folder


def write_remote_code(folder: Path) -> Path:
    """A config that asks transformers to import modeling_evil.py from the folder; the code leaves a mark."""
    mark = folder / "ran"
    (folder / "modeling_evil.py").write_text(f"open({str(mark)!r}, 'w').write('ran')\n", encoding="utf-8")
    edit_json(folder / "config.json", auto_map={"AutoModel": "modeling_evil.EvilModel"})
    return mark


def test_a_model_folder_that_asks_to_run_its_code_is_refused_before_loading(finetuned_dir):
    mark = write_remote_code(finetuned_dir)
    result = subprocess.run(
        [sys.executable, "-m", "zh_sentiment", "predict", "--model-dir", str(finetuned_dir), POSITIVE_REVIEW],
        input="y\ny\ny\n",  # `yes y | ...`: nothing may ask, so nothing can be answered
        capture_output=True,
        text=True,
        env=python_first_env() | {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1 and not mark.exists()
    assert "names custom code (auto_map" in result.stderr and "never runs code" in result.stderr
    assert "Traceback" not in result.stderr and "truncated" not in result.stderr


def test_an_encoder_folder_with_python_files_is_refused(tiny_bert, tmp_path):
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "bert"))
    (folder / "tokenization_evil.py").write_text("raise SystemExit('ran')\n", encoding="utf-8")
    with pytest.raises(PipelineError, match="holds Python files \\(tokenization_evil.py\\)"):
        encoder.load_tokenizer(str(folder))


# Damaged files


@pytest.mark.parametrize(
    "content",
    [b"", b"garbage", b"PK\x03\x04 truncated zip", "pickle"],
    ids=["empty", "garbage", "truncated-zip", "a-pickled-object"],
)
def test_a_corrupt_head_is_named_without_inviting_weights_only_false(model_dir, content):
    if content == "pickle":
        torch.save({"weight": "not a tensor", "bias": [1, 2]}, model_dir / "head.pt")
    else:
        (model_dir / "head.pt").write_bytes(content)
    with pytest.raises(PipelineError) as caught:
        classifier.load_head(model_dir, read_info(model_dir))
    message = str(caught.value)
    assert str(model_dir / "head.pt") in message and "dvc repro" in message
    assert "weights_only" not in message
    assert "head.pt changed since" in predict_error(model_dir, POSITIVE_REVIEW)  # predict checks the file first


def test_a_head_with_more_rows_than_label_names_is_refused(model_dir):
    torch.save({"weight": torch.zeros(3, 128), "bias": torch.zeros(3)}, model_dir / "head.pt")
    with pytest.raises(PipelineError, match="has 3 output rows but .* names 2 classes"):
        classifier.load_head(model_dir, read_info(model_dir))


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_truncated_encoder_weights_are_named(tiny_bert, tmp_path, weights):
    folder = Path(shutil.copytree(tiny_bert, tmp_path / "truncated"))
    if weights == "pytorch_model.bin":
        state = AutoModel.from_pretrained(folder).state_dict()
        (folder / "model.safetensors").unlink()
        torch.save(state, folder / weights)
    data = (folder / weights).read_bytes()
    (folder / weights).write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError) as caught:
        encoder.load_encoder(str(folder), torch.device("cpu"), "fp32")
    message = str(caught.value)
    assert f"the weights in {folder} ({weights}) cannot be read" in message and "truncated or corrupt" in message
    assert "offline" not in message


def test_max_length_above_the_encoders_positions_is_named(model_dir):
    edit_info_as_trained(model_dir, max_length=512)  # the tiny BERT has 128 positions
    assert "max_length = 512 is more than the encoder" in predict_error(model_dir, POSITIVE_REVIEW)


# Precision


def test_predict_takes_the_recorded_precision_and_warns_when_overridden(capsys):
    cpu = torch.device("cpu")
    assert inference.settings("cpu", None, "bf16") == (cpu, "bf16")
    assert "warning" not in capsys.readouterr().err
    assert inference.settings("cpu", "fp32", "bf16") == (cpu, "fp32")
    assert "precision fp32 (--precision) differs from the bf16" in capsys.readouterr().err
    assert inference.settings("auto", None, "int8") == (cpu, "int8")  # int8 runs on the CPU only


def test_predict_in_the_recorded_int8_equals_an_explicit_int8(model_dir):
    edit_info_as_trained(model_dir, precision="int8")
    texts = [POSITIVE_REVIEW, NEGATIVE_REVIEW]
    recorded, _ = inference.load_model(model_dir, "cpu").score(texts)
    explicit, _ = inference.load_model(model_dir, "cpu", "int8").score(texts)
    fp32, _ = inference.load_model(model_dir, "cpu", "fp32").score(texts)
    assert np.array_equal(recorded, explicit) and not np.array_equal(recorded, fp32)


# Single-class splits


def test_a_single_class_test_or_validation_split_is_warned_and_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    probabilities = np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]])
    names = ["negative", "positive"]
    metrics = write_test_report("m", np.array([1, 1, 1]), probabilities, names, ["a", "b", "c"], 1.0, np.array([0, 1]))
    assert metrics["test_classes"] == 1 and "validation_classes" not in metrics and "roc_auc" not in metrics
    assert json.loads((tmp_path / "metrics/m.json").read_text())["test_classes"] == 1
    assert "the test split has no review of class negative" in capsys.readouterr().out

    metrics = write_test_report("m", np.array([0, 1, 0]), probabilities, names, ["a", "b", "c"], 1.0, np.array([1]))
    assert metrics["validation_classes"] == 1 and "test_classes" not in metrics
    assert "the validation split has no review of class negative" in capsys.readouterr().out


# Tokenizer assumptions


def test_a_left_padding_tokenizer_gives_the_same_features(tiny_bert):
    tokenizer = encoder.load_tokenizer(str(tiny_bert))
    model = AutoModel.from_pretrained(tiny_bert).eval()
    texts = reviews(8, seed=3)["text"].tolist()
    cpu = torch.device("cpu")
    right = encoder.embed(model, encoder.encode_texts(tokenizer, texts, 64), "mean", 4, cpu)
    tokenizer.padding_side = "left"
    left = encoder.embed(model, encoder.encode_texts(tokenizer, texts, 64), "mean", 4, cpu)
    torch.testing.assert_close(left, right)


def test_a_model_and_tokenizer_without_token_type_ids_work(tiny_bert):
    tokenizer = encoder.load_tokenizer(str(tiny_bert))
    texts = reviews(6, seed=4)["text"].tolist()
    with_types = encoder.encode_texts(tokenizer, texts, 64)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    without_types = encoder.encode_texts(tokenizer, texts, 64)
    assert "token_type_ids" not in without_types
    config = DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    model = DistilBertModel(config).eval()  # its forward takes no token_type_ids
    cpu = torch.device("cpu")
    a = encoder.embed(model, with_types, "cls", 4, cpu)
    b = encoder.embed(model, without_types, "cls", 4, cpu)
    torch.testing.assert_close(a, b)
    bert = AutoModel.from_pretrained(tiny_bert).eval()  # a BERT without the cached types: all zeros
    torch.testing.assert_close(
        encoder.embed(bert, without_types, "cls", 4, cpu), encoder.embed(bert, with_types, "cls", 4, cpu)
    )


def test_mean_pooling_of_bf16_states_is_summed_in_fp32():
    torch.manual_seed(0)
    hidden = torch.randn(4, 300, 64).to(torch.bfloat16)
    mask = torch.ones(4, 300, dtype=torch.long)
    pooled = encoder.pool(hidden, mask, "mean")
    assert pooled.dtype == torch.float32
    torch.testing.assert_close(pooled, hidden.float().mean(1), atol=1e-6, rtol=1e-5)


# predict: inputs, outputs, options


def test_predict_without_reviews_says_what_to_give(capsys):
    with pytest.raises(SystemExit):
        predict.main([])
    err = capsys.readouterr().err
    assert "give reviews as arguments, '-' to read them from stdin, or --input FILE" in err and "not both" not in err


def test_predict_prints_results_without_the_loading_weights_bar(tiny_model_dir, capsys):
    run_predict(tiny_model_dir, POSITIVE_REVIEW)
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and "Loading weights" not in captured.err


def test_gbk_bytes_on_stdin_are_decoded(tiny_model_dir, monkeypatch, capsys):
    data = f"{POSITIVE_REVIEW}\n{NEGATIVE_REVIEW}\n".encode("gbk")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))
    run_predict(tiny_model_dir, "-")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == [POSITIVE_REVIEW, NEGATIVE_REVIEW]


def test_an_unknown_encoding_is_refused_before_reading(capsys, tmp_path):
    with pytest.raises(SystemExit):
        predict.main(["--input", str(tmp_path / "x.csv"), "--encoding", "bogus"])
    assert "--encoding bogus: unknown encoding" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["folder", "under-a-file"])
def test_an_output_that_cannot_be_written_is_refused_before_inference(tiny_model_dir, tmp_path, target, monkeypatch):
    (tmp_path / "in.csv").write_text(f"text\n{POSITIVE_REVIEW}\n", encoding="utf-8")
    (tmp_path / "a-file").write_text("x")
    output = tmp_path if target == "folder" else tmp_path / "a-file" / "out.csv"
    monkeypatch.setattr(predict, "load_model", lambda *a: pytest.fail("the model loaded before the output was checked"))
    message = predict_error(tiny_model_dir, "--input", str(tmp_path / "in.csv"), "--output", str(output))
    assert f"--output {output}" in message
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_binary_or_xlsx_input_is_not_called_an_encoding_problem(tiny_model_dir, tmp_path):
    (tmp_path / "reviews.csv").write_bytes(b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)))
    message = predict_error(tiny_model_dir, "--input", str(tmp_path / "reviews.csv"))
    assert "Excel .xlsx" in message and "encoding" not in message
    (tmp_path / "reviews.csv").write_bytes(b"\x00\x01\x02\xff\xfe\x80" * 50)
    message = predict_error(tiny_model_dir, "--input", str(tmp_path / "reviews.csv"))
    assert "binary file" in message and "params.yaml" not in message


def test_predict_device_errors_name_the_option(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    message = predict_error(tiny_model_dir, "--device", "cuda", POSITIVE_REVIEW)
    assert message.startswith("--device is 'cuda' but CUDA is not available") and "embed.device" not in message


# Local folders that are missing


def test_a_relative_folder_under_an_existing_folder_is_local(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not must_be_local("models-src/bert-base-chinese")  # could be a hub id owner/name
    (tmp_path / "models-src").mkdir()
    assert must_be_local("models-src/bert-base-chinese")
    with pytest.raises(PipelineError, match="model folder models-src/bert-base-chinese does not exist"):
        encoder.load_tokenizer("models-src/bert-base-chinese")


def test_a_missing_relative_folder_that_looks_like_a_hub_id_is_also_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError) as caught:
        encoder.load_tokenizer("models-src/bert-base-chinese")
    assert f"{tmp_path}/models-src/bert-base-chinese does not exist" in str(caught.value)


# Writing outputs


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        SafetensorError("I/O error: No space left on device (os error 28)"),
    ],
    ids=["OSError", "SafetensorError"],
)
def test_a_full_disk_is_one_line_naming_the_folder_and_leaves_nothing(tmp_path, error):
    with pytest.raises(PipelineError) as caught:
        with atomic_dir(tmp_path / "features") as out:
            (out / "train.safetensors").write_bytes(b"x" * 1000)
            raise error
    message = str(caught.value)
    assert message.startswith(f"no space left on the device for {tmp_path / 'features'}: it needs more than the ")
    assert "\n" not in message and "MB that are free there without it" in message
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_inside_a_folder_names_the_folder(tmp_path, monkeypatch):
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(PipelineError, match=f"for {tmp_path / 'features'}: "):
        with atomic_dir(tmp_path / "features") as out:
            write_json(out / "embedding.json", {})
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_fit_is_refused_before_the_work(tmp_path):
    with pytest.raises(PipelineError, match="it needs at least"):
        with atomic_dir(tmp_path / "features", needs=10**18):
            pytest.fail("the block ran")


def test_an_empty_params_file_says_so(tmp_path):
    (tmp_path / "params.yaml").write_text("")
    with pytest.raises(PipelineError, match=r"params.yaml is empty: it needs the sections data, model"):
        load_params(tmp_path / "params.yaml")


def test_training_the_head_uses_one_thread():
    from stages.train import fit
    from zh_sentiment.params import Train

    threads = torch.get_num_threads()
    x, y = torch.randn(40, 8), torch.arange(40) % 2
    params = Train(epochs=2, batch_size=8, lr=0.01, weight_decay=0.0, patience=1, seed=0)
    try:
        fit((x, y), (x, y), 2, params)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_a_recorded_encoder_folder_that_is_gone_is_named_as_missing(tmp_path):
    """Not the hub-cache advice: an absolute folder can only be local."""
    with pytest.raises(PipelineError, match="model folder .*gone.* does not exist"):
        classifier.weights_folder(str(tmp_path / "gone"))
