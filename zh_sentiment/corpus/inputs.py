"""Finding the input files and reading them a part at a time: CSV/TSV (tables.py's rules), JSONL, Parquet."""

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from zh_sentiment.corpus.parts import Part, Settings
from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.predict import decode
from zh_sentiment.tables import codec_for, csv_options, header_names, refuse_repeated_names, require_columns

INPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
SAMPLE_BYTES = 1 << 20  # what the encoding of a CSV/TSV file is detected from (the whole file would not stream)


def find_inputs(spec: str, output: Path) -> tuple[Path, list[Path]]:
    """The folder the inputs' names are relative to, and the input files of `spec` (a folder, glob or file)."""
    path = Path(spec)
    if path.is_dir():
        root = path
        files = [
            p
            for p in sorted(path.rglob("*"))
            if p.is_file() and p.suffix.lower() in INPUT_SUFFIXES and not hidden(p.relative_to(path))
        ]
        if not files:
            raise PipelineError(f"--input {spec}: no {', '.join(INPUT_SUFFIXES)} file in this folder.")
    elif any(char in spec for char in "*?["):
        files = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        if not files:
            raise PipelineError(f"--input {spec}: no file matches this pattern.")
        root = Path(os.path.commonpath([p.parent.resolve() for p in files]))
        files = [p.resolve() for p in files]
    elif path.is_file():
        root, files = path.parent, [path]
    else:
        raise PipelineError(f"--input {spec}: no such file, folder or pattern.")
    other = [p for p in files if p.suffix.lower() not in INPUT_SUFFIXES]
    if other:
        raise PipelineError(
            f"--input {spec}: {other[0]} is not a {', '.join(INPUT_SUFFIXES)} file. Narrow the pattern to those."
        )
    inside = [p for p in files if p.resolve().is_relative_to(output.resolve())]
    if inside or (path.is_dir() and output.resolve().is_relative_to(path.resolve())):
        raise PipelineError(
            f"--output {output} is inside --input {spec}: a re-run would read the shards as reviews. "
            "Write the output somewhere else."
        )
    return root, files


def hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def chunks(path: Path, size: int, settings: Settings) -> Iterator[pd.DataFrame]:
    """The file's rows `size` at a time (the last part may be shorter), as two columns: text, id ("" when the
    text cell is empty; id absent without --id-column). Every problem is a PipelineError naming the file."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            frames = jsonl_frames(path, size)
        elif suffix == ".parquet":
            frames = parquet_frames(path, size, [settings.text_column, settings.id_column])
        else:
            frames = csv_frames(path, size, settings.encoding, settings.columns)
        row = 0
        for frame in exact(frames, size):
            yield select(frame, path, row, settings)
            row += len(frame)
    except (pa.ArrowException, OSError) as err:
        raise PipelineError(
            f"{path}: cannot be read ({first_line(err)}). Write it again, or move it out of --input."
        ) from None
    except UnicodeDecodeError as err:
        raise PipelineError(
            f"{path}: not valid {err.encoding} at byte {err.start} (the encoding was detected from the file's start). "
            "Give its encoding with --encoding."
        ) from None
    except pd.errors.ParserError as err:
        reason = first_line(err).removeprefix("Error tokenizing data. C error: ")
        raise PipelineError(
            f"{path}: cannot be read as a table ({reason}). See `zh-sentiment predict --help`."
        ) from None


def exact(frames: Iterator[pd.DataFrame], size: int) -> Iterator[pd.DataFrame]:
    """`frames` cut and joined into frames of exactly `size` rows (the last may be shorter): parts must not
    depend on how a reader happens to batch, or a re-run would cut a file differently."""
    pending, count = [], 0
    for frame in frames:
        pending.append(frame)
        count += len(frame)
        while count >= size:
            whole = pd.concat(pending, ignore_index=True)
            yield whole.iloc[:size].reset_index(drop=True)
            pending, count = [whole.iloc[size:]], count - size
    if count:
        yield pd.concat(pending, ignore_index=True)


def select(frame: pd.DataFrame, path: Path, first_row: int, settings: Settings) -> pd.DataFrame:
    """The text (as text, "" where missing) and the id column (as text, never missing)."""
    wanted = {"--text-column": settings.text_column}
    if settings.id_column:
        wanted["--id-column"] = settings.id_column
    require_columns([str(name) for name in frame.columns], wanted, str(path), "--columns")
    texts = frame[settings.text_column]
    selected = pd.DataFrame({"text": [("" if missing(v) else str(v)) for v in texts]})
    if settings.id_column:
        ids = frame[settings.id_column]
        empty = [first_row + i + 1 for i, v in enumerate(ids) if missing(v) or str(v).strip() == ""]
        if empty:
            raise PipelineError(
                f"{path}, row {empty[0]}: no value in the --id-column {settings.id_column!r}"
                f"{f' ({len(empty)} rows in all)' if len(empty) > 1 else ''}. Every row needs its id."
            )
        selected["id"] = [str(v) for v in ids]
    return selected


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def csv_frames(path: Path, size: int, encoding: str, columns: list[str] | None) -> Iterator[pd.DataFrame]:
    """tables.read_table's rules (separator from the suffix, encoding detected, "NA" is a review), streamed."""
    with path.open("rb") as file:
        sample = file.read(SAMPLE_BYTES)
    if not sample.strip():
        raise PipelineError(f"{path} is empty; it needs a header row naming the columns, then one review per row.")
    whole = len(sample) < SAMPLE_BYTES
    cut = sample if whole else sample[: sample.rfind(b"\n") + 1] or sample
    decode(cut, encoding, str(path))  # binary files, workbooks and undetectable encodings, named clearly
    codec = codec_for(cut, path, encoding, "--encoding")
    if columns:
        refuse_repeated_names(columns, "--columns")
        names, skip = columns, 0
    else:
        text = cut.decode(codec, errors="ignore")
        refuse_repeated_names(header_names(text, path), f"{path}: the header row")
        names, skip = header_names(text, path), 1
    options = csv_options(path) | {"skiprows": skip, "names": names, "index_col": False}
    frames = pd.read_csv(path, encoding=codec, dtype=str, header=None, chunksize=size, **options)
    yield from drop_trailing_blanks(frames)


def drop_trailing_blanks(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Blank lines at the end of a file are only its end (as in read_table); a blank line before a review is
    a row (an empty review), so a frame is held back until the next one shows whether rows follow."""
    held = None
    for frame in frames:
        if held is not None:
            yield held
        held = frame
    if held is not None:
        blank = held.isna().all(axis=1).to_numpy()
        keep = len(blank) - int(np.argmin(blank[::-1])) if not blank.all() else 0
        yield held.iloc[:keep]


def jsonl_frames(path: Path, size: int) -> Iterator[pd.DataFrame]:
    """One JSON object per line; blank lines are skipped."""
    rows = []
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:  # JSONDecodeError and UnicodeDecodeError
                raise PipelineError(
                    f"{path}, line {number}: not JSON ({first_line(err)}). Each line of a .jsonl file is one "
                    'object, e.g. {"id": 1, "text": "..."}.'
                ) from None
            if not isinstance(row, dict):
                raise PipelineError(
                    f'{path}, line {number}: a JSON {type(row).__name__}, not an object {{"text": ...}}.'
                )
            rows.append(row)
            if len(rows) == size:
                yield pd.DataFrame(rows)
                rows = []
    if rows:
        yield pd.DataFrame(rows)


def parquet_frames(path: Path, size: int, wanted: list[str | None]) -> Iterator[pd.DataFrame]:
    file = pq.ParquetFile(path)
    names = file.schema_arrow.names
    wanted = [name for name in wanted if name]
    read = wanted if set(wanted) <= set(names) else None  # else all: require_columns names what there is
    for batch in file.iter_batches(batch_size=size, columns=read):
        yield batch.to_pandas()


def count_rows(path: Path, settings: Settings) -> int:
    """The file's rows, read through once: also how a damaged file is found before any scoring."""
    if path.suffix.lower() == ".parquet":
        try:
            file = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as err:
            raise PipelineError(
                f"{path}: cannot be read ({first_line(err)}). Write it again, or move it out of --input."
            ) from None
        next(chunks(path, 1, settings), None)  # the columns, checked
        return file.metadata.num_rows
    return sum(len(frame) for frame in chunks(path, 100_000, settings))


def read_part(part: Part, settings: Settings) -> pd.DataFrame:
    """A part read on its own (a Ray actor's): the file read up to it."""
    for number, frame in enumerate(chunks(Path(part.path), settings.rows_per_shard, settings)):
        if number == part.number:
            return frame
    raise PipelineError(f"{part.path} has fewer rows than when the run started: it changed. Run again.")
