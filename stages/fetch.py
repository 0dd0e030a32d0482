"""fetch: load the dataset named by `data.dataset` and write its splits to data/raw/.

`data.dataset` is a Hugging Face Hub id, a local `save_to_disk` folder, or a
local folder of per-split files (train.csv, validation.csv, test.csv, or .tsv).
Each split is written as data/raw/<train|validation|test>.csv with the columns
`text` and `label`, cells as they came; cleaning is the next stage's job.
"""

from pathlib import Path

from datasets import Dataset, DatasetDict, Features, Value, load_dataset, load_from_disk

from stages.errors import PipelineError, run
from stages.outputs import atomic_dir
from stages.params import Data, load_params
from stages.paths import RAW_DIR, SPLITS
from stages.tables import TABLE_SUFFIXES, detect_encoding, quoting, read_columns, require_columns, separator


def load_source(data: Data) -> DatasetDict:
    path = Path(data.dataset).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            return load_from_disk(str(path))
        files = split_files(path)
        if files:
            return load_split_files(files, data)
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise PipelineError(
            f"data.dataset: {path} is neither a save_to_disk folder (no dataset_dict.json) nor a folder of "
            f"split files (train.csv, test.csv, validation.csv, or .tsv). It holds: {found}."
        )
    if path.exists():
        raise PipelineError(
            f"data.dataset: {path} is a file; point it at the folder that holds train.csv and test.csv (or .tsv)."
        )
    if data.dataset.startswith((".", "/", "~")) or data.dataset.count("/") > 1:
        raise PipelineError(f"data.dataset: folder {path} does not exist.")
    return load_from_hub(data.dataset)


def load_from_hub(dataset_id: str) -> DatasetDict:
    try:
        return load_dataset(dataset_id)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PipelineError(
            f"could not load dataset '{dataset_id}' from the Hugging Face Hub ({reason}).\n"
            "Check the id, or work offline: save the dataset once with "
            "`load_dataset(...).save_to_disk('data/source')` (or put train.csv / test.csv in a folder), "
            "set data.dataset in params.yaml to that folder, and set HF_HUB_OFFLINE=1 so lookups do not wait "
            "for the network."
        ) from err


def split_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if file.suffix.lower() in TABLE_SUFFIXES and file.is_file():
            if file.stem in files:
                raise PipelineError(f"data.dataset: {folder} has both {files[file.stem].name} and {file.name}; keep one.")
            files[file.stem] = file
    return files


def load_split_files(files: dict[str, Path], data: Data) -> DatasetDict:
    splits = {}
    for split, file in files.items():
        encoding = detect_encoding(file, data.encoding)
        columns = read_columns(file, encoding)
        require_columns(columns, {"data.text_column": data.text_column, "data.label_column": data.label_column}, str(file))
        splits[split] = load_dataset(
            "csv",
            data_files=str(file),
            split="train",
            sep=separator(file),
            quoting=quoting(file),
            encoding=encoding,
            # every column as text: labels are checked by clean, and a review such as "NA" stays a review
            features=Features({column: Value("string") for column in columns}),
            keep_default_na=False,
            na_values=[""],
        )
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
        carved = splits["train"].train_test_split(test_size=data.validation_ratio, seed=data.split_seed)
        splits["train"], splits["validation"] = carved["train"], carved["test"]
    for name, split in splits.items():
        require_columns(
            split.column_names,
            {"data.text_column": data.text_column, "data.label_column": data.label_column},
            f"split '{name}' of {data.dataset}",
        )
    return splits


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
