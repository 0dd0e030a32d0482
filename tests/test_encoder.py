"""The frozen encoder: pooling, device and precision choice, and length-sorted embedding."""

import numpy as np
import pytest
import torch
from transformers import AutoModel

from stages.tokenize import check_max_length, length_report, unknown_fraction
from tests.fixtures import reviews
from zh_sentiment import encoder
from zh_sentiment.encoder import embed, encode_texts, load_tokenizer, pool
from zh_sentiment.errors import PipelineError
from zh_sentiment.precision import choose_precision


def test_cls_pooling_takes_the_first_token():
    hidden = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])


def test_mean_pooling_averages_real_tokens_only():
    hidden = torch.tensor([[[1.0], [3.0], [100.0]], [[2.0], [4.0], [6.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert pool(hidden, mask, "mean").flatten().tolist() == [2.0, 4.0]


def test_auto_precision_on_cuda_prefers_bf16_then_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert choose_precision("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert choose_precision("auto", torch.device("cuda")) == "fp16"


def test_an_explicit_precision_is_kept_and_int8_is_cpu_only():
    assert choose_precision("fp16", torch.device("cpu")) == "fp16"
    with pytest.raises(PipelineError, match="CPU only"):
        choose_precision("int8", torch.device("cuda"))


def test_auto_device_falls_back_to_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert encoder.choose_device("auto") == torch.device("cpu")
    with pytest.raises(PipelineError, match="CUDA is not available"):
        encoder.choose_device("cuda")


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_batched_embedding_equals_one_review_at_a_time(tiny_bert, pooling):
    """Length-sorted batches padded to their own longest review give each review the
    features it gets alone, in the original order."""
    tokenizer = load_tokenizer(str(tiny_bert))
    model = AutoModel.from_pretrained(tiny_bert, attn_implementation="sdpa").eval()
    texts = reviews(12, seed=5)["text"].tolist()
    tokens = encode_texts(tokenizer, texts, max_length=64)
    batched = embed(model, tokens, pooling, batch_size=5, device=torch.device("cpu"))
    alone = torch.cat(
        [embed(model, encode_texts(tokenizer, [text], 64), pooling, 1, torch.device("cpu")) for text in texts]
    )
    assert batched.dtype == torch.float32
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_features_and_cached_states_are_the_models_own_hidden_states(tiny_bert, pooling, attention):
    """With `pooling: cls` embed runs the top layer for [CLS] alone (zh_sentiment/cls_forward.py): the features
    and the states it caches are still what BertModel's own forward pass gives, for every layer's states."""
    model = AutoModel.from_pretrained(tiny_bert, attn_implementation=attention).eval()
    tokens = encode_texts(load_tokenizer(str(tiny_bert)), reviews(12, seed=7)["text"].tolist(), max_length=64)
    assert len(set(tokens["lengths"].tolist())) > 1  # some reviews are padded
    with torch.no_grad():
        own = model(
            **{k: tokens[k].long() for k in ("input_ids", "attention_mask", "token_type_ids")},
            output_hidden_states=True,
        )
    mask = tokens["attention_mask"].bool()
    for layer in range(model.config.num_hidden_layers):
        states = torch.empty(int(tokens["lengths"].sum()), model.config.hidden_size)
        features = embed(model, tokens, pooling, 5, torch.device("cpu"), states=states, states_layer=layer)
        torch.testing.assert_close(
            features, pool(own.last_hidden_state, tokens["attention_mask"], pooling), atol=1e-5, rtol=1e-4
        )
        torch.testing.assert_close(states, own.hidden_states[layer][mask], atol=1e-5, rtol=1e-4)


def test_int8_features_stay_close_to_fp32(tiny_bert):
    tokenizer = load_tokenizer(str(tiny_bert))
    tokens = encode_texts(tokenizer, reviews(16, seed=6)["text"].tolist(), max_length=64)
    cpu = torch.device("cpu")
    fp32 = embed(encoder.load_encoder(str(tiny_bert), cpu, "fp32"), tokens, "mean", 8, cpu)
    int8 = embed(encoder.load_encoder(str(tiny_bert), cpu, "int8"), tokens, "mean", 8, cpu)
    assert torch.nn.functional.cosine_similarity(fp32, int8).min() > 0.95


def test_max_length_above_the_model_limit_is_refused_with_the_limit():
    check_max_length(512, 512, "bert-base-chinese")
    with pytest.raises(PipelineError, match=r"max_length = 1024 .* 512 tokens \(max_position_embeddings"):
        check_max_length(1024, 512, "bert-base-chinese")


def test_model_limit_comes_from_the_config_when_the_tokenizer_declares_none(tiny_bert):
    assert load_tokenizer(str(tiny_bert)).model_max_length > 10**9  # no limit declared, as in ../shared
    assert encoder.max_positions(str(tiny_bert)) == 128


def test_length_report_gives_percentiles_and_the_truncated_share():
    report = length_report(np.array([10, 20, 30, 40, 500]), max_length=32)
    assert report["n"] == 5
    assert report["p50"] == 30.0
    assert report["max"] == 500
    assert report["truncated"] == 2
    assert report["truncated_fraction"] == 0.4


def test_unknown_fraction_counts_tokens_the_vocabulary_lacks():
    unk = 100
    assert unknown_fraction([[101, unk, 7, 102], [101, unk, unk, 102]], unk) == 0.375
    assert unknown_fraction([[101, 102]], unk) == 0.0
