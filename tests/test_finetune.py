"""Fine-tuning: cached states train exactly like the whole model with its lower layers frozen; micro-batches
under the token budget give the step the whole batch gives; several processes learn what one does; a diverging
run stops with a message; predict picks the fine-tuned model."""

import sys

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

from tests.fixtures import reviews, write_tiny_bert
from zh_sentiment.encoder import embed, encode_texts, load_encoder, load_tokenizer
from zh_sentiment.errors import PipelineError
from zh_sentiment.finetune import FineTuned, Tokens, fit, micro_batches, starting_model
from zh_sentiment.live import read_history
from zh_sentiment.params import Finetune, load_params
from zh_sentiment.sandbox import pristine_params
from zh_sentiment.states import CachedStates, first_trained_layer, save_states

PARAMS = {
    "layers": 1,
    "epochs": 2,
    "batch_size": 8,
    "grad_accum": 2,
    "max_batch_tokens": 4096,
    "lr": 0.001,
    "warmup_ratio": 0.1,
    "weight_decay": 0.01,
    "max_grad_norm": 1.0,
    "patience": 5,
    "seed": 0,
    "device": "cpu",
    "processes": 1,
    "timeout_seconds": 600,
    "precision": "fp32",
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


def one_step(tiny_bert, split, start, **changes) -> dict[str, torch.Tensor]:
    """The weights after one optimizer step over the whole split (one batch), dropout off so runs compare."""
    model = FineTuned(starting_model(str(tiny_bert), ["negative", "positive"], seed=0), start)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    params = Finetune(**{**PARAMS, "epochs": 1, "batch_size": len(split), "grad_accum": 1, **changes})
    state, _, _ = fit(model, split, split, params, torch.device("cpu"))
    return state


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("layers", [1, "all"])
def test_the_top_layer_for_cls_alone_gives_the_models_own_logits_and_gradients(tiny_bert, tmp_path, layers, attention):
    """FineTuned runs the top layer for [CLS] only; the logits and every trained weight's gradient are still
    those of BertForSequenceClassification's own forward pass on the tokens (padded reviews included)."""
    split = tokens_file(tiny_bert, tmp_path, "train", 12, 5)
    start = first_trained_layer(layers, 2)
    inputs = split if start is None else states_file(tiny_bert, tmp_path, split, "states", start)
    index = torch.arange(len(split))
    assert len(set(split.lengths.tolist())) > 1  # some reviews are padded

    def logits_and_gradients(forward):
        model = FineTuned(starting_model(str(tiny_bert), ["negative", "positive"], seed=0), start).eval()
        model.model.set_attn_implementation(attention)
        logits = forward(model)
        F.cross_entropy(logits, split.labels[index]).backward()
        return logits, {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    ours, our_grads = logits_and_gradients(lambda model: model(inputs.batch(index)))
    theirs, their_grads = logits_and_gradients(lambda model: model.model(**split.batch(index)).logits)
    assert our_grads.keys() == their_grads.keys() and any(g.abs().max() > 1e-3 for g in their_grads.values())
    assert (ours - theirs).abs().max() <= 1e-5
    assert max((our_grads[k] - their_grads[k]).abs().max().item() for k in our_grads) <= 1e-5
    if start is not None:  # the comparison is sharp enough to catch states taken one layer too low
        too_low = states_file(tiny_bert, tmp_path, split, "states-low", start - 1)
        wrong, _ = logits_and_gradients(lambda model: model(too_low.batch(index)))
        assert (wrong - theirs).abs().max() > 1e-3  # a hundred times the tolerance above


@pytest.mark.parametrize("layers", [1, "all"])
def test_micro_batches_under_the_token_budget_give_the_unsplit_step(tiny_bert, tmp_path, layers):
    split = tokens_file(tiny_bert, tmp_path, "train", 24, 3)
    start = first_trained_layer(layers, 2)
    if start is not None:
        split = states_file(tiny_bert, tmp_path, split, "states", start)
    budget = int(split.lengths.max())  # the longest review alone: many micro-batches of unequal sizes
    runs = micro_batches(torch.arange(len(split)), split.lengths, budget)
    assert len(runs) > 3 and len({len(run) for run in runs}) > 1
    assert all(len(run) * int(split.lengths[run].max()) <= budget for run in runs)
    assert sorted(torch.cat(runs).tolist()) == list(range(len(split)))

    before = FineTuned(starting_model(str(tiny_bert), ["negative", "positive"], seed=0), start).state_dict()
    whole = one_step(tiny_bert, split, start, max_batch_tokens=len(split) * budget)
    cut = one_step(tiny_bert, split, start, max_batch_tokens=budget)
    gap = max((whole[key] - cut[key]).abs().max().item() for key in whole)
    moved = max((whole[key] - before[key]).abs().max().item() for key in whole)
    print(f"one step: weights moved up to {moved:.1e}; split and unsplit differ by up to {gap:.1e}")
    assert moved > 1e-4  # the step did move the weights
    assert gap <= 1e-5


def test_cached_state_batches_are_padded_with_zeros_and_masked(tiny_bert, tmp_path):
    split = tokens_file(tiny_bert, tmp_path, "train", 12, 4)
    cached = states_file(tiny_bert, tmp_path, split, "states", 1)
    index = torch.tensor([5, 0, 11, 3])
    batch = cached.batch(index)
    width = int(split.lengths[index].max())
    assert batch["states"].shape == (4, width, cached.hidden_size) and batch["states"].dtype == torch.float32
    for row, review in enumerate(index.tolist()):
        n, start = int(cached.lengths[review]), int(cached.offsets[review])
        assert torch.equal(batch["states"][row, :n], cached.rows(start, start + n).float())
        assert not batch["states"][row, n:].any()
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)


def test_a_token_budget_below_the_longest_review_stops_before_training(tiny_bert, tmp_path):
    split = tokens_file(tiny_bert, tmp_path, "train", 16, 5)
    longest = int(split.lengths.max())
    model = FineTuned(starting_model(str(tiny_bert), ["negative", "positive"], seed=0), None)
    params = Finetune(**{**PARAMS, "max_batch_tokens": longest - 1})
    with pytest.raises(PipelineError, match=rf"finetune.max_batch_tokens = {longest - 1} .* at least {longest}"):
        fit(model, split, split, params, torch.device("cpu"))


def test_a_diverging_run_stops_at_the_first_non_finite_loss(tiny_bert, tmp_path):
    split = tokens_file(tiny_bert, tmp_path, "train", 16, 6)
    model = FineTuned(starting_model(str(tiny_bert), ["negative", "positive"], seed=0), None)
    with torch.no_grad():
        model.model.classifier.weight.fill_(float("inf"))  # the first forward pass gives non-finite logits
    params = Finetune(**{**PARAMS, "batch_size": 4})
    names = r"epoch 1, step 1 .* finetune.lr .* finetune.warmup_ratio .* finetune.max_grad_norm"
    with pytest.raises(PipelineError, match=names):
        fit(model, split, split, params, torch.device("cpu"))


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
    training = project.json("metrics/finetuned/training.json")
    assert training["processes"] == 2
    # only rank 0 logs the epochs (dvclive): one row each, not one per process
    assert list(read_history("finetuned", project.path)["epoch"]) == list(range(1, training["epochs_run"] + 1))
    # the same batches and steps, but each process draws its own dropout masks: one review may come out otherwise
    one_review = 1 / one["n"] + 1e-5  # the fixture's validation and test splits are the same size; metrics: 6 digits
    assert abs(one["accuracy"] - two["accuracy"]) <= one_review
    assert abs(one["validation_accuracy"] - two["validation_accuracy"]) <= one_review


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


def test_a_diverged_run_leaves_no_model_and_predict_never_serves_one(trained_project, tmp_path):
    project = trained_project.copy(tmp_path / "diverged")
    project.set_params({"finetune.lr": 1000000.0})
    result = project.dvc("repro", check=False)
    assert result.returncode != 0
    assert "finetune.lr" in result.stderr and "finetune.max_grad_norm" in result.stderr
    assert not (project.path / "models/finetuned").exists()
    predicted = project.run(sys.executable, "-m", "zh_sentiment", "predict", "前台很热情，房间干净舒服，很满意推荐")
    assert "nan" not in predicted.stdout and "(finetuned)" not in predicted.stderr
