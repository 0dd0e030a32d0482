"""Apply a trained model to new reviews: the Python API behind `zh-sentiment predict` and `serve`.

    from zh_sentiment.inference import choose_model, load_model
    folder, reason = choose_model()                 # the best trained model by validation accuracy
    classifier = load_model(folder)
    logits, notes = classifier.score(["这家酒店很干净", "书的质量太差了"])

Every kind of model folder (baseline, frozen_head, finetuned) loads into a Classifier with the
same interface: `score` normalises the texts as the clean stage does, batches them longest first
and returns raw scores (logits; a row's softmax is its probabilities) and, per text, notes in
plain words: empty, truncated, unknown tokens. Loading checks the folder first (open_model_folder:
model.json, no code, the files the model was trained with, the labels, the fingerprint), then
loads the model into memory from the very bytes it checked: `changed_on_disk` says which of those
files differ on disk since.
"""

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from zh_sentiment.baseline import baseline_from_bytes, check_classes
from zh_sentiment.classifier import head_from_bytes, weights_folder
from zh_sentiment.encoder import (
    TOKEN_INPUTS,
    choose_device,
    encode,
    encode_texts,
    forward_inputs,
    load_checked,
    load_tokenizer,
    pool,
    refuse_remote_code,
    to_precision,
)
from zh_sentiment.errors import PipelineError
from zh_sentiment.model_folder import (
    MODEL_NAMES,
    ONNX_FILES,
    LoadedFiles,
    OpenedFolder,
    check_finetuned,
    check_fingerprint,
    non_finite_weights,
    payload,
    read_info,
    verify_files,
)
from zh_sentiment.paths import (
    BASELINE,
    BASELINE_FILE,
    FINETUNED,
    FROZEN_HEAD,
    HEAD_FILE,
    INFO_FILE,
    MODELS_DIR,
    model_metrics,
)
from zh_sentiment.precision import choose_precision
from zh_sentiment.runtime import RUNTIMES, Logits, OnnxLogits, cached_decision, probe, probe_inputs, probe_key, reason
from zh_sentiment.text import normalize_text

__all__ = ["MODEL_NAMES", "Classifier", "Note", "choose_model", "load_model", "open_model_folder"]

UNKNOWN_NOTE = 0.05  # as the tokenize stage warns: a model that knows under 95% of a review's tokens guesses
CHARS_PER_TOKEN = 8  # a review is cut at this many characters per token read before it is tokenized
# On a CPU a forward pass costs about what its padded tokens cost, and little per pass: 16 reviews of the
# length mix ran about 3x faster cut into passes at least 80% filled than as one (benchmark: serving).
# A GPU's pass costs little more for padding until the GPU is full.
CPU_MIN_FILL = 0.8


@dataclass(frozen=True)
class Note:
    """Something a person should know about one review's score. code: empty, truncated, unknown_tokens, all_unknown."""

    code: str
    message: str


def token_batches(
    lengths: list[int], batch_size: int, max_batch_tokens: int | None, min_fill: float = 0.0
) -> list[list[int]]:
    """Indices in batches, longest first, of at most batch_size reviews and (padded) max_batch_tokens tokens.

    A review shorter than min_fill of its batch's width starts a new batch, so that at least that share
    of every row is the review's own tokens, not padding.
    """
    batches, batch = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        # sorted longest first: the batch's first review sets its padded width
        width = lengths[batch[0]] if batch else lengths[i]
        full = len(batch) == batch_size or (max_batch_tokens and (len(batch) + 1) * width > max_batch_tokens)
        if batch and (full or lengths[i] < min_fill * width):
            batches.append(batch)
            batch = []
        batch.append(i)
    return batches + [batch] if batch else batches


class Classifier:
    """A trained model folder, ready to score reviews."""

    kind: str
    max_length: int | None
    runtime: str  # what runs the forward pass: torch, onnx, onnx-int8 (scikit-learn for the baseline)
    runtime_reason: str  # why, in words

    def __init__(self, opened: OpenedFolder):
        folder, info = opened.folder, opened.info
        self.folder, self.info, self.loaded_from = folder, info, opened.files
        self.label_names: list[str] = info["label_names"]
        self.max_length = info["max_length"]
        if info["test"] is None:  # the frozen head is measured by its own stage (evaluate), into metrics/
            metrics = folder.parent.parent / model_metrics(info["kind"])
            if folder.parent.name == MODELS_DIR.name and folder.name == info["kind"] and metrics.is_file():
                self.info = {**info, "test": json.loads(metrics.read_text(encoding="utf-8"))}

    def changed_on_disk(self) -> list[str]:
        """The files the model was loaded from (model.json among them) that now differ on disk: what a new
        load would read, or refuse. Empty while the folder is as loaded. Cheap: a file is hashed again only
        when its os.stat changed."""
        return self.loaded_from.changed()

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Each text's cost in a batch: its tokens after truncation (characters for the baseline)."""
        raise NotImplementedError

    def score(
        self, texts: list[str], batch_size: int = 32, max_batch_tokens: int | None = None
    ) -> tuple[np.ndarray, list[list[Note]]]:
        """Raw scores [len(texts), num_labels] (float32 logits) and each text's notes."""
        texts = [normalize_text(str(text))[0] for text in texts]
        notes = [[] if text else [Note("empty", "empty review: there is no text to classify")] for text in texts]
        logits = np.zeros((len(texts), len(self.label_names)), dtype=np.float32)
        if texts:
            self._score(texts, logits, notes, batch_size, max_batch_tokens)
        if not np.isfinite(logits).all():
            raise PipelineError(
                f"{self.folder}: the model gives non-finite scores (NaN or inf): it is broken. Train it again."
            )
        return logits, notes

    def _score(self, texts, logits, notes, batch_size, max_batch_tokens) -> None:
        raise NotImplementedError


class Baseline(Classifier):
    kind = "baseline"
    runtime, runtime_reason = "scikit-learn", "the baseline is a scikit-learn pipeline"

    def __init__(self, opened: OpenedFolder):
        super().__init__(opened)
        path = self.folder / BASELINE_FILE
        self.pipeline = baseline_from_bytes(opened.take(path), path)
        check_classes(self.pipeline.named_steps["classifier"].classes_, len(self.label_names), path)

    def count_tokens(self, texts: list[str]) -> list[int]:
        return [len(text) for text in texts]

    def _score(self, texts, logits, notes, batch_size, max_batch_tokens) -> None:
        x = self.pipeline.named_steps["tfidf"].transform(texts)
        model = self.pipeline.named_steps["classifier"]
        probabilities = np.full((len(texts), len(self.label_names)), 1e-12)
        probabilities[:, model.classes_] = np.maximum(model.predict_proba(x), 1e-12)
        logits[:] = np.log(probabilities)  # log-probabilities: raw scores whose softmax is the probabilities
        for i, text in enumerate(texts):
            if text and x[i].nnz == 0:
                notes[i].append(
                    Note("all_unknown", "no character sequence of this review occurs in the training data: a guess")
                )


class Encoded(Classifier):
    """The models that read tokens: the frozen head and the fine-tuned model."""

    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    precision: str  # PyTorch's; fp32 or int8 for the ONNX runtimes
    logits: Logits  # the forward pass of the runtime chosen: token tensors -> logits

    def choose_runtime(self, opened: OpenedFolder, device: str, precision: str | None, runtime: str, quiet: bool):
        """Load the model in `runtime`; `auto`: the fastest this folder has (PyTorch, and the exports that passed
        validation: model.json's onnx), measured once per machine (zh_sentiment/runtime.py)."""
        if runtime not in RUNTIMES:
            raise PipelineError(f"--runtime {runtime}: expected one of {', '.join(RUNTIMES)}.")
        exported = [name for name in ONNX_FILES if name in (opened.info.get("onnx") or {})]
        if runtime == "auto":
            wanted, why = self.auto_candidates(exported, device, precision)
        elif runtime == "torch":
            wanted, why = ["torch"], "asked for (--runtime torch)"
        else:
            wanted, why = [runtime], f"asked for (--runtime {runtime})"
            self.check_onnx(opened, runtime, device, precision)
        key = None
        if len(wanted) > 1:
            self.device, self.precision = settings(device, precision, opened.info["precision"], quiet=True)
            key = probe_key(self.shape(), [f"torch {self.precision}", *wanted[1:]])
            decision = cached_decision(key)
            if decision is not None:
                wanted, why = [decision["choice"]], reason(decision, cached=True)
        found = {}
        for name in wanted:
            if name == "torch":
                self.device, self.precision = settings(device, precision, opened.info["precision"], quiet)
                found[name] = self.load_torch(opened)
            else:
                found[name] = OnnxLogits(opened.take(self.folder / ONNX_FILES[name]), self.folder / ONNX_FILES[name])
        if len(found) > 1:
            decision = probe(key, found, probe_inputs(self.config.vocab_size, self.inputs))
            why = reason(decision, cached=False)
        self.runtime, self.runtime_reason = next(iter(found)) if len(found) == 1 else decision["choice"], why
        self.logits = found[self.runtime]
        if self.runtime != "torch":
            self.device, self.precision = torch.device("cpu"), "int8" if self.runtime == "onnx-int8" else "fp32"
            self.inputs = self.logits.inputs
            self.drop_torch()

    def auto_candidates(self, exported: list[str], device: str, precision: str | None) -> tuple[list[str], str]:
        if not exported:
            return ["torch"], "no ONNX export in model.json (zh-sentiment export writes one)"
        if precision is not None:
            return ["torch"], "--precision applies to PyTorch"
        if choose_device(device, "--device").type != "cpu":
            return ["torch"], f"ONNX Runtime runs on the CPU here, and --device {device} is not the CPU"
        return ["torch", *exported], ""

    def check_onnx(self, opened: OpenedFolder, runtime: str, device: str, precision: str | None) -> None:
        if runtime not in (opened.info.get("onnx") or {}):
            raise PipelineError(
                f"--runtime {runtime}: {self.folder / INFO_FILE} records no validated {ONNX_FILES[runtime]}. "
                f"Export it first: zh-sentiment export --model-dir {self.folder}"
                + (" --int8" if runtime == "onnx-int8" else "")
            )
        if precision is not None:
            raise PipelineError(
                f"--precision applies to --runtime torch; --runtime {runtime} runs the exported "
                f"{'int8' if runtime == 'onnx-int8' else 'fp32'} model. Leave --precision out."
            )
        if choose_device(device, "--device").type != "cpu":
            raise PipelineError(
                f"--runtime {runtime} runs on the CPU (onnxruntime); use --device cpu or --runtime torch."
            )

    def shape(self) -> str:
        """What the speed of a forward pass depends on, besides the machine: the architecture and its sizes."""
        c = self.config
        sizes = f"{c.num_hidden_layers} layers, {c.hidden_size} hidden, {c.intermediate_size} intermediate"
        return f"{self.kind} {c.model_type} ({sizes}), {self.info['pooling']} pooling, torch {self.precision}"

    def load_torch(self, opened: OpenedFolder) -> Logits:
        raise NotImplementedError

    def drop_torch(self) -> None:
        """Free the PyTorch model a probe loaded, once another runtime is chosen."""

    def in_torch(self) -> "Encoded":
        """This model in PyTorch fp32 on the CPU, loaded again from its folder (with every check): what explains
        a model served by ONNX Runtime, which gives no gradients."""
        return load_model(self.folder, "cpu", "fp32", runtime="torch")

    def readable(self, texts: list[str]) -> list[str]:
        """Each text cut to what its first max_length tokens can come from, so that a 1 MB "review" is not
        tokenized whole: every token takes at least one character, so text[:CHARS_PER_TOKEN * max_length]
        nearly always holds them; where it does not (words of over CHARS_PER_TOKEN characters), the whole text."""
        limit = CHARS_PER_TOKEN * self.max_length
        cut = [text[:limit] for text in texts]
        lengths = self.count_tokens_of(cut)
        return [
            text if len(text) > limit and length < self.max_length else short
            for text, short, length in zip(texts, cut, lengths)
        ]

    def count_tokens_of(self, texts: list[str]) -> list[int]:
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_length, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def count_tokens(self, texts: list[str]) -> list[int]:
        return self.count_tokens_of(self.readable(texts))

    def _score(self, texts, logits, notes, batch_size, max_batch_tokens) -> None:
        readable = self.readable(texts)
        tokens = encode_texts(self.tokenizer, readable, self.max_length)
        self._note_tokens(texts, readable, tokens, notes)
        lengths = tokens["lengths"].tolist()
        min_fill = CPU_MIN_FILL if self.device.type == "cpu" else 0.0
        for batch in token_batches(lengths, batch_size, max_batch_tokens, min_fill):
            width = max(lengths[i] for i in batch)
            index = torch.tensor(batch)
            inputs = {key: tokens[key][index, :width].to(self.device, torch.long) for key in self.inputs}
            with torch.inference_mode():
                logits[batch] = self.logits(inputs).float().cpu().numpy()

    def _note_tokens(self, texts: list[str], readable: list[str], tokens: dict, notes: list[list[Note]]) -> None:
        """Truncated reviews and reviews the vocabulary hardly knows, as tokenize reports them for the data."""
        ids, mask = tokens["input_ids"], tokens["attention_mask"].bool()
        unk = self.tokenizer.unk_token_id
        special = torch.tensor([i for i in self.tokenizer.all_special_ids if i != unk])  # [CLS], [SEP], [PAD]
        unknown = (ids == unk).sum(1)
        words = (mask & ~torch.isin(ids, special)).sum(1)
        full = self.tokenizer(readable, add_special_tokens=False, verbose=False)["input_ids"]
        for i, text in enumerate(texts):
            if not text:
                continue
            if len(full[i]) > words[i] or len(readable[i]) < len(text):
                notes[i].append(
                    Note(
                        "truncated",
                        f"long review ({len(text):,} characters): only its first {int(words[i])} tokens were read",
                    )
                )
            share = int(unknown[i]) / max(int(words[i]), 1)
            if words[i] and share == 1:
                notes[i].append(Note("all_unknown", "the model knows none of this review's characters: a guess"))
            elif share > UNKNOWN_NOTE:
                notes[i].append(Note("unknown_tokens", f"the model does not know {share:.0%} of this review's tokens"))

    def check_max_length(self, config, where: str) -> None:
        if self.max_length > config.max_position_embeddings:
            raise PipelineError(
                f"{self.folder / INFO_FILE}: max_length = {self.max_length} is more than {where} takes "
                f"({config.max_position_embeddings} positions). Set max_length to {config.max_position_embeddings} "
                "or less there, or train the model again."
            )


class FrozenHead(Encoded):
    kind = "frozen_head"

    def __init__(
        self, opened: OpenedFolder, device: str, precision: str | None, runtime: str = "torch", quiet: bool = False
    ):
        super().__init__(opened)
        folder, info, encoder_folder = opened.folder, opened.info, opened.encoder_folder
        self.source = f"'model' in {folder / INFO_FILE}"
        # from the folder whose files were checked (a hub id's cached snapshot): never a newer download
        self.tokenizer = load_tokenizer(str(encoder_folder), self.source)
        self.config = AutoConfig.from_pretrained(encoder_folder, trust_remote_code=False)
        self.check_max_length(self.config, f"the encoder at {info['model']}")
        self.inputs = [key for key in TOKEN_INPUTS if key in self.tokenizer.model_input_names]
        self.choose_runtime(opened, device, precision, runtime, quiet)

    def load_torch(self, opened: OpenedFolder) -> Logits:
        folder, info, encoder_folder = opened.folder, opened.info, opened.encoder_folder
        self.head = head_from_bytes(opened.take(folder / HEAD_FILE), folder / HEAD_FILE, info["num_labels"])
        encoder = load_checked(encoder_folder, opened.take_weights(encoder_folder), self.source)
        self.encoder = to_precision(encoder.eval().requires_grad_(False), self.device, self.precision)
        self.inputs = forward_inputs(self.encoder)
        if self.head.in_features != self.encoder.config.hidden_size:
            raise PipelineError(
                f"{folder / HEAD_FILE} takes {self.head.in_features} features but the encoder gives "
                f"{self.encoder.config.hidden_size}. Copy the whole model folder again, or train the model again."
            )
        return self.torch_logits

    def torch_logits(self, inputs):
        hidden, _ = encode(self.encoder, inputs, self.info["pooling"], states_layer=None)
        return self.head(pool(hidden, inputs["attention_mask"], self.info["pooling"]).cpu())

    def drop_torch(self) -> None:
        self.encoder = self.head = None


class FineTuned(Encoded):
    kind = "finetuned"

    def __init__(
        self, opened: OpenedFolder, device: str, precision: str | None, runtime: str = "torch", quiet: bool = False
    ):
        super().__init__(opened)
        self.tokenizer = load_tokenizer(str(self.folder), f"model folder {self.folder}")
        self.config = AutoConfig.from_pretrained(self.folder, trust_remote_code=False)
        self.check_max_length(self.config, "the model")
        self.inputs = [key for key in TOKEN_INPUTS if key in self.tokenizer.model_input_names]
        self.choose_runtime(opened, device, precision, runtime, quiet)

    def load_torch(self, opened: OpenedFolder) -> Logits:
        folder = opened.folder
        # its labels are config.json's id2label, checked against model.json's label_names
        model = load_checked(
            folder, opened.take_weights(folder), f"model folder {folder}", AutoModelForSequenceClassification
        )
        bad = non_finite_weights(model)
        if bad:
            raise PipelineError(f"{folder}: {len(bad)} weight tensors are NaN or inf (e.g. {bad[0]}): train it again.")
        self.model = to_precision(model.eval().requires_grad_(False), self.device, self.precision)
        self.inputs = [key for key in TOKEN_INPUTS if key in forward_inputs(model)]
        return self.torch_logits

    def torch_logits(self, inputs):
        return self.model(**inputs).logits

    def drop_torch(self) -> None:
        self.model = None


def settings(device_name: str, requested: str | None, recorded: str, quiet: bool = False) -> tuple[torch.device, str]:
    """The device, and the precision: the one the model was trained with unless `requested` says otherwise.

    Features in another precision differ (int8 against fp32: centred cosine 0.89), so an override warns
    (unless `quiet`: the export compares with fp32 on purpose).
    """
    if requested is None and recorded == "int8" and device_name == "auto":
        device_name = "cpu"  # int8 (dynamic quantization) runs on the CPU only
    device = choose_device(device_name, "--device")
    precision = choose_precision(requested or recorded, device, "predict")
    if precision != recorded and not quiet:
        print(
            f"warning: precision {precision} (--precision) differs from the {recorded} the model was trained and "
            "measured with (model.json): scores may differ from the evaluated ones.",
            file=sys.stderr,
        )
    return device, precision


def open_model_folder(folder: Path) -> OpenedFolder:
    """Every check of a model folder of any kind, before anything in it is loaded: model.json's schema, no
    custom code, the sha256 of each file that shapes the output (its own, and a frozen head's encoder's),
    a fine-tuned model's labels against its config.json, and the fingerprint recomputed. The rules are
    zh_sentiment/model_folder.py's; each refusal names the file and what to do."""
    folder = Path(folder)
    info_file = folder / INFO_FILE
    files = LoadedFiles()
    info = read_info(folder, files)
    refuse_remote_code(folder, f"model folder {folder}")
    contents = verify_files(info["files"], folder, "the model folder", info_file, files)
    encoder_folder = None
    if info["kind"] == FROZEN_HEAD:
        encoder_folder = weights_folder(info["model"])
        refuse_remote_code(encoder_folder, f"'model' in {info_file}")
        contents |= verify_files(info["encoder_files"], encoder_folder, "the encoder", info_file, files)
    if info["kind"] == FINETUNED:
        check_finetuned(info, contents.get(folder / "config.json"), folder)
    check_fingerprint(info, info_file)
    return OpenedFolder(folder, info, encoder_folder, files, payload(contents))


def load_model(folder: Path, device: str = "auto", precision: str | None = None, runtime: str = "torch") -> Classifier:
    """The model in `folder` (any kind), checked, then loaded into memory in `runtime` (RUNTIMES); a
    PipelineError names what is wrong and what to do."""
    opened = open_model_folder(folder)
    kind = opened.info["kind"]
    if kind == BASELINE:
        if precision is not None:
            raise PipelineError("--precision applies to the BERT models; the baseline has none.")
        if runtime not in ("auto", "torch"):
            raise PipelineError(f"--runtime {runtime} applies to the BERT models; the baseline runs in scikit-learn.")
        classifier = Baseline(opened)
    else:
        classifier = (FrozenHead if kind == FROZEN_HEAD else FineTuned)(opened, device, precision, runtime)
    changed = classifier.changed_on_disk()
    if changed:  # written to while it loaded: what was checked may not be all of what was loaded
        raise PipelineError(
            f"{', '.join(changed)} changed while the model in {opened.folder} was loading. Load it again once "
            "nothing writes to the folder."
        )
    return classifier


def choose_model(models_dir: Path = MODELS_DIR, name: str | None = None) -> tuple[Path, str]:
    """The folder of the model `name`, or of the trained model with the best validation accuracy
    (ties: the cheaper one, in MODEL_NAMES' order), and the reason, in words."""
    if name is not None:
        if name not in MODEL_NAMES:
            raise PipelineError(f"--model {name}: expected one of {', '.join(MODEL_NAMES)}.")
        return models_dir / name, "chosen with --model"
    trained = {}
    for kind in MODEL_NAMES:
        if (models_dir / kind / INFO_FILE).is_file():
            trained[kind] = read_info(models_dir / kind)["validation"]["accuracy"]
    if not trained:
        raise PipelineError(
            f"no trained model in {models_dir}/ ({', '.join(MODEL_NAMES)}): run `dvc repro` first, "
            "or pass --model-dir with a trained model folder."
        )
    best = max(trained, key=lambda kind: (trained[kind], -MODEL_NAMES.index(kind)))
    ranking = ", ".join(f"{kind} {accuracy:.4f}" for kind, accuracy in sorted(trained.items(), key=lambda kv: -kv[1]))
    return models_dir / best, f"the best validation accuracy of the trained models ({ranking})"
