"""BERT's forward pass for what reads [CLS] alone: BertForSequenceClassification's head (its pooler takes
position 0) and embed's `pooling: cls` features.

Every layer runs as inside BertModel, except the top one, which computes position 0 only: its keys and values
still come from every token, but its query, attention output and feed-forward block run for one position
instead of all, about a sixth of the layer's work. The result is the model's own to float rounding
(tests/test_finetune.py, tests/test_encoder.py); models other than BERT run their own forward instead.
"""

import torch
import torch.nn.functional as F
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertLayer


def runs_for_cls(base: torch.nn.Module) -> bool:
    """Whether `base` (a BertModel, or a model's base_model) is one this module computes: BERT layers, no decoder."""
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    return bool(layers) and all(type(layer) is BertLayer for layer in layers) and not base.config.is_decoder


def embeddings(base: torch.nn.Module, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
    """The hidden states entering layer 0, as BertModel.forward computes them."""
    return base.embeddings(input_ids=tokens["input_ids"], token_type_ids=tokens.get("token_type_ids"))


def layer_mask(base: torch.nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The mask BertModel.forward builds for its layers (transformers 5: padding keys masked out; None for sdpa
    when nothing is padded)."""
    return create_bidirectional_mask(config=base.config, inputs_embeds=hidden, attention_mask=attention_mask)


def run_layers(layers, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    for layer in layers:
        hidden = layer(hidden, mask)
    return hidden


def top_for_cls(layers, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """`layers` on the states entering the first of them, the last for [CLS] alone: [batch, 1, hidden]."""
    return cls_output(layers[-1], run_layers(layers[:-1], hidden, mask), mask)


def cls_output(layer: BertLayer, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """BertLayer.forward's output at position 0 alone, [batch, 1, hidden]."""
    attention = layer.attention.self
    cls = hidden[:, :1]

    def heads(x: torch.Tensor) -> torch.Tensor:  # [batch, positions, hidden] -> [batch, heads, positions, head size]
        return x.view(len(x), x.shape[1], -1, attention.attention_head_size).transpose(1, 2)

    context = F.scaled_dot_product_attention(
        heads(attention.query(cls)),
        heads(attention.key(hidden)),
        heads(attention.value(hidden)),
        attn_mask=None if mask is None else mask[:, :, :1],  # sdpa's boolean mask or eager's additive one
        dropout_p=attention.dropout.p if attention.training else 0.0,
        scale=attention.scaling,
    )
    attended = layer.attention.output(context.transpose(1, 2).reshape(len(cls), 1, -1), cls)
    return layer.output(layer.intermediate(attended), attended)
