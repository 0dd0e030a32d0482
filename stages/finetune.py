"""finetune: train the encoder's top finetune.layers layers (or all) with a linear head; measure it on test.

Reads data/states/ (the states entering the first trained layer, cached by embed) or, with
layers: all, data/tokens/; and the encoder's starting weights from model.name. Writes
models/finetuned/ (the whole encoder in safetensors, its tokenizer, head.pt, model.json:
self-contained), metrics/finetuned/history.csv, curves.png and training.json, and the test report
(metrics/finetuned.json and metrics/finetuned/*.csv, see zh_sentiment/report.py).

`python -m stages.finetune` runs it, on finetune.processes processes (data-parallel, DDP; gloo on CPU,
nccl on CUDA) that it starts and stops itself (zh_sentiment/distributed.py); only rank 0 writes.
"""

import json

import pandas as pd
import torch
import torch.distributed as dist

from zh_sentiment import distributed
from zh_sentiment.classifier import save_classifier
from zh_sentiment.encoder import choose_device, load_encoder, load_tokenizer, use_all_cores
from zh_sentiment.errors import PipelineError, run
from zh_sentiment.finetune import FineTuned, Tokens, fit, log_probabilities
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
from zh_sentiment.states import CachedStates, check_states, first_trained_layer


def start_processes(requested: str, rank: int, world: int, timeout_seconds: int) -> torch.device:
    """This process's device; with several processes, the process group joined (distributed.run started them)."""
    device = choose_device(requested, source="finetune.device")
    if world > 1 and device.type == "cuda":
        if rank >= torch.cuda.device_count():
            raise PipelineError(
                f"finetune.processes is {world} but this machine has {torch.cuda.device_count()} GPU(s): "
                "set finetune.processes to the number of GPUs at most."
            )
        device = torch.device("cuda", rank)
        torch.cuda.set_device(device)
    if world > 1:
        distributed.join_group("nccl" if device.type == "cuda" else "gloo", rank, world, timeout_seconds)
    if device.type == "cpu":
        use_all_cores()
        torch.set_num_threads(max(1, torch.get_num_threads() // world))  # share the cores, never oversubscribe
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
    tokenization = json.loads(TOKENIZATION_FILE.read_text(encoding="utf-8"))
    label_names = json.loads(LABELS_FILE.read_text(encoding="utf-8"))["names"]
    encoder = load_encoder(tokenization["model"], device, "fp32")
    start = first_trained_layer(params.layers, encoder.config.num_hidden_layers)
    train, validation, test = (load_split(split, start, params.layers) for split in ("train", "validation", "test"))
    torch.manual_seed(params.seed)  # the head's initial weights: the same in every process
    model = FineTuned(encoder, len(label_names), all_params.embed.pooling, start).to(device)
    if rank == 0:
        what = "every layer" if start is None else f"layers {start + 1}..{encoder.config.num_hidden_layers}"
        print(f"finetune: {tokenization['model']}, {what} + head, {world} process(es) on {device}")

    best_state, best, history = fit(model, train, validation, params, device, rank, world)
    if rank == 0:
        model.load_state_dict(best_state)
        log_p = log_probabilities(model, test, torch.arange(len(test)), params.batch_size, device)
        info = {
            "kind": FINETUNED,
            "model": ".",  # the encoder is in the model folder itself
            "max_length": tokenization["max_length"],
            "pooling": all_params.embed.pooling,
            "precision": "bf16" if device.type == "cuda" else "fp32",
            "num_labels": len(label_names),
            "label_names": label_names,
        }
        tokenizer = load_tokenizer(tokenization["model"])
        save_classifier(model.head.cpu(), info, model_dir(FINETUNED), encoder=model.encoder, tokenizer=tokenizer)
        write_training_report(FINETUNED, history, best, processes=world)
        texts = pd.read_csv(CLEAN_DIR / "test.csv", dtype={"text": str}, keep_default_na=False)["text"].tolist()
        probabilities = log_p.exp().numpy()
        write_test_report(
            FINETUNED, test.labels.numpy(), probabilities, label_names, texts, best["validation_accuracy"]
        )
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run(main)
