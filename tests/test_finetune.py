"""Fine-tuning: cached states train exactly like the whole model with its lower layers frozen;
several processes learn what one does; predict picks the fine-tuned model."""

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

from stages.finetune import starting_model
from tests.fixtures import reviews, write_tiny_bert
from zh_sentiment.encoder import embed, encode_texts, load_encoder, load_tokenizer
from zh_sentiment.errors import PipelineError
from zh_sentiment.finetune import FineTuned, Tokens, fit
from zh_sentiment.params import Finetune, load_params
from zh_sentiment.sandbox import pristine_params
from zh_sentiment.states import CachedStates, first_trained_layer, save_states

PARAMS = {
    "layers": 1,
    "epochs": 2,
    "batch_size": 8,
    "grad_accum": 2,
    "lr": 0.001,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "patience": 5,
    "seed": 0,
    "device": "cpu",
    "processes": 1,
    "timeout_seconds": 600,
}


def tokens_file(tiny_bert, folder, name: str, n: int, seed: int):
    """Fixture reviews of mixed lengths (some truncated at 64), tokenized as the tokenize stage does."""
    frame = reviews(n, seed=seed, long_every=4)
    tokens = encode_texts(load_tokenizer(str(tiny_bert)), frame["text"].tolist(), 64)
    tokens["labels"] = torch.tensor(frame["label"].to_numpy())
    save_file(tokens, folder / f"{name}.safetensors")
    return Tokens(folder / f"{name}.safetensors")


def states_file(tiny_bert, folder, split: Tokens, name: str, layer: int) -> CachedStates:
    """The states entering `layer`, computed by embed's pass, in fp32 so that only the method is compared."""
    encoder = load_encoder(str(tiny_bert), torch.device("cpu"), "fp32")
    states = torch.empty(int(split.lengths.sum()), encoder.config.hidden_size)
    embed(encoder, split.tokens, "cls", 16, torch.device("cpu"), states=states, states_layer=layer)
    save_states(folder / f"{name}.safetensors", states, split.lengths, split.labels)
    return CachedStates(folder / f"{name}.safetensors")


def train(tiny_bert, train_split, validation_split, start: int):
    """Two epochs with an lr at which the tiny model learns within them: a model that learns nothing would
    give the same losses whatever its input, and the comparisons below would prove nothing."""
    model = FineTuned(starting_model(str(tiny_bert), ["negative", "positive"], seed=0), start)
    params = Finetune(**{**PARAMS, "lr": 0.005})
    _, _, history = fit(model, train_split, validation_split, params, torch.device("cpu"))
    return history


def test_cached_states_train_like_the_whole_model_with_frozen_lower_layers(tiny_bert, tmp_path):
    start = first_trained_layer(PARAMS["layers"], 2)  # the tiny BERT has 2 layers: layer 1 trains
    tokens = {
        "train": tokens_file(tiny_bert, tmp_path, "train", 48, 1),
        "val": tokens_file(tiny_bert, tmp_path, "val", 16, 2),
    }
    states = {name: states_file(tiny_bert, tmp_path, split, f"{name}-states", start) for name, split in tokens.items()}

    whole = train(tiny_bert, tokens["train"], tokens["val"], start)  # dropout on in layer 1 and the head in both
    cached = train(tiny_bert, states["train"], states["val"], start)
    keys = ["train_loss", "validation_loss", "train_accuracy", "validation_accuracy"]
    gap = max(abs(a[key] - b[key]) for a, b in zip(whole, cached) for key in keys)
    print(f"largest difference between the two runs' losses: {gap:.2e}")
    assert len(whole) == len(cached) == PARAMS["epochs"]
    assert gap <= 1e-4
    assert whole[0]["train_loss"] != whole[1]["train_loss"]  # it did train

    # The comparison is sharp enough to catch states taken one layer too low.
    off_by_one = {
        name: states_file(tiny_bert, tmp_path, split, f"{name}-low", start - 1) for name, split in tokens.items()
    }
    wrong = train(tiny_bert, off_by_one["train"], off_by_one["val"], start)
    wrong_gap = max(abs(a[key] - b[key]) for a, b in zip(whole, wrong) for key in keys)
    print(f"largest difference with the states of one layer too low: {wrong_gap:.2e}")
    assert wrong_gap > 1e-3


@pytest.mark.parametrize("value", [0, "top", 1.5, "2"])
def test_layers_must_be_a_positive_number_or_all(tmp_path, value):
    params = pristine_params()
    params["finetune"]["layers"] = value
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(PipelineError) as caught:
        load_params(tmp_path / "params.yaml")
    assert "1 problem(s)" in str(caught.value) and f"finetune.layers = {value!r}: expected a number" in str(
        caught.value
    )


def test_layers_beyond_the_model_is_a_clear_error():
    with pytest.raises(PipelineError, match=r"finetune.layers = 3, but the model has 2 layers .* 1..2, or to all"):
        first_trained_layer(3, 2)
    assert first_trained_layer(2, 2) == 0
    assert first_trained_layer("all", 2) is None


def test_two_processes_learn_what_one_does(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "ddp")
    project.set_params({"finetune.processes": 2})
    assert project.repro() == ["finetune"]
    one, two = trained_project.json("metrics/finetuned.json"), project.json("metrics/finetuned.json")
    print(f"test accuracy: 1 process {one['accuracy']}, 2 processes {two['accuracy']}")
    assert project.json("metrics/finetuned/training.json")["processes"] == 2
    assert abs(one["accuracy"] - two["accuracy"]) <= 0.01
    assert abs(one["validation_accuracy"] - two["validation_accuracy"]) <= 0.01


def test_the_starting_model_is_the_same_in_every_run_also_without_pooler_weights(tmp_path):
    """The new weights (head, and a pooler the checkpoint lacks) come from the seed, so models/finetuned is
    byte-for-byte reproducible."""
    folder = write_tiny_bert(tmp_path / "no-pooler")
    config = BertConfig.from_pretrained(folder)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)  # a checkpoint with no pooler weights
    first, second = (starting_model(str(folder), ["negative", "positive"], seed=3).state_dict() for _ in range(2))
    assert "bert.pooler.dense.weight" in first
    assert all(torch.equal(first[key], second[key]) for key in first)
    other = starting_model(str(folder), ["negative", "positive"], seed=4).state_dict()
    assert not torch.equal(first["bert.pooler.dense.weight"], other["bert.pooler.dense.weight"])
