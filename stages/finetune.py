"""finetune: train the encoder's top finetune.layers layers (or all) with a linear head; measure it on test.

Reads data/states/ (the states entering the first trained layer, cached by embed) or, with
layers: all, data/tokens/; and the encoder's starting weights from model.name. Writes
models/finetuned/ (a standard Hugging Face sequence-classification folder, with model.json),
metrics/finetuned/history.csv, curves.png and training.json, and the test report
(metrics/finetuned.json and metrics/finetuned/*.csv, see zh_sentiment/report.py).

One process: `python -m stages.finetune`. Several (data-parallel, DDP; gloo on CPU, nccl on
CUDA): `torchrun --standalone --nproc_per_node N -m stages.finetune`; only rank 0 writes.
"""

import json
import os

import pandas as pd
import torch
import torch.distributed as dist
from transformers.utils import logging as transformers_logging

from zh_sentiment.encoder import choose_device, load_classification_model, load_tokenizer, use_all_cores
from zh_sentiment.errors import PipelineError, run
from zh_sentiment.finetune import FineTuned, Tokens, fit, log_probabilities
from zh_sentiment.model_folder import SELF, describe, non_finite_weights, write_info
from zh_sentiment.outputs import atomic_dir
from zh_sentiment.params import load_params
from zh_sentiment.paths import (
    CLEAN_DIR,
    FINETUNED,
    LABELS_FILE,
    STATES_DIR,
    STATES_FILE,
    TOKENIZATION_FILE,
    TOKENS_DIR,
    model_dir,
)
from zh_sentiment.report import write_test_report, write_training_report
from zh_sentiment.states import CachedStates, first_trained_layer


def start_processes(requested: str) -> tuple[int, int, torch.device]:
    """This process's rank, the number of processes (torchrun sets both) and its device."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = choose_device(requested, source="finetune.device")
    if world > 1 and device.type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise PipelineError(
                f"{os.environ['LOCAL_WORLD_SIZE']} processes on this machine but {torch.cuda.device_count()} GPU(s): "
                "set finetune.processes to the number of GPUs at most."
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cpu":
        use_all_cores()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        torch.set_num_threads(max(1, torch.get_num_threads() // local_world))  # share the cores, never oversubscribe
    return rank, world, device


def load_split(split: str, start: int | None, layers) -> CachedStates | Tokens:
    if start is None:
        return Tokens(TOKENS_DIR / f"{split}.safetensors")
    cached = json.loads(STATES_FILE.read_text(encoding="utf-8"))
    if cached["first_trained_layer"] != start:
        raise PipelineError(
            f"{STATES_DIR} holds the states for finetune.layers = {cached['layers']}, not {layers}: "
            "run `dvc repro` (embed writes them)."
        )
    return CachedStates(STATES_DIR / f"{split}.safetensors")


def check_finite(model: torch.nn.Module, probabilities: torch.Tensor) -> None:
    """A diverged run must leave no model behind: NaN weights would give NaN scores that look like answers."""
    bad = non_finite_weights(model)
    if bad or not probabilities.isfinite().all():
        what = f"{len(bad)} weight tensors (e.g. {bad[0]})" if bad else "its test scores"
        raise PipelineError(
            f"finetune: the trained model has non-finite {what}: training diverged. Lower finetune.lr, "
            "raise finetune.warmup_ratio or lower finetune.max_grad_norm, and run again."
        )


def save_model(model: torch.nn.Module, tokenizer, info: dict, folder) -> None:
    """models/finetuned, whole and atomically: a standard Hugging Face folder (config.json with id2label,
    model.safetensors, the tokenizer) that AutoModelForSequenceClassification and pipeline() load, and
    model.json with the sha256 of each of its files."""
    tokenizer.model_max_length = info["max_length"]  # pipeline() truncates where training did (truncation=True)
    transformers_logging.disable_progress_bar()  # "Writing model shards"
    with atomic_dir(folder) as out:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        write_info(out, describe(FINETUNED, info, out))


def main() -> None:
    all_params = load_params()
    params = all_params.finetune
    rank, world, device = start_processes(params.device)
    tokenization = json.loads(TOKENIZATION_FILE.read_text(encoding="utf-8"))
    label_names = json.loads(LABELS_FILE.read_text(encoding="utf-8"))["names"]
    torch.manual_seed(params.seed)  # the new head's (and a missing pooler's) initial weights: the same in every process
    classifier = load_classification_model(tokenization["model"], label_names)
    start = first_trained_layer(params.layers, classifier.config.num_hidden_layers)
    train, validation, test = (load_split(split, start, params.layers) for split in ("train", "validation", "test"))
    model = FineTuned(classifier, start).to(device)
    if rank == 0:
        what = "every layer" if start is None else f"layers {start + 1}..{classifier.config.num_hidden_layers}"
        print(f"finetune: {tokenization['model']}, {what} + head, {world} process(es) on {device}")

    best_state, best, history = fit(model, train, validation, params, device, rank, world)
    if rank == 0:
        model.load_state_dict(best_state)
        probabilities = log_probabilities(model, test, torch.arange(len(test)), params.batch_size, device).exp()
        model = model.model.cpu()
        check_finite(model, probabilities)
        texts = pd.read_csv(CLEAN_DIR / "test.csv", dtype={"text": str}, keep_default_na=False)["text"].tolist()
        # the reports first, the model folder last: a model exists only together with its reports
        write_training_report(FINETUNED, history, best, processes=world)
        headline = write_test_report(
            FINETUNED, test.labels.numpy(), probabilities.numpy(), label_names, texts, best["validation_accuracy"]
        )
        info = {
            "model": SELF,  # the encoder is the model folder itself
            "max_length": tokenization["max_length"],
            "pooling": "model",  # the architecture's own head (BERT: its pooler on [CLS])
            "precision": "fp32",  # the weights; inference runs in fp32 unless told otherwise
            "num_labels": len(label_names),
            "label_names": label_names,
            "validation": {"accuracy": best["validation_accuracy"], "loss": best["validation_loss"]},
            "test": {key: value for key, value in headline.items() if key != "validation_accuracy"},
        }
        save_model(model, load_tokenizer(tokenization["model"]), info, model_dir(FINETUNED))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
