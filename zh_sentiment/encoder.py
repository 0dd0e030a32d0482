"""The frozen BERT encoder: loading it, choosing device and precision, and turning tokens into features.

Shared by tokenize (tokenizer and length limit), embed, predict and the benchmark.
"""

import codecs
import ctypes
import inspect
import io
import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from pickle import UnpicklingError

import safetensors.torch
import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.auto_factory import _get_model_class
from transformers.utils import logging as transformers_logging

from zh_sentiment import cls_forward
from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.paths import WEIGHT_FILES, must_be_local
from zh_sentiment.progress import tqdm

TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what a BERT-like forward may take
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


CODE_NAMING_FILES = ("config.json", "tokenizer_config.json")  # where transformers looks for an `auto_map`


def refuse_remote_code(folder: Path, source: str) -> None:
    """A folder that asks to run its own Python is refused before anything in it is loaded: a config that
    names custom code (`auto_map`), or Python files beside the weights. (Every from_pretrained here also
    passes trust_remote_code=False; without this check transformers would ask on stdin, and `yes | ...`
    would answer.) A config transformers cannot read is refused here too, naming the file and why."""
    for name in CODE_NAMING_FILES:
        path = folder / name
        if path.is_file():
            data = path.read_bytes()
            raw = config_json(data, path, source)
            if "auto_map" in raw:
                raise PipelineError(
                    f"{source}: {path} names custom code (auto_map: {json.dumps(raw['auto_map'])[:120]}). "
                    "This project never runs code that comes with a model; use a folder of a standard "
                    "transformers architecture, saved with save_pretrained."
                )
            if data.startswith(codecs.BOM_UTF8):  # transformers reads a config as plain UTF-8 and fails on it
                raise PipelineError(
                    f"{source}: {path} starts with a UTF-8 byte order mark, which transformers cannot read. "
                    "Save it again without one (UTF-8, no BOM), or save the model again with save_pretrained."
                )
    code = sorted(p.name for p in folder.glob("*.py"))
    if code:
        raise PipelineError(
            f"{source}: {folder} holds Python files ({', '.join(code[:5])}). This project never runs code that "
            "comes with a model: remove them, or use a folder saved with save_pretrained."
        )


def config_json(data: bytes, path: Path, source: str) -> dict:
    """A config's JSON object, read past a byte order mark: no mark may hide an auto_map."""
    try:
        raw = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PipelineError(
            f"{source}: {path} is not valid JSON ({err}). Copy the model folder again, or save it again "
            "with save_pretrained."
        ) from None
    if not isinstance(raw, dict):
        raise PipelineError(
            f"{source}: {path} is not a JSON object. Copy the model folder again, or save it again "
            "with save_pretrained."
        )
    return raw


def check_model_folder(name: str, need_weights: bool, source: str) -> None:
    """A local model folder must hold what from_pretrained needs; the hub is only tried for ids.

    `source` says where `name` came from (a param, or a trained model's model.json).
    """
    folder = Path(name).expanduser()
    if not folder.is_dir():
        if must_be_local(name):
            raise PipelineError(f"{source}: model folder {folder} does not exist.")
        return
    refuse_remote_code(folder, source)
    wanted = {"config.json": ("config.json",), "tokenizer (tokenizer.json or vocab.txt)": TOKENIZER_FILES}
    if need_weights:
        wanted["weights (model.safetensors or pytorch_model.bin)"] = WEIGHT_FILES
    missing = [what for what, files in wanted.items() if not any((folder / f).exists() for f in files)]
    if missing:
        raise PipelineError(
            f"{source}: model folder {folder} lacks {', '.join(missing)}. A complete folder is what "
            "`AutoModel.from_pretrained(id).save_pretrained(folder)` and "
            "`AutoTokenizer.from_pretrained(id).save_pretrained(folder)` write."
        )


def model_location(name: str) -> str:
    """What later stages and predict load the model from: a hub id, or a local folder as an absolute path
    so that a trained models/ folder still finds its encoder when copied elsewhere."""
    folder = Path(name).expanduser()
    return str(folder.resolve()) if folder.is_dir() else name


def from_hub(loader, name: str, source: str):
    """Call `loader(name)`, turning a hub failure into a message that says how to work offline."""
    try:
        return loader(name)
    except OSError as err:
        local = ""
        if "/" in name:  # `models-src/bert` is a hub id only if no such folder is meant
            local = f"If '{name}' is meant as a local folder: {Path(name).expanduser().absolute()} does not exist.\n"
        raise PipelineError(
            f"could not load model '{name}': {first_line(err)}\n{local}"
            "If the id is right and you are offline, download the model once where the hub is reachable "
            "(`AutoModel.from_pretrained(id).save_pretrained(folder)`, the same for AutoTokenizer), "
            f"point {source} at that folder, and set HF_HUB_OFFLINE=1."
        ) from err


def load_tokenizer(name: str, source: str = "model.name") -> PreTrainedTokenizerBase:
    check_model_folder(name, need_weights=False, source=source)
    # never run code that comes with a model: explicit, whatever the library's default
    tokenizer = from_hub(lambda n: AutoTokenizer.from_pretrained(n, trust_remote_code=False), name, source)
    if not tokenizer.is_fast:
        raise PipelineError(f"{source}: {name} has no fast tokenizer (tokenizer.json or vocab.txt).")
    tokenizer.padding_side = "right"  # embed cuts each batch at its longest review: padding must come last
    return tokenizer


def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Token ids with [CLS]/[SEP], truncated at max_length and padded only to the longest text.

    Stored compactly (int32 ids, int8 masks); `embed` widens them batch by batch.
    """
    encoded = tokenizer(
        texts, truncation=True, max_length=max_length, padding="longest", padding_side="right", return_tensors="pt"
    )
    tokens = {
        "input_ids": encoded["input_ids"].to(torch.int32),
        "attention_mask": encoded["attention_mask"].to(torch.int8),
        "lengths": encoded["attention_mask"].sum(1),
    }
    if "token_type_ids" in encoded:  # not every tokenizer makes them (nor every model takes them)
        tokens["token_type_ids"] = encoded["token_type_ids"].to(torch.int8)
    return tokens


def max_positions(name: str, source: str = "model.name") -> int:
    """The longest input the model takes, from its config: a local tokenizer often does not declare it."""
    check_model_folder(name, need_weights=False, source=source)
    config = from_hub(lambda n: AutoConfig.from_pretrained(n, trust_remote_code=False), name, source)
    return config.max_position_embeddings


def choose_device(requested: str, source: str = "embed.device") -> torch.device:
    """`source` names the setting in messages: the param, or predict's --device."""
    if requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise PipelineError(f"{source} is '{requested}' but CUDA is not available here; use auto or cpu.")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise PipelineError(f"{source} is '{requested}' but MPS is not available here; use auto or cpu.")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def load_pretrained(name: str, source: str = "model.name", auto_class=AutoModel, **kwargs) -> torch.nn.Module:
    """`auto_class.from_pretrained(name)` in fp32 with SDPA attention, never running code from the folder;
    a truncated or corrupt weights file, or a hub failure, becomes one clear message."""
    check_model_folder(name, need_weights=True, source=source)
    folder = Path(name).expanduser()

    def load(n: str) -> torch.nn.Module:
        return auto_class.from_pretrained(
            n, attn_implementation="sdpa", dtype=torch.float32, trust_remote_code=False, **kwargs
        )

    transformers_logging.disable_progress_bar()  # a "Loading weights" bar per load is noise in a stage's log
    if not folder.is_dir():
        return from_hub(load, name, source)
    try:
        with quiet_loading():
            return load(name)
    except (OSError, RuntimeError, EOFError, ValueError, SafetensorError) as err:
        # a truncated copy or download: safetensors ("incomplete metadata") or torch's zip reader
        files = ", ".join(f for f in WEIGHT_FILES if (folder / f).exists())
        raise unreadable_weights(folder, files, source, err) from err


def load_checked(folder: Path, weights: dict[str, bytes], source: str, auto_class=AutoModel) -> torch.nn.Module:
    """`auto_class`'s model of `folder` (a checked model folder: inference.open_model_folder) in fp32 with
    SDPA attention, its weights taken from `weights` (file name: the bytes that were hashed), not from the
    files: they live in this process's memory, so a weights file changed or truncated on disk later changes
    no answer and cannot crash it (from_pretrained would memory-map model.safetensors)."""
    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    state = {}
    for name, data in weights.items():
        if not name.endswith(".index.json"):  # the index only says which shard holds what: all are read
            state |= read_state_dict(data, folder / name, source)
    # an Auto class needs a name or folder to read weights from; the architecture's own class takes a state dict
    model_class = _get_model_class(config, auto_class._model_mapping)
    with quiet_loading():
        return model_class.from_pretrained(
            None, config=config, state_dict=state, attn_implementation="sdpa", dtype=torch.float32
        )


def read_state_dict(data: bytes, path: Path, source: str) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors or PyTorch weights file's bytes, each in memory of its own."""
    try:
        if path.suffix == ".safetensors":
            return safetensors.torch.load(data)
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, SafetensorError, UnpicklingError) as err:
        raise unreadable_weights(path.parent, path.name, source, err) from err


def unreadable_weights(folder: Path, files: str, source: str, err: Exception) -> PipelineError:
    return PipelineError(
        f"{source}: the weights in {folder} ({files}) cannot be read: {first_line(err).split('. ')[0]}. "
        "The file is probably truncated or corrupt: copy the model folder again, or save it again "
        "with save_pretrained."
    )


@contextmanager
def quiet_loading():
    """No "Loading weights" bar (noise in a stage's or a server's log), and no load report: it lists the
    weights of a new head, which are expected here."""
    transformers_logging.disable_progress_bar()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def load_encoder(name: str, device: torch.device, precision: str, source: str = "model.name") -> torch.nn.Module:
    """The frozen encoder (AutoModel: no task head), in `precision` on `device`, for inference."""
    return to_precision(load_pretrained(name, source).eval().requires_grad_(False), device, precision)


def to_precision(model: torch.nn.Module, device: torch.device, precision: str) -> torch.nn.Module:
    """An inference model in `precision` on `device` (int8: dynamic quantization of its Linear layers, CPU)."""
    if precision == "int8":
        with warnings.catch_warnings():
            # torch.ao quantization still works in torch 2.13 but warns that it moves to torchao
            warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.ao")
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model.to(device=device, dtype=DTYPES[precision])


def load_classification_model(name: str, label_names: list[str], source: str = "model.name") -> torch.nn.Module:
    """The standard *ForSequenceClassification model on `name`'s encoder, labelled with `label_names`:
    a fresh head (seed first) on a plain encoder, or the trained model of a finetuned folder."""
    return load_pretrained(
        name,
        source,
        AutoModelForSequenceClassification,
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={label: i for i, label in enumerate(label_names)},
    )


def use_all_cores() -> None:
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())


M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def return_large_blocks() -> None:
    """Blocks of 1 MiB and more in mappings of their own, returned to the system when freed (glibc only).

    By default glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so the
    encoder's activations, of a different size every batch, come from the heap after the first batch; the heap
    fragments, and its free pages stay resident and add up batch after batch: embed's peak RSS grew 1.21× from
    3,000 to 12,000 reviews, with the memory in use flat (mallinfo2). Fixing the threshold keeps it flat
    (bench/scale.py), and was not slower on a loaded machine. musl and other platforms: nothing to do."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 2**20)
        except (OSError, AttributeError):  # not glibc
            pass


def pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """fp32 features whatever the encoder's precision: summing hundreds of bf16 values in bf16 loses
    about 10x more than the bf16 hidden states themselves carry."""
    hidden = last_hidden_state.float()
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).float()
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


def forward_inputs(model: torch.nn.Module) -> list[str]:
    """The token tensors the model's forward takes (DistilBERT-like models take no token_type_ids)."""
    # named parameters only: transformers' forwards also take **kwargs, where stray inputs go unchecked
    parameters = inspect.signature(model.forward).parameters
    return [key for key in TOKEN_INPUTS if key in parameters] or list(TOKEN_INPUTS)


def encode(model, inputs: dict[str, torch.Tensor], pooling: str, states_layer: int | None):
    """The last hidden states (for `pooling: cls` on BERT: position 0's alone, zh_sentiment/cls_forward.py),
    and the states entering layer `states_layer` (None: not wanted)."""
    if pooling != "cls" or not cls_forward.runs_for_cls(model):
        output = model(**inputs, output_hidden_states=states_layer is not None)
        return output.last_hidden_state, None if states_layer is None else output.hidden_states[states_layer]
    layers, below = model.encoder.layer, states_layer or 0
    hidden = cls_forward.embeddings(model, inputs)
    mask = cls_forward.layer_mask(model, hidden, inputs["attention_mask"])
    entering = cls_forward.run_layers(layers[:below], hidden, mask)
    return cls_forward.top_for_cls(layers[below:], entering, mask), entering


@torch.inference_mode()
def embed(
    model: torch.nn.Module,
    tokens: dict[str, torch.Tensor],
    pooling: str,
    batch_size: int,
    device: torch.device,
    progress: str | None = None,
    states: torch.Tensor | None = None,
    states_layer: int = 0,
) -> torch.Tensor:
    """One fp32 feature vector per review, in the order of `tokens`.

    Reviews are batched longest first and each batch is padded only to its own
    longest review, so the encoder's work follows the real tokens, not max_length.
    With `states` ([total real tokens, hidden], one review's rows after the other's,
    in the order of `tokens`), it also fills in the hidden states that enter layer
    `states_layer` (0 = the embeddings' output): what fine-tuning the layers above reads.
    """
    lengths = tokens["lengths"]
    keys = [key for key in forward_inputs(model) if key in tokens]
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.long().cumsum(0)])
    order = torch.argsort(lengths, descending=True, stable=True)
    features = torch.empty(len(lengths), model.config.hidden_size, dtype=torch.float32)
    with tqdm(total=int(lengths.sum()), unit="tok", unit_scale=True, desc=progress, disable=progress is None) as bar:
        for batch in order.split(batch_size):
            width = int(lengths[batch].max())
            # rows are right-padded (encode_texts), so the first `width` columns hold every real token
            inputs = {key: tokens[key][batch, :width].to(device=device, dtype=torch.long) for key in keys}
            try:
                hidden, entering = encode(model, inputs, pooling, states_layer if states is not None else None)
            except torch.OutOfMemoryError:
                raise PipelineError(
                    f"out of memory on {device} embedding {len(batch)} reviews of {width} tokens. "
                    f"Lower embed.batch_size (now {batch_size}) in params.yaml, e.g. to {max(1, batch_size // 2)}."
                ) from None
            mask = tokens["attention_mask"][batch, :width].to(device)
            features[batch] = pool(hidden, mask, pooling).cpu()
            if states is not None:
                entering = entering.to(device="cpu", dtype=states.dtype)
                for row, review in enumerate(batch.tolist()):
                    start, end = offsets[review], offsets[review + 1]
                    states[start:end] = entering[row, : end - start]  # real tokens only: no padding on disk
            bar.update(int(lengths[batch].sum()))
    return features
