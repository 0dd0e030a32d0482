"""fetch: load the dataset named by `data.dataset` and write its splits to data/raw/.

`data.dataset` is a Hugging Face Hub id, a local `save_to_disk` folder, or a
local folder of per-split files (train.csv, validation.csv or dev.csv, test.csv, or .tsv).
Each split is written as data/raw/<train|validation|test>.csv with the columns
`text` and `label`, cells as they came; cleaning is the next stage's job. When the
label column is a ClassLabel, its names go to data/raw/labels.json for clean to check.
Local files are read fresh every time (no datasets cache, which keys on size and mtime).
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
from datasets import ClassLabel, DatasetDict, load_dataset, load_from_disk

from zh_sentiment.errors import PipelineError, first_line, run
from zh_sentiment.outputs import atomic_dir, write_json
from zh_sentiment.params import Data, load_params
from zh_sentiment.paths import RAW_DIR, SOURCE_DIR, SOURCE_LABELS_FILE, SPLITS, must_be_local
from zh_sentiment.tables import TABLE_SUFFIXES, detect_encoding, read_table, require_columns

DEV = "dev"  # the usual name of the validation split in Chinese benchmarks (CLUE) and GLUE-style folders


def load_dataset_dict(data: Data) -> DatasetDict | None:
    """The source as a DatasetDict, or None when it is a folder of split files."""
    path = Path(data.dataset).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            return load_saved(path)
        return None
    if path.exists():
        raise PipelineError(
            f"data.dataset: {path} is a file; point it at the folder that holds train.csv and test.csv (or .tsv)."
        )
    if must_be_local(data.dataset):
        if in_experiment_copy():
            raise PipelineError(
                f"data.dataset: folder {data.dataset} is not in this experiment's temporary copy of the project: "
                "`dvc exp run --queue` (and --temp) copies only what git tracks, and git ignores local datasets. "
                f"Queue the experiment with `--copy-paths {data.dataset}` (see README.md, 'Many experiments')."
            )
        raise PipelineError(
            f"data.dataset: folder {path.absolute()} does not exist. Relative paths start at the project root, "
            "where params.yaml is."
        )
    return load_from_hub(data.dataset)


def in_experiment_copy() -> bool:
    """Whether this runs in the temporary copy of the project that `dvc exp run --queue` / `--temp` makes."""
    return ".dvc/tmp/exps/" in Path.cwd().as_posix()


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
            f"(`load_dataset('{dataset_id}').save_to_disk('data/source/mydata')`), or put train.csv and test.csv "
            "(or .tsv) in such a folder under data/source/, set data.dataset in params.yaml to it, and set "
            "HF_HUB_OFFLINE=1 so that lookups do not wait for the network. The model is loaded next: if model.name "
            "is a hub id, save that model to a folder the same way and point model.name at it."
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
    if not files:
        found = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
        hint = ""
        if (folder / "state.json").exists():  # one saved Dataset, not a DatasetDict: no splits to choose from
            hint = " It looks like a single saved Dataset; save a DatasetDict with train and test splits instead."
        raise PipelineError(
            f"data.dataset: {folder} is neither a save_to_disk folder (no dataset_dict.json) nor a folder of "
            f"split files (train.csv, test.csv, validation.csv, or .tsv). It holds: {found}.{hint}"
        )
    return files


def choose_splits(available, data: Data) -> dict[str, str | None]:
    """Our split -> the source's split; validation None: carve it from train."""
    for param, name in [("data.train_split", data.train_split), ("data.test_split", data.test_split)]:
        if name not in available:
            raise PipelineError(
                f"{param}: the dataset has no split '{name}'. Splits found: {', '.join(available)}. "
                f"Set {param} in params.yaml to one of them."
            )
    validation = data.validation_split if data.validation_split in available else None
    if validation is None and DEV in available and DEV not in (data.train_split, data.test_split):
        validation = DEV
        print(f"fetch: no split '{data.validation_split}'; using '{DEV}' as the validation split")
    elif validation is None:
        print(
            f"fetch: no split '{data.validation_split}'; carving {data.validation_ratio:.0%} of train "
            f"as validation (seed {data.split_seed})"
        )
    return {"train": data.train_split, "validation": validation, "test": data.test_split}


def read_split_files(folder: Path, data: Data) -> dict[str, pd.DataFrame]:
    """The chosen split files, read fresh; a warning names the files that map to no split."""
    files = split_files(folder)
    chosen = choose_splits(files, data)
    used = {files[name] for name in chosen.values() if name}
    unused = sorted(p.name for p in folder.iterdir() if p not in used and not p.name.startswith("."))
    if unused:
        print(
            f"fetch: warning: {', '.join(unused)} in {folder} map(s) to no split and are ignored "
            f"(splits are read from {', '.join(sorted(p.name for p in used))})"
        )
    splits = {}
    for ours, theirs in chosen.items():
        if theirs:
            encoding = detect_encoding(files[theirs], data.encoding)
            if data.encoding == "auto" and not encoding.startswith("utf-8"):
                print(f"fetch: {files[theirs].name}: read as {encoding} (data.encoding: auto)")
            splits[ours] = read_table(files[theirs], encoding, data.columns or None)
            require_columns(list(splits[ours].columns), column_params(data), str(files[theirs]))
    return splits


def from_dataset_dict(source: DatasetDict, data: Data) -> tuple[dict[str, pd.DataFrame], list[str] | None]:
    """The chosen splits as tables, and the label names when the label column is a ClassLabel."""
    if data.columns:
        raise PipelineError(
            f"data.columns names the columns of CSV/TSV files without a header row, but {data.dataset} is a "
            "dataset with named columns; set data.columns: []."
        )
    chosen = choose_splits(source, data)
    splits = {}
    for ours, theirs in chosen.items():
        if theirs:
            split = source[theirs]
            require_columns(split.column_names, column_params(data), f"split '{theirs}' of {data.dataset}")
            splits[ours] = split.select_columns([data.text_column, data.label_column]).to_pandas()
    feature = source[data.train_split].features[data.label_column]
    return splits, list(feature.names) if isinstance(feature, ClassLabel) else None


def column_params(data: Data) -> dict[str, str]:
    return {"data.text_column": data.text_column, "data.label_column": data.label_column}


def carve_validation(train: pd.DataFrame, data: Data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`validation_ratio` of train, chosen by `split_seed`, as (train, validation)."""
    n_validation = math.ceil(data.validation_ratio * len(train))
    if len(train) - n_validation < 1:
        raise PipelineError(
            f"data.validation_ratio: cannot carve a validation split from {len(train)} training row(s). "
            f"Add a '{data.validation_split}' split to the source, or more training rows."
        )
    order = np.random.default_rng(data.split_seed).permutation(len(train))
    validation, rest = order[:n_validation], order[n_validation:]
    return train.iloc[rest], train.iloc[validation]


def note_untracked(data: Data) -> None:
    path = Path(data.dataset).expanduser()
    if path.exists() and not path.resolve().is_relative_to(SOURCE_DIR.resolve()):
        print(
            f"fetch: note: {path} is outside {SOURCE_DIR}/, so DVC does not see edits to its files; "
            f"move it into {SOURCE_DIR}/, or run `dvc repro --force fetch` after editing it"
        )


def main() -> None:
    data = load_params().data
    source = load_dataset_dict(data)
    note_untracked(data)
    if source is None:
        splits, class_names = read_split_files(Path(data.dataset).expanduser(), data), None
    else:
        splits, class_names = from_dataset_dict(source, data)
    if "validation" not in splits:
        splits["train"], splits["validation"] = carve_validation(splits["train"], data)
    with atomic_dir(RAW_DIR) as out:
        for name in SPLITS:
            frame = splits[name][[data.text_column, data.label_column]].set_axis(["text", "label"], axis=1)
            frame.to_csv(out / f"{name}.csv", index=False, encoding="utf-8")
            print(f"fetch: {name}: {len(frame)} rows")
        if class_names:
            write_json(out / SOURCE_LABELS_FILE.name, {"names": class_names})


if __name__ == "__main__":
    run(main)
