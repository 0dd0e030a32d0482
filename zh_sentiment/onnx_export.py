"""zh-sentiment export: a trained BERT model as ONNX (and int8) beside its Hugging Face files, validated.

    zh-sentiment export --model finetuned --int8          # models/finetuned/onnx/model.onnx, model_quantized.onnx
    zh-sentiment export --model-dir path/to/frozen_head --validation reviews.csv

The files take Optimum's layout (onnx/model.onnx, onnx/model_quantized.onnx), so Optimum's
ORTModelForSequenceClassification loads a fine-tuned folder as it is. The graph maps the tokenizer's
inputs (batch and sequence length free) to the logits: for the frozen head, encoder, pooling and head
in one. The exporter is torch's own (torch.onnx.export, dynamo), the int8 model onnxruntime's dynamic
quantization (int8 weights, activations quantized per batch as they come: no calibration data).

Each file is validated before it is kept: its logits against PyTorch fp32's on the validation split
(and the test split, where there is one), batched as predict batches them. A file is refused beyond
its bound (BOUNDS): fp32 must give the same logits up to float rounding, int8 the same labels. The
figures go into model.json's `onnx`, and the files' sha256 into its `files`: the fingerprint covers
them, and a changed or swapped file is refused on load. See docs/onnx.md.
"""

import argparse
import hashlib
import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from zh_sentiment.encoder import pool
from zh_sentiment.errors import PipelineError
from zh_sentiment.inference import MODEL_NAMES, Encoded, FineTuned, FrozenHead, open_model_folder
from zh_sentiment.model_folder import ONNX_FILES, fingerprint, validate_info, write_info
from zh_sentiment.outputs import atomic_dir
from zh_sentiment.paths import BASELINE, CLEAN_DIR, FROZEN_HEAD, INFO_FILE, MODELS_DIR
from zh_sentiment.progress import tqdm
from zh_sentiment.runtime import OnnxLogits
from zh_sentiment.tables import read_table, require_columns

OPSET = 18
# fp32: the same computation in another engine; differences are float rounding (measured: about 1e-6)
MAX_FP32_DIFFERENCE = 1e-3
# int8 moves logits by design (bert-base, random weights: 0.016); what must hold is the answer
MIN_INT8_AGREEMENT = 0.99
BOUNDS = {"onnx": f"max |logit difference| <= {MAX_FP32_DIFFERENCE:g}", "onnx-int8": "label agreement >= 99%"}


class Logits(torch.nn.Module):
    """The classifier's PyTorch forward pass as one module of the token inputs: what the exporter traces."""

    def __init__(self, classifier: Encoded):
        super().__init__()
        self.classifier, self.names = classifier, list(classifier.inputs)
        # registered, so that the exporter sees their weights as the graph's parameters
        self.parts = torch.nn.ModuleList(
            [classifier.encoder, classifier.head] if classifier.kind == FROZEN_HEAD else [classifier.model]
        )

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        inputs = {name: given[name] for name in self.names}
        if self.classifier.kind != FROZEN_HEAD:
            return self.classifier.torch_logits(inputs)
        # the encoder's own forward, not predict's [CLS]-only top layer (zh_sentiment/cls_forward.py), which sizes
        # its tensors with Python ints: the exporter would fix the batch size. The same logits to float rounding.
        pooling = self.classifier.info["pooling"]
        hidden = self.classifier.encoder(**inputs).last_hidden_state
        return self.classifier.head(pool(hidden, inputs["attention_mask"], pooling))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zh-sentiment export", description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", choices=[name for name in MODEL_NAMES if name != BASELINE], help="a model in models/")
    which.add_argument("--model-dir", type=Path, help="a trained model folder, wherever it is")
    parser.add_argument("--int8", action="store_true", help="also write onnx/model_quantized.onnx (dynamic int8)")
    parser.add_argument(
        "--validation",
        type=Path,
        default=CLEAN_DIR / "validation.csv",
        help="reviews to validate the export on: a CSV/TSV with a text column, and a label column for accuracy "
        "(default: data/clean/validation.csv)",
    )
    parser.add_argument(
        "--test",
        type=Path,
        default=CLEAN_DIR / "test.csv",
        help="more reviews, measured and recorded but not a bound (default: data/clean/test.csv, where it exists)",
    )
    parser.add_argument("--text-column", default="text", help="(default: text)")
    parser.add_argument("--label-column", default="label", help="label ids or names; left out where absent")
    parser.add_argument("--batch-size", type=int, default=32, help="reviews per forward pass (default: 32)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def read_reviews(path: Path, args: argparse.Namespace, labels: list[str]) -> tuple[list[str], np.ndarray | None]:
    """The texts of `path` and, where it has the label column, their label ids."""
    from zh_sentiment.predict import label_ids  # the same rules as predict --label-column

    table = read_table(path, columns_param="--text-column")
    require_columns(list(table.columns), {"--text-column": args.text_column}, str(path), "--text-column")
    texts = table[args.text_column].fillna("").tolist()
    if args.label_column not in table.columns:
        return texts, None
    return texts, label_ids(table[args.label_column].tolist(), labels, f"{path}, --label-column")


def compare(reference: np.ndarray, exported: np.ndarray, labels: np.ndarray | None) -> dict:
    """How an export's logits compare with PyTorch's on the same reviews (and accuracy, given labels)."""
    found = {
        "n": len(reference),
        "max_abs_logit_difference": float(np.abs(reference - exported).max()),
        "label_agreement": float((reference.argmax(1) == exported.argmax(1)).mean()),
    }
    if labels is not None:
        found["accuracy"] = float((exported.argmax(1) == labels).mean())
        found["torch_accuracy"] = float((reference.argmax(1) == labels).mean())
    return {key: round(value, 6) if isinstance(value, float) else value for key, value in found.items()}


def passes(runtime: str, found: dict) -> bool:
    if runtime == "onnx":
        return found["max_abs_logit_difference"] <= MAX_FP32_DIFFERENCE
    return found["label_agreement"] >= MIN_INT8_AGREEMENT


@contextmanager
def running(classifier: Encoded, logits: OnnxLogits):
    """`classifier` scoring with the exported model's forward instead of PyTorch's, for the block."""
    torch_logits, torch_inputs = classifier.logits, classifier.inputs
    classifier.logits, classifier.inputs = logits, logits.inputs
    try:
        yield
    finally:
        classifier.logits, classifier.inputs = torch_logits, torch_inputs


def scores(classifier: Encoded, texts: list[str], batch_size: int, what: str) -> np.ndarray:
    """Logits of `texts` in chunks, with a progress bar: a validation split takes minutes on bert-base."""
    out = []
    with tqdm(total=len(texts), unit="review", desc=what) as bar:
        for start in range(0, len(texts), 256):
            out.append(classifier.score(texts[start : start + 256], batch_size)[0])
            bar.update(len(out[-1]))
    return np.concatenate(out)


def export_onnx(classifier: Encoded, texts: list[str], path: Path) -> None:
    """torch.onnx.export (dynamo) of the classifier's forward, batch and sequence length left free."""
    example = classifier.tokenizer(
        (texts * 2)[:2], padding=True, truncation=True, max_length=classifier.max_length, return_tensors="pt"
    )
    tokens = {name: example[name] for name in classifier.inputs}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=classifier.max_length)
    with torch.inference_mode(False), torch.no_grad(), quiet():
        torch.onnx.export(
            Logits(classifier).eval(),
            (),
            path,
            kwargs=tokens,
            input_names=list(tokens),
            output_names=["logits"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in tokens},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def quantize(source: Path, path: Path) -> None:
    """onnxruntime's dynamic quantization: int8 weights (QInt8: the u8 x s8 kernels that AVX2 and VNNI run),
    on MatMul, the layers that cost."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with quiet():  # it advises shape-inference pre-processing, which BERT's MatMuls do not need
        quantize_dynamic(source, path, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])


@contextmanager
def quiet():
    """The exporter's and quantizer's notes to developers (optional torchvision ops, axis renaming) off."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    folder = args.model_dir if args.model_dir is not None else MODELS_DIR / args.model
    opened = open_model_folder(folder)
    info = opened.info
    if info["kind"] == BASELINE:
        raise PipelineError(f"{folder} holds the baseline (scikit-learn): only the BERT models are exported to ONNX.")
    if info["precision"] == "int8":
        raise PipelineError(
            f"{folder / INFO_FILE}: the model was trained on PyTorch int8 features (precision int8), which ONNX "
            "Runtime does not reproduce. Train it with embed.precision auto or fp32 to export it."
        )
    if not args.validation.is_file():
        raise PipelineError(
            f"--validation {args.validation}: no such file. Run `dvc repro` first, or pass the reviews to validate "
            "the export on (a CSV with a text column)."
        )
    kind = FineTuned if info["kind"] != FROZEN_HEAD else FrozenHead
    reference = kind(opened, "cpu", "fp32", "torch", quiet=True)  # the reference: PyTorch, fp32 weights as saved
    splits = {"validation": read_reviews(args.validation, args, reference.label_names)}
    if args.test.is_file():
        splits["test"] = read_reviews(args.test, args, reference.label_names)
    expected = {
        split: scores(reference, texts, args.batch_size, f"PyTorch {split}") for split, (texts, _) in splits.items()
    }
    runtimes = ["onnx", "onnx-int8"] if args.int8 else ["onnx"]
    records, digests = {}, {}
    with atomic_dir(folder / "onnx") as out:
        print(f"export: tracing {folder} with torch.onnx.export ...", file=sys.stderr, flush=True)
        export_onnx(reference, splits["validation"][0], out / "model.onnx")
        if args.int8:
            quantize(out / "model.onnx", out / "model_quantized.onnx")
        for runtime in runtimes:
            name = ONNX_FILES[runtime]
            data = (out / Path(name).name).read_bytes()
            digests[name] = "sha256:" + hashlib.sha256(data).hexdigest()  # of the very bytes validated
            exported = OnnxLogits(data, folder / name)
            with running(reference, exported):
                found = {
                    split: compare(
                        expected[split], scores(reference, texts, args.batch_size, f"{runtime} {split}"), labels
                    )
                    for split, (texts, labels) in splits.items()
                }
            records[runtime] = {"file": name, "compared_with": "PyTorch fp32", "bound": BOUNDS[runtime], **found}
            if not passes(runtime, found["validation"]):
                raise PipelineError(
                    f"export: {name} differs from PyTorch beyond its bound ({BOUNDS[runtime]}) on "
                    f"{args.validation}: {found['validation']}. Nothing was written"
                    + (": export without --int8 for the fp32 file alone." if runtime == "onnx-int8" else ".")
                )
        if info.get("onnx"):
            # the files it records are about to be replaced: a crash from here on leaves a folder that loads
            write_info(folder, describe_onnx(info, folder, {}, {}))
    write_info(folder, describe_onnx(info, folder, records, digests))
    for runtime, record in records.items():
        shown = ", ".join(f"{split}: {record[split]}" for split in splits)
        print(f"export: {folder / record['file']} ({BOUNDS[runtime]}): {shown}")


def describe_onnx(info: dict, folder: Path, records: dict, digests: dict) -> dict:
    """model.json with these exports: their sha256 among `files`, their validation in `onnx`, a new fingerprint."""
    files = {name: digest for name, digest in info["files"].items() if name not in ONNX_FILES.values()}
    files |= {record["file"]: digests[record["file"]] for record in records.values()}
    record = {**info, "files": files, "onnx": records or None}
    return validate_info({**record, "fingerprint": fingerprint(record)}, folder / INFO_FILE)
