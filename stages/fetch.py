"""fetch: load the dataset named by `data.dataset` and write its splits to data/raw/.

`data.dataset` is a Hugging Face Hub id, a local `save_to_disk` folder, or a
local folder of per-split files (train.csv, validation.csv, test.csv, or .tsv).
Each split is written as data/raw/<train|validation|test>.csv with the columns
`text` and `label`, cells as they came; cleaning is the next stage's job.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError

from zh_sentiment.errors import PipelineError, first_line, run
from zh_sentiment.outputs import atomic_dir
from zh_sentiment.params import Data, load_params
from zh_sentiment.paths import RAW_DIR, SPLITS, must_be_local
from zh_sentiment.tables import TABLE_SUFFIXES, csv_options, detect_encoding, read_header, require_columns, unreadable


def load_source(data: Data) -> DatasetDict:
    path = Path(data.dataset).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            return load_saved(path)
        files = split_files(path)
        if files:
            return load_split_files(files, data)
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        hint = ""
        if (path / "state.json").exists():  # one saved Dataset, not a DatasetDict: no splits to choose from
            hint = " It looks like a single saved Dataset; save a DatasetDict with train and test splits instead."
        raise PipelineError(
            f"data.dataset: {path} is neither a save_to_disk folder (no dataset_dict.json) nor a folder of "
            f"split files (train.csv, test.csv, validation.csv, or .tsv). It holds: {found}.{hint}"
        )
    if path.exists():
        raise PipelineError(
            f"data.dataset: {path} is a file; point it at the folder that holds train.csv and test.csv (or .tsv)."
        )
    if must_be_local(data.dataset):
        raise PipelineError(
            f"data.dataset: folder {path.absolute()} does not exist. Relative paths start at the project root, "
            "where params.yaml is."
        )
    return load_from_hub(data.dataset)


def load_saved(path: Path) -> DatasetDict:
    try:
        return load_from_disk(str(path))
    except Exception as err:  # a partly copied folder fails in many ways, all of them fixed by saving it again
        raise PipelineError(
            f"data.dataset: {path} has a dataset_dict.json but cannot be loaded with load_from_disk "
            f"({first_line(err)}). "
            "Save the dataset again with `save_to_disk`, or copy the whole folder."
        ) from err


def load_from_hub(dataset_id: str) -> DatasetDict:
    try:
        return load_dataset(dataset_id)
    except Exception as err:
        # "data/source" reads as a hub id too, so say that it is no local folder either
        raise PipelineError(
            f"data.dataset: '{dataset_id}' is no folder here and could not be loaded from the Hugging Face Hub "
            f"({first_line(err)}).\n"
            'To work offline (README.md, section "Offline"), save the dataset once where the hub is reachable '
            f"(`load_dataset('{dataset_id}').save_to_disk('data/source')`), or put train.csv and test.csv "
            "(or .tsv) in a folder, set data.dataset in params.yaml to that folder, and set HF_HUB_OFFLINE=1 "
            "so that lookups do not wait for the network. The model is loaded next: if model.name is a hub id, "
            "save that model to a folder the same way and point model.name at it."
        ) from err


def split_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() in TABLE_SUFFIXES and file.is_file():
            if file.stem in files:
                raise PipelineError(
                    f"data.dataset: {folder} has both {files[file.stem].name} and {file.name}; keep one."
                )
            files[file.stem] = file
    return files


def column_params(data: Data) -> dict[str, str]:
    return {"data.text_column": data.text_column, "data.label_column": data.label_column}


def load_split_files(files: dict[str, Path], data: Data) -> DatasetDict:
    splits = {}
    for split, file in files.items():
        encoding = detect_encoding(file, data.encoding)
        columns = read_header(file, encoding)
        require_columns(columns, column_params(data), str(file))
        try:
            splits[split] = load_dataset(
                "csv",
                data_files=str(file),
                split="train",
                encoding=encoding,
                # every column as text: labels are checked by clean, and a review such as "123" stays text
                features=Features({column: Value("string") for column in columns}),
                **csv_options(file),
            )
        except DatasetGenerationError as err:
            if isinstance(err.__cause__, pd.errors.ParserError):
                raise unreadable(file, err.__cause__) from err
            raise
    return DatasetDict(splits)


def select_splits(source: DatasetDict, data: Data) -> dict[str, Dataset]:
    wanted = {"train": data.train_split, "test": data.test_split}
    for param, name in [("data.train_split", data.train_split), ("data.test_split", data.test_split)]:
        if name not in source:
            raise PipelineError(
                f"{param}: the dataset has no split '{name}'. Splits found: {', '.join(source)}. "
                f"Set {param} in params.yaml to one of them."
            )
    splits = {ours: source[theirs] for ours, theirs in wanted.items()}
    if data.validation_split in source:
        splits["validation"] = source[data.validation_split]
    else:
        print(
            f"fetch: no split '{data.validation_split}'; carving {data.validation_ratio:.0%} of train "
            f"as validation (seed {data.split_seed})"
        )
        splits["train"], splits["validation"] = carve_validation(splits["train"], data)
    for name, split in splits.items():
        require_columns(split.column_names, column_params(data), f"split '{name}' of {data.dataset}")
    return splits


def carve_validation(train: Dataset, data: Data) -> tuple[Dataset, Dataset]:
    """The rows `train.train_test_split(test_size=ratio, seed=seed)` gives, as (train, validation).

    Done by hand because train_test_split writes index cache files next to the source's
    arrow files, i.e. into the user's save_to_disk folder.
    """
    n_validation = math.ceil(data.validation_ratio * len(train))
    if len(train) - n_validation < 1:
        raise PipelineError(
            f"data.validation_ratio: cannot carve a validation split from {len(train)} training row(s). "
            f"Add a '{data.validation_split}' split to the source, or more training rows."
        )
    order = np.random.default_rng(data.split_seed).permutation(len(train))
    validation, rest = order[:n_validation], order[n_validation:]
    return train.select(rest, keep_in_memory=True), train.select(validation, keep_in_memory=True)


def main() -> None:
    data = load_params().data
    splits = select_splits(load_source(data), data)
    with atomic_dir(RAW_DIR) as out:
        for name in SPLITS:
            frame = splits[name].select_columns([data.text_column, data.label_column]).to_pandas()
            frame.columns = ["text", "label"]
            frame.to_csv(out / f"{name}.csv", index=False, encoding="utf-8")
            print(f"fetch: {name}: {len(frame)} rows")


if __name__ == "__main__":
    run(main)
