"""finetune: train the encoder's top finetune.layers layers (or all) with its classification head; measure it on test.

Reads data/states/ (the states entering the first trained layer, cached by embed) or, with
layers: all, data/tokens/; and the encoder's starting weights from model.name. Writes
models/finetuned/ (a standard Hugging Face sequence-classification folder, with model.json),
metrics/finetuned/live/ (loss and accuracy per epoch, through dvclive), curves.png and training.json,
and the test report (metrics/finetuned.json and metrics/finetuned/*.csv, see zh_sentiment/report.py).

`python -m stages.finetune` runs it, on finetune.processes processes (data-parallel, DDP; gloo on CPU,
nccl on CUDA) that it starts and stops itself (zh_sentiment/distributed.py); only rank 0 writes.
Started by torchrun (one or several nodes), it is one rank of torchrun's job instead.
"""

import json
import os
from contextlib import nullcontext

import pandas as pd
import torch
import torch.distributed as dist
from transformers.utils import logging as transformers_logging

from zh_sentiment import distributed
from zh_sentiment.encoder import choose_device, forward_inputs, load_tokenizer, use_all_cores
from zh_sentiment.errors import PipelineError, run
from zh_sentiment.explain import finetuned_explainer, mistakes
from zh_sentiment.finetune import FineTuned, Tokens, choose_autocast, fit, log_probabilities, starting_model
from zh_sentiment.live import epoch_logger
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
from zh_sentiment.precision import precision_probe
from zh_sentiment.report import write_test_report, write_training_report
from zh_sentiment.states import CachedStates, check_states, first_trained_layer


def start_processes(requested: str, rank: int, world: int, timeout_seconds: int) -> torch.device:
    """This process's device; with several processes, the process group joined (distributed.run started them,
    or a launcher such as torchrun did: LOCAL_RANK and LOCAL_WORLD_SIZE are then this node's share)."""
    device = choose_device(requested, source="finetune.device")
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if world > 1 and device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise PipelineError(
                f"{local_world} processes on this machine, but it has {torch.cuda.device_count()} GPU(s): "
                "set finetune.processes (torchrun: --nproc-per-node) to the number of GPUs at most."
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1:
        distributed.join_group("nccl" if device.type == "cuda" else "gloo", rank, world, timeout_seconds)
    if device.type == "cpu":
        use_all_cores()
        torch.set_num_threads(max(1, torch.get_num_threads() // local_world))  # share the cores, never oversubscribe
    return device


def check_inputs(layers) -> None:
    """What every process would find wrong, found once before any starts: states for other layers, damaged states."""
    if layers == "all":
        return
    if not STATES_FILE.is_file():
        raise PipelineError(f"{STATES_FILE} is missing (embed writes it): run `dvc repro -f -s embed`.")
    cached = json.loads(STATES_FILE.read_text(encoding="utf-8"))
    if cached["layers"] != layers:
        raise PipelineError(
            f"{STATES_DIR} holds the states for finetune.layers = {cached['layers']}, not {layers}: "
            "run `dvc repro` (embed writes them)."
        )
    if "sha256" not in cached:
        raise PipelineError(f"{STATES_FILE} has no checksums (an older embed wrote it): run `dvc repro -f -s embed`.")
    check_states(STATES_DIR, cached)


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
    params = load_params().finetune
    with distributed.exclusive(str(model_dir(FINETUNED))):
        check_inputs(params.layers)
        distributed.run(process_main, params.processes, params.timeout_seconds)


def process_main(rank: int, world: int) -> None:
    """What each process runs (rank 0 of 1 when alone): train, and rank 0 writes the model and reports."""
    all_params = load_params()
    params = all_params.finetune
    device = start_processes(params.device, rank, world, params.timeout_seconds)
    precision = choose_autocast(params.precision, device)
    tokenization = json.loads(TOKENIZATION_FILE.read_text(encoding="utf-8"))
    label_names = json.loads(LABELS_FILE.read_text(encoding="utf-8"))["names"]
    classifier = starting_model(tokenization["model"], label_names, params.seed)
    start = first_trained_layer(params.layers, classifier.config.num_hidden_layers)
    train, validation, test = (load_split(split, start, params.layers) for split in ("train", "validation", "test"))
    model = FineTuned(classifier, start).to(device)
    if rank == 0:
        what = "every layer" if start is None else f"layers {start + 1}..{classifier.config.num_hidden_layers}"
        print(f"finetune: {tokenization['model']}, {what} + head, {world} process(es) on {device} in {precision}")

    with epoch_logger(FINETUNED) if rank == 0 else nullcontext() as log_epoch:  # one process logs the epochs
        best_state, best, history = fit(model, train, validation, params, device, rank, world, precision, log_epoch)
    if rank == 0:
        model.load_state_dict(best_state)
        log_p = log_probabilities(model, test, torch.arange(len(test)), params, device, precision)
        probabilities = log_p.exp()
        model = model.model.cpu()
        check_finite(model, probabilities)
        texts = pd.read_csv(CLEAN_DIR / "test.csv", dtype={"text": str}, keep_default_na=False)["text"].tolist()
        # the reports first, the model folder last: a model exists only together with its reports
        write_training_report(FINETUNED, history, best, processes=world, precision=precision)
        tokenizer = load_tokenizer(tokenization["model"])
        keys = [key for key in forward_inputs(model) if key != "input_ids"]
        explain = mistakes(finetuned_explainer(model, tokenizer, tokenization["max_length"], keys))
        headline = write_test_report(
            FINETUNED,
            test.labels.numpy(),
            probabilities.numpy(),
            label_names,
            texts,
            best["validation_accuracy"],
            explain=explain,
        )
        info = {
            "model": SELF,  # the encoder is the model folder itself
            "max_length": tokenization["max_length"],
            "pooling": "model",  # the architecture's own head (BERT: its pooler on [CLS])
            # the weights are fp32 whatever the training's autocast was; inference runs in fp32 unless told otherwise
            "precision": "fp32",
            "precision_probe": {**probe, "autocast": precision}
            if (probe := precision_probe(params.precision, device))
            else None,
            "num_labels": len(label_names),
            "label_names": label_names,
            "validation": {"accuracy": best["validation_accuracy"], "loss": best["validation_loss"]},
            "test": {key: value for key, value in headline.items() if key != "validation_accuracy"},
        }
        save_model(model, tokenizer, info, model_dir(FINETUNED))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
