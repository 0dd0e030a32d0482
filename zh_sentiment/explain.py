"""Why a model gave its label: each character's signed contribution toward the predicted label.

One meaning for every model. A model's score for its predicted label p is the logit difference

    f(x) = logit_p(x) - mean of the other labels' logits      (two labels: logit_p - logit_other, the log-odds)

and an explanation splits f(x) - f(reference) over the characters of the review: a positive score supports
p, a negative one speaks against it. The reference is a review with nothing in it: no n-gram for the
baseline, every token replaced by [PAD] (the [CLS]/[SEP] frame kept) for the BERT models.

- baseline (TF-IDF + logistic regression): f is linear in the TF-IDF vector x, so an n-gram's contribution is
  exactly its weight x_g times its coefficient d_g = w_p,g - mean of the other labels' w_g (two labels: the
  coefficient sklearn keeps, signed toward p). It is spread evenly over the characters of the n-gram's
  occurrences. The intercept is f(reference). The sum is exact.
- frozen head and fine-tuned: integrated gradients on the input (word) embeddings e, from the reference's
  embeddings e' to e: score(token) = sum over its embedding dimensions of (e - e') * the average gradient of f
  along the straight path, the average by Gauss-Legendre quadrature with `steps` nodes. A token's score goes
  to the characters it covers (a Latin word piece covers several). The sum approaches f(x) - f(reference)
  as steps grow (IG's completeness); `completeness_error` says how far it is, so a poor one is visible.

Spans are character offsets into the review as given (before the clean stage's normalisation, which the
models read), so `review[start:end] == text`. docs/explain.md has the full account.
"""

import copy
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from zh_sentiment.encoder import pool
from zh_sentiment.errors import PipelineError
from zh_sentiment.text import CONTROL, WHITESPACE, ZERO_WIDTH, normalize_text

DEFAULT_STEPS = 32  # Gauss-Legendre nodes: completeness within 5% on the models we measured (docs/explain.md)
MAX_STEPS = 256  # more buys nothing measurable (docs/explain.md) and a review would take minutes
MAX_BATCH_TOKENS = 2048  # path points x tokens per forward/backward pass: bounds memory, not the result
# an explanation is flagged when its scores miss f(x) - f(reference) by more than this share (at least 1 logit)
COMPLETENESS_TOLERANCE = 0.05


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    text: str
    score: float

    def record(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text, "score": round(self.score, 4)}


@dataclass(frozen=True)
class Explanation:
    label: int  # the predicted label's id
    probabilities: np.ndarray
    spans: list[Span]  # in reading order
    difference: float  # f(x): the predicted label's logit minus the mean of the others'
    reference: float  # f at the empty reference
    method: str  # "linear" or "integrated_gradients"
    steps: int | None  # integrated gradients' nodes

    @property
    def attributed(self) -> float:
        return float(sum(span.score for span in self.spans))

    @property
    def completeness_error(self) -> float:
        """How far the scores' sum misses f(x) - f(reference), in logits."""
        return abs(self.attributed - (self.difference - self.reference))

    def complete(self) -> bool:
        return self.completeness_error <= COMPLETENESS_TOLERANCE * max(1.0, abs(self.difference - self.reference))

    def strongest(self, count: int) -> list[Span]:
        """The `count` spans with the largest |score|, strongest first (none with a zero score)."""
        ranked = sorted((s for s in self.spans if s.score), key=lambda s: -abs(s.score))
        return ranked[:count]

    def summary(self) -> dict:
        """What the API and the files say about how well the scores add up."""
        return {
            "method": self.method,
            "steps": self.steps,
            "logit_difference": round(self.difference, 4),
            "reference_logit_difference": round(self.reference, 4),
            "attributed": round(self.attributed, 4),
            "completeness_error": round(self.completeness_error, 4),
        }


def incomplete_note(explanation: Explanation) -> str:
    return (
        f"explanation: the scores add up to {explanation.attributed:.3f} of the logit difference "
        f"{explanation.difference - explanation.reference:.3f} ({explanation.steps} integrated-gradient steps): "
        "read them as approximate, or ask for more steps"
    )


def normalized_positions(review: str) -> tuple[str, list[int]]:
    """normalize_text(review) and, for each of its characters, the index of the character of `review` it
    comes from (a collapsed run of whitespace: its first character)."""
    kept, origin, spaces = [], [], False
    for i, char in enumerate(review):
        if ZERO_WIDTH.fullmatch(char) or CONTROL.fullmatch(char):
            continue
        if WHITESPACE.fullmatch(char):
            if not spaces and kept:  # a leading run is stripped; a trailing one is dropped below
                kept.append(" ")
                origin.append(i)
            spaces = True
            continue
        spaces = False
        kept.append(char)
        origin.append(i)
    if kept and kept[-1] == " ":
        kept.pop()
        origin.pop()
    text = "".join(kept)
    assert text == normalize_text(review)[0], "normalized_positions must follow normalize_text"
    return text, origin


def target(logits: torch.Tensor, label: int) -> torch.Tensor:
    """f per row: the label's logit minus the mean of the others' (the log-odds for two labels)."""
    others = (logits.sum(-1) - logits[..., label]) / (logits.shape[-1] - 1)
    return logits[..., label] - others


class Cancelled(Exception):
    """An explanation stopped midway because nobody waits for it any more."""


class Explainer:
    method: str

    def explain(
        self, review: str, steps: int = DEFAULT_STEPS, label: int | None = None, cancelled=lambda: False
    ) -> Explanation:
        """The explanation of one review as given (normalised here as the models read it), toward `label`
        (default: the label the model predicts; a caller that scored the review already passes its label).
        `cancelled()` is asked between passes: true raises Cancelled (the server's client went away)."""
        text, origin = normalized_positions(review)
        if not text:
            raise ValueError("an empty review has nothing to explain")
        return self._explain(review, text, origin, steps, label, cancelled)

    def _explain(self, review, text, origin, steps, label, cancelled) -> Explanation:
        raise NotImplementedError


def spans_of(review: str, origin: list[int], pieces: list[tuple[int, int, float]]) -> list[Span]:
    """(start, end, score) in the normalised text as Spans of the review as given."""
    spans = []
    for start, end, score in pieces:
        first, last = origin[start], origin[end - 1] + 1
        spans.append(Span(first, last, review[first:last], float(score)))
    return spans


class LinearExplainer(Explainer):
    """The baseline: TF-IDF weight x coefficient per n-gram, spread over the characters it covers."""

    method = "linear"

    def __init__(self, vectorizer, model, num_labels: int):
        self.vectorizer, self.model, self.num_labels = vectorizer, model, num_labels
        self.low, self.high = vectorizer.ngram_range
        self.preprocess = vectorizer.build_preprocessor()  # lowercase, as the analyzer sees the text
        coef, intercept = model.coef_, model.intercept_
        if len(model.classes_) == 2:  # sklearn keeps one row, class 1's score against class 0's (fixed at 0)
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        self.coef, self.intercept = coef, intercept  # one row per class of model.classes_

    def direction(self, row: int) -> tuple[np.ndarray, float]:
        """d and b of f = d.x + b for the class in row `row` of classes_ (the classes train had)."""
        others = [i for i in range(len(self.coef)) if i != row]
        d = self.coef[row] - self.coef[others].mean(0)
        return d, float(self.intercept[row] - self.intercept[others].mean())

    def _explain(self, review, text, origin, steps, label, cancelled):
        x = self.vectorizer.transform([text])
        probabilities = np.zeros(self.num_labels)
        probabilities[self.model.classes_] = self.model.predict_proba(x)[0]
        label = int(probabilities.argmax()) if label is None else label
        if label not in self.model.classes_:  # a class train lacked: scored 0, never predicted
            raise ValueError(f"label {label}: the baseline was trained without it")
        d, b = self.direction(list(self.model.classes_).index(label))
        weights = dict(zip(x.indices.tolist(), x.data.tolist()))
        seen = self.preprocess(text)
        if len(seen) != len(text):  # lowercasing changed a length (e.g. İ): line the characters up one by one
            seen = "".join(self.preprocess(char)[:1] or char for char in text)
        occurrences: dict[int, list[tuple[int, int]]] = {}
        vocabulary = self.vectorizer.vocabulary_
        for n in range(self.low, self.high + 1):
            for i in range(len(seen) - n + 1):
                feature = vocabulary.get(seen[i : i + n])
                if feature is not None and feature in weights:
                    occurrences.setdefault(feature, []).append((i, n))
        scores = np.zeros(len(text))
        for feature, found in occurrences.items():
            share = weights[feature] * d[feature] / len(found)
            for i, n in found:
                scores[i : i + n] += share / n
        difference = float((x @ d)[0]) + b
        pieces = [(i, i + 1, scores[i]) for i in range(len(text))]
        return Explanation(label, probabilities, spans_of(review, origin, pieces), difference, b, self.method, None)


class GradientExplainer(Explainer):
    """Integrated gradients on the input embeddings of a BERT model (frozen head or fine-tuned).

    `logits(embeddings, inputs)` is the model's forward from word embeddings; `cut` shortens a long review to
    what its first max_length tokens can come from before it is tokenized (Classifier.readable).
    """

    method = "integrated_gradients"

    def __init__(
        self,
        embeddings: torch.nn.Embedding,
        logits: Callable[[torch.Tensor, dict], torch.Tensor],
        tokenizer,
        max_length: int,
        device: torch.device,
        keys: list[str],
        cut: Callable[[list[str]], list[str]] = lambda texts: texts,
    ):
        self.embeddings, self.logits, self.tokenizer = embeddings, logits, tokenizer
        self.max_length, self.device, self.keys, self.cut = max_length, device, keys, cut

    def _explain(self, review, text, origin, steps, label, cancelled):
        encoded = self.tokenizer(
            self.cut([text])[0],
            truncation=True,
            max_length=self.max_length,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
            verbose=False,
        )
        inputs = {key: encoded[key].to(self.device) for key in self.keys if key in encoded}
        ids, special = encoded["input_ids"].to(self.device), encoded["special_tokens_mask"][0].bool()
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        reference_ids = torch.where(special.to(self.device), ids, torch.full_like(ids, pad))
        with torch.no_grad():
            start, end = self.embeddings(reference_ids), self.embeddings(ids)  # [1, tokens, hidden]
            ends = self.logits(torch.cat([start, end]), repeat(inputs, 2)).float()
        probabilities = torch.softmax(ends[1], -1).cpu().numpy()
        label = int(probabilities.argmax()) if label is None else label
        f = target(ends, label)
        nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]: moved to [0, 1] below
        alphas = torch.tensor((nodes + 1) / 2, dtype=start.dtype, device=self.device)
        weights = torch.tensor(weights / 2, dtype=torch.float32, device=self.device)
        gradient = torch.zeros(start.shape[1:], dtype=torch.float32, device=self.device)
        per_pass = max(1, MAX_BATCH_TOKENS // ids.shape[1])
        for first in range(0, steps, per_pass):
            if cancelled():
                raise Cancelled
            alpha = alphas[first : first + per_pass]
            points = (start + alpha[:, None, None] * (end - start)).requires_grad_(True)
            with torch.enable_grad():
                value = target(self.logits(points, repeat(inputs, len(alpha))).float(), label)
                (grad,) = torch.autograd.grad(value.sum(), points)
            gradient += (weights[first : first + per_pass, None, None] * grad.float()).sum(0)
        scores = ((end - start)[0].float() * gradient).sum(-1).cpu().numpy()
        offsets = encoded["offset_mapping"][0].tolist()
        pieces = [(a, b, scores[i]) for i, (a, b) in enumerate(offsets) if not special[i] and b > a]
        spans = spans_of(review, origin, pieces)
        return Explanation(label, probabilities, spans, float(f[1]), float(f[0]), self.method, steps)


def repeat(inputs: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {key: value.expand(n, -1) for key, value in inputs.items()}


def finetuned_explainer(model, tokenizer, max_length: int, keys: list[str], cut=lambda texts: texts):
    """A *ForSequenceClassification model: its own forward from inputs_embeds."""
    device = next(model.parameters()).device

    def logits(embeddings, inputs):
        return model(inputs_embeds=embeddings, **inputs).logits

    return GradientExplainer(model.get_input_embeddings(), logits, tokenizer, max_length, device, keys, cut)


def frozen_head_explainer(
    encoder, head, pooling: str, tokenizer, max_length: int, keys: list[str], cut=lambda texts: texts
):
    """The frozen encoder's pooled features through the linear head (the whole encoder runs: the same
    features as embed's [CLS]-only top layer, to float rounding)."""
    device = next(encoder.parameters()).device

    def logits(embeddings, inputs):
        hidden = encoder(inputs_embeds=embeddings, **inputs).last_hidden_state
        return head(pool(hidden, inputs["attention_mask"], pooling).to(head.weight.device))

    return GradientExplainer(encoder.get_input_embeddings(), logits, tokenizer, max_length, device, keys, cut)


def explainer_for(classifier, own_thread: bool = False) -> Explainer:
    """The explainer of a loaded Classifier (zh_sentiment.inference) of any kind.

    own_thread: for a thread beside the one that scores (the server): a copy of the tokenizer, as a fast
    tokenizer must not be used from two threads at once, and no cut of long texts (the server bounds them).
    """
    if classifier.kind == "baseline":
        steps = classifier.pipeline.named_steps
        return LinearExplainer(steps["tfidf"], steps["classifier"], len(classifier.label_names))
    if classifier.runtime != "torch":
        # ONNX Runtime gives no gradients: explain the PyTorch fp32 model that the export was validated against
        # (its logits within the bound model.json records)
        classifier = classifier.in_torch()
    if classifier.precision == "int8":
        raise PipelineError(
            "explanations need gradients, which int8 (dynamic quantization) does not give: "
            "load the model with --precision fp32 (or bf16) to explain."
        )
    keys = [key for key in classifier.inputs if key != "input_ids"]  # the ids enter as embeddings
    tokenizer = copy.deepcopy(classifier.tokenizer) if own_thread else classifier.tokenizer
    cut = (lambda texts: texts) if own_thread else classifier.readable
    if classifier.kind == "finetuned":
        return finetuned_explainer(in_fp32(classifier.model), tokenizer, classifier.max_length, keys, cut)
    encoder, pooling = in_fp32(classifier.encoder), classifier.info["pooling"]
    return frozen_head_explainer(encoder, classifier.head, pooling, tokenizer, classifier.max_length, keys, cut)


def in_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """The model, or an fp32 copy of a bf16/fp16 one: their rounding is coarser than what integrated gradients
    add up (a bf16 frozen head of the test fixtures gives a logit difference 2 logits off its fp32 copy's), so
    the explanation is of the fp32 model, whose scores differ from the served ones by as much."""
    if next(model.parameters()).dtype == torch.float32:
        return model
    return copy.deepcopy(model).float()


def top_characters(explanation: Explanation, count: int = 5) -> str:
    """The spans that pushed most toward the explained label, for reading: "差 +0.812, 太 +0.421"."""
    supporting = [span for span in explanation.strongest(len(explanation.spans)) if span.score > 0][:count]
    return ", ".join(f"{span.text} {span.score:+.3f}" for span in supporting)


REPORT_STEPS = 16  # the stages' steps: within 1% of complete on the models we measured, at half the time


def mistakes(explainer: Explainer) -> Callable[[str, int], str]:
    """What the stages give report.write_test_report: a review's top characters toward a (wrong) label."""
    return lambda text, label: top_characters(explainer.explain(text, REPORT_STEPS, label))


def without(review: str, spans: list[Span]) -> str:
    """`review` with the characters of `spans` removed."""
    gone = set()
    for span in spans:
        gone.update(range(span.start, span.end))
    return "".join(char for i, char in enumerate(review) if i not in gone)


def deletion_drops(
    explainer: Explainer,
    probability: Callable[[list[str]], np.ndarray],
    reviews: list[str],
    share: float = 0.1,
    draws: int = 5,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
) -> tuple[np.ndarray, np.ndarray]:
    """The deletion test, per review: how much the predicted label's probability drops when its top-k spans
    by attribution are removed, and on average when k random spans are (k = share of its spans, at least 1).

    `probability(texts)` gives each text's probabilities [len(texts), labels], as the model scores them.
    """
    rng = random.Random(seed)
    top, rand = [], []
    for review in reviews:
        explanation = explainer.explain(review, steps)
        spans = explanation.spans
        k = max(1, math.ceil(share * len(spans)))
        ranked = sorted(spans, key=lambda s: -s.score)
        texts = [review, without(review, ranked[:k])] + [without(review, rng.sample(spans, k)) for _ in range(draws)]
        p = probability(texts)[:, explanation.label]
        top.append(p[0] - p[1])
        rand.append(float(np.mean(p[0] - p[2:])))
    return np.array(top), np.array(rand)
