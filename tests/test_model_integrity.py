"""A model folder is what it claims, for as long as it is served: the weights live in memory, so a file
changed or truncated on disk changes no answer and crashes nothing (and changed_on_disk says which);
model.json's label names and settings are covered by its fingerprint, recomputed at every load; a
config that names code is refused as such, whatever hides it.

On copies of the trained fixture project's model folders (its own are hard links into the DVC cache).
"""

import codecs
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import skops.io

from tests.conftest import copy_tree
from tests.fixtures import NEGATIVE, POSITIVE
from tests.server import running_server
from zh_sentiment import cli, encoder
from zh_sentiment.baseline import load_baseline
from zh_sentiment.errors import PipelineError
from zh_sentiment.inference import load_model
from zh_sentiment.model_folder import fingerprint, sha256

GOOD = "这家酒店" + POSITIVE[0] + POSITIVE[1] + "。"
BAD = "房间" + NEGATIVE[0] + NEGATIVE[1] + "。"
FINGERPRINT_REFUSAL = "model.json does not match its own fingerprint"


def model_copy(trained_project, tmp_path: Path, kind: str) -> Path:
    return copy_tree(trained_project.path / "models" / kind, tmp_path / kind)


def edit_info(folder: Path, **changes) -> None:
    """model.json with `changes`, as a hand edit leaves it: the fingerprint as it was."""
    path = folder / "model.json"
    path.write_text(json.dumps({**json.loads(path.read_text(encoding="utf-8")), **changes}), encoding="utf-8")


def rehash(folder: Path, name: str) -> None:
    """Record `name`'s new sha256 in model.json and fingerprint it, as a careful forger would."""
    info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    info["files"][name] = sha256(folder / name)
    (folder / "model.json").write_text(json.dumps({**info, "fingerprint": fingerprint(info)}), encoding="utf-8")


def predict_refusal(capsys, folder: Path) -> str:
    """`zh-sentiment predict --model-dir folder GOOD` (in this process): its error message, exit 1 asserted."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit:
        cli.main(["predict", "--model-dir", str(folder), GOOD])
    err = capsys.readouterr().err
    assert exit.value.code == 1 and "Traceback" not in err
    return err


def probabilities(answer: list[list[dict]]) -> np.ndarray:
    """The server's answer as a matrix: a row per text, a column per label (by name)."""
    return np.array([[p["score"] for p in sorted(predictions, key=lambda p: p["label"])] for predictions in answer])


# Weights in memory: a file changed on disk changes nothing served


def overwrite_in_place(path: Path) -> None:
    """Other weights of the same size, written into the same file (inode): every tensor's bytes zeroed."""
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")  # safetensors: header length, header, data
    with open(path, "r+b") as f:
        f.seek(header)
        f.write(bytes(path.stat().st_size - header))


def test_weights_overwritten_then_truncated_under_the_server_change_no_answer(trained_project, tmp_path):
    folder = model_copy(trained_project, tmp_path, "finetuned")
    weights = folder / "model.safetensors"
    with running_server(tmp_path, "--model-dir", str(folder), "--device", "cpu") as server:
        status, served = server.post({"inputs": [GOOD, BAD]})
        assert status == 200
        classifier = load_model(folder, device="cpu")
        assert classifier.changed_on_disk() == []
        inode = weights.stat().st_ino

        overwrite_in_place(weights)
        assert weights.stat().st_ino == inode
        status, answer = server.post({"inputs": [GOOD, BAD]})
        assert status == 200
        np.testing.assert_allclose(probabilities(answer), probabilities(served), atol=1e-6)
        assert classifier.changed_on_disk() == [str(weights)]

        os.truncate(weights, weights.stat().st_size // 2)
        status, answer = server.post({"inputs": [GOOD, BAD]})
        assert status == 200
        np.testing.assert_allclose(probabilities(answer), probabilities(served), atol=1e-6)
        assert server.get("/health")[0] == 200 and server.process.poll() is None
        assert classifier.changed_on_disk() == [str(weights)]


def test_a_frozen_heads_encoder_weights_overwritten_then_truncated_change_no_score(trained_project, tmp_path):
    """As the server test, in this process: the encoder's weights too are in memory, not mapped from the file."""
    folder = model_copy(trained_project, tmp_path, "frozen_head")
    info = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    weights = copy_tree(Path(info["model"]), tmp_path / "encoder") / "model.safetensors"
    edit_info(folder, model=str(weights.parent))  # where the encoder is: no part of the fingerprint, its files are
    classifier = load_model(folder, device="cpu")
    assert classifier.changed_on_disk() == []
    scores, _ = classifier.score([GOOD, BAD])
    overwrite_in_place(weights)
    np.testing.assert_array_equal(classifier.score([GOOD, BAD])[0], scores)
    os.truncate(weights, weights.stat().st_size // 2)
    np.testing.assert_array_equal(classifier.score([GOOD, BAD])[0], scores)
    assert classifier.changed_on_disk() == [str(weights)]


def test_changed_on_disk_names_the_files_that_differ_from_what_was_loaded(trained_project, tmp_path):
    folder = model_copy(trained_project, tmp_path, "baseline")
    classifier = load_model(folder)
    pipeline, info = folder / "model.skops", folder / "model.json"
    data = pipeline.read_bytes()
    os.utime(pipeline, ns=(pipeline.stat().st_atime_ns, pipeline.stat().st_mtime_ns + 10**9))
    assert classifier.changed_on_disk() == []  # touched, the same bytes
    pipeline.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert classifier.changed_on_disk() == [str(pipeline)]
    pipeline.write_bytes(data)
    assert classifier.changed_on_disk() == []  # put back
    info.unlink()
    assert classifier.changed_on_disk() == [str(info)]


# model.json: the label names and settings are fingerprinted, and the fingerprint is recomputed


@pytest.mark.parametrize(
    ("kind", "changes", "reason"),
    [
        ("baseline", {"label_names": ["positive", "negative"]}, FINGERPRINT_REFUSAL),
        ("frozen_head", {"label_names": ["positive", "negative"]}, FINGERPRINT_REFUSAL),
        (
            "finetuned",
            {"label_names": ["positive", "negative"]},
            "label_names ['positive', 'negative'] do not match id2label {'0': 'negative', '1': 'positive'}",
        ),
        ("baseline", {"num_labels": 3, "label_names": ["negative", "positive", "phantom"]}, FINGERPRINT_REFUSAL),
        ("frozen_head", {"pooling": "mean"}, FINGERPRINT_REFUSAL),
        ("finetuned", {"fingerprint": "sha256:" + "0" * 64}, FINGERPRINT_REFUSAL),
    ],
    ids=["baseline-swapped", "frozen_head-swapped", "finetuned-swapped", "phantom-label", "pooling", "fingerprint"],
)
def test_a_model_json_edited_since_training_is_refused_saying_why(
    trained_project, tmp_path, capsys, kind, changes, reason
):
    folder = model_copy(trained_project, tmp_path, kind)
    edit_info(folder, **changes)
    err = predict_refusal(capsys, folder)
    assert reason in err and str(folder / "model.json") in err and "dvc repro" in err


def earlier_fingerprint(info: dict) -> str:
    """The fingerprint as this project computed it before it covered the label names: the file hashes alone."""
    digest = hashlib.sha256()
    for group in (info["files"], info["encoder_files"] or {}):
        for name in sorted(group):
            digest.update(f"{name}\0{group[name]}\n".encode())
    return "sha256:" + digest.hexdigest()


def test_a_folder_fingerprinted_by_an_earlier_version_says_to_run_dvc_repro(trained_project, tmp_path, capsys):
    folder = model_copy(trained_project, tmp_path, "finetuned")
    edit_info(folder, fingerprint=earlier_fingerprint(json.loads((folder / "model.json").read_text(encoding="utf-8"))))
    err = predict_refusal(capsys, folder)
    assert FINGERPRINT_REFUSAL in err and "written by an earlier version" in err and "`dvc repro`" in err


def test_a_baseline_whose_classes_are_not_the_label_ids_is_refused(trained_project, tmp_path):
    """Even with model.json re-fingerprinted to match: a class beyond the labels would fail or mislabel."""
    folder = model_copy(trained_project, tmp_path, "baseline")
    pipeline = load_baseline(folder)
    pipeline.named_steps["classifier"].classes_ = np.array([0, 2])
    skops.io.dump(pipeline, folder / "model.skops")
    rehash(folder, "model.skops")
    with pytest.raises(PipelineError, match=r"model.skops predicts the classes \[0, 2\], not label ids of the 2"):
        load_model(folder)


# A config that names code, behind a byte order mark, or that is not JSON


def test_an_auto_map_behind_a_byte_order_mark_is_refused_as_custom_code(trained_project, tmp_path, capsys):
    folder = model_copy(trained_project, tmp_path, "finetuned")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["auto_map"] = {"AutoModelForSequenceClassification": "modeling_evil.EvilModel"}
    (folder / "config.json").write_bytes(codecs.BOM_UTF8 + json.dumps(config).encode())
    rehash(folder, "config.json")
    err = predict_refusal(capsys, folder)
    assert f"{folder / 'config.json'} names custom code (auto_map" in err and "does not exist" not in err


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"model_type": "bert",', "config.json is not valid JSON (Expecting property name"),
        (b"[]", "config.json is not a JSON object"),
        (codecs.BOM_UTF8 + b'{"model_type": "bert"}', "config.json starts with a UTF-8 byte order mark"),
    ],
    ids=["truncated", "not-an-object", "byte-order-mark"],
)
def test_a_config_transformers_cannot_read_is_refused_naming_the_file_and_why(tiny_bert, tmp_path, content, reason):
    folder = copy_tree(tiny_bert, tmp_path / "bert")
    (folder / "config.json").write_bytes(content)
    with pytest.raises(PipelineError) as caught:
        encoder.load_tokenizer(str(folder))
    assert f"{folder}/{reason}" in str(caught.value) and "does not exist" not in str(caught.value)
