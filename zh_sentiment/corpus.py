"""Scoring a corpus: a folder or glob of CSV/TSV/JSONL/Parquet files into a folder of Parquet (or CSV) shards.

    zh-sentiment predict --input reviews/ --output scored/ [--id-column id] [--processes 2]
    zh-sentiment predict --input 'crawl/*.jsonl' --output scored/ --ray auto      # on a Ray cluster

Every input file is cut into parts of --rows-per-shard rows; each part is scored and written as one output
shard, <input name>.part-NNNNN.parquet, under a temporary name that is renamed into place once it is whole
(outputs.atomic_file). A shard with its final name is a finished one, so the same command run again after a
crash or a kill skips those and scores the rest: every input row is in exactly one output row. _manifest.json
records what shapes the shards (the model's fingerprint, the columns, the rows per shard, the format) and each
input's size and time, so that a re-run with other settings or on changed inputs stops instead of mixing two
runs in one folder. Readers of the folder (pandas, pyarrow, Spark, DuckDB) skip names that start with "." or
"_": the temporary shards and the manifest.

Memory is bounded by one part per process, whatever the corpus's size: files are read a part at a time.
"""

import glob
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import softmax

from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.inference import Classifier, choose_model, load_model, open_model_folder
from zh_sentiment.lifetime import die_with, pid_alive
from zh_sentiment.outputs import atomic_file, write_json
from zh_sentiment.predict import CHUNK, decode
from zh_sentiment.progress import tqdm
from zh_sentiment.tables import codec_for, csv_options, header_names, refuse_repeated_names, require_columns

INPUT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")
FORMATS = ("parquet", "csv")
MANIFEST = "_manifest.json"
TEMPORARY = re.compile(r"\.(.+)\.(\d{1,9})-[0-9a-f]{8}\.tmp")  # outputs.temporary_name's pattern
SAMPLE_BYTES = 1 << 20  # what the encoding of a CSV/TSV file is detected from (the whole file would not stream)
ID_COLUMNS = ("file", "row")  # without --id-column: the input file (relative to --input) and the row in it


@dataclass(frozen=True)
class Settings:
    """Everything a worker (a local process or a Ray actor) needs to score and write a part: paths absolute."""

    model_dir: str
    device: str
    precision: str | None
    runtime: str  # torch, onnx, onnx-int8 or auto (docs/onnx.md)
    batch_size: int
    text_column: str
    id_column: str | None
    columns: list[str] | None
    encoding: str
    rows_per_shard: int
    output_format: str
    output: str


@dataclass(frozen=True)
class Part:
    """Rows [number * rows, (number + 1) * rows) of one input file, and the output shard they go to."""

    path: str  # the input file
    name: str  # the input file relative to --input: the `file` column, and the start of the shard's name
    number: int
    rows: int  # how many rows the part has

    def shard(self, settings: Settings) -> Path:
        return Path(settings.output) / f"{self.name.replace('/', '__')}.part-{self.number:05d}.{settings.output_format}"


# ---- finding and reading the inputs ----


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


# ---- scoring and writing one part ----


class Scorer:
    """A model loaded once, scoring parts into shards: in this process, in each --processes worker, or in each
    Ray actor."""

    def __init__(self, settings: Settings, classifier: Classifier | None = None):
        self.settings = settings
        self.classifier = classifier or load_model(
            Path(settings.model_dir), settings.device, settings.precision, settings.runtime
        )

    def run(self, part: Part, frame: pd.DataFrame | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Score `part` (read here unless given) and write its shard; the rows written."""
        if frame is None:
            frame = read_part(part, self.settings)
        table = self.score(frame, part, progress)
        write_shard(part.shard(self.settings), table, self.settings.output_format)
        return len(table)

    def score(self, frame: pd.DataFrame, part: Part, progress: Callable[[int], None] | None) -> pd.DataFrame:
        texts = frame["text"].tolist()
        names = self.classifier.label_names
        logits, notes = np.zeros((len(texts), len(names)), dtype=np.float32), []
        for start in range(0, len(texts), CHUNK):
            chunk_logits, chunk_notes = self.classifier.score(texts[start : start + CHUNK], self.settings.batch_size)
            logits[start : start + len(chunk_notes)] = chunk_logits
            notes += chunk_notes
            if progress:
                progress(len(chunk_notes))
        empty = np.array([any(note.code == "empty" for note in found) for found in notes], dtype=bool)
        probabilities = softmax(logits, axis=1).astype(np.float32)
        first = part.number * self.settings.rows_per_shard
        ids = (
            {self.settings.id_column: frame["id"].tolist()}
            if self.settings.id_column
            else {"file": [part.name] * len(texts), "row": np.arange(first + 1, first + len(texts) + 1)}
        )
        return pd.DataFrame(
            {
                **ids,
                "predicted": np.where(empty, "", np.array(names)[logits.argmax(1)]),
                "probability": np.where(empty, np.nan, probabilities.max(1)),
                **{f"probability_{name}": np.where(empty, np.nan, probabilities[:, i]) for i, name in enumerate(names)},
                "notes": ["; ".join(note.message for note in found) for found in notes],
            }
        )


def read_part(part: Part, settings: Settings) -> pd.DataFrame:
    """A part read on its own (a Ray actor's): the file read up to it."""
    for number, frame in enumerate(chunks(Path(part.path), settings.rows_per_shard, settings)):
        if number == part.number:
            return frame
    raise PipelineError(f"{part.path} has fewer rows than when the run started: it changed. Run again.")


def write_shard(path: Path, table: pd.DataFrame, output_format: str) -> None:
    with atomic_file(path) as tmp:
        if output_format == "parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, encoding="utf-8")


# ---- the run: plan, manifest, local workers ----


def plan(root: Path, files: list[Path], settings: Settings) -> tuple[list[Part], dict, list[str]]:
    """Every part of every readable input, the manifest's record of the inputs, and a message per unreadable one."""
    parts, inputs, bad = [], {}, []
    for path in tqdm(files, desc="reading the inputs", unit="file", disable=len(files) < 20):
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        try:
            rows = count_rows(path, settings)
        except PipelineError as err:
            bad.append(str(err))
            continue
        stat = path.stat()
        inputs[name] = {"rows": rows, "bytes": stat.st_size, "modified_ns": stat.st_mtime_ns}
        size = settings.rows_per_shard
        parts += [Part(str(path.resolve()), name, n, min(size, rows - n * size)) for n in range(-(-rows // size))]
    return parts, inputs, bad


def check_manifest(output: Path, record: dict) -> None:
    """A folder with shards of another run (another model, columns, format, or changed inputs) is refused."""
    file = output / MANIFEST
    if not file.is_file():
        if any(output.glob("*.part-*")):
            raise PipelineError(
                f"--output {output} holds shards but no {MANIFEST}: not a folder this wrote. "
                "Give an empty or new folder."
            )
        return
    earlier = json.loads(file.read_text(encoding="utf-8"))
    changed = [key for key, value in record["settings"].items() if earlier["settings"].get(key) != value]
    if changed:
        raise PipelineError(
            f"--output {output} holds shards of a run with other settings ({', '.join(changed)} differ; see "
            f"{file}). Run with the same ones to finish it, or give another --output."
        )
    for name, now in record["inputs"].items():
        before = earlier["inputs"].get(name)
        if before and before != now:
            raise PipelineError(
                f"{name} changed since the run that wrote {output} began: its shards there are of the old file. "
                f"Delete {output}/{name.replace('/', '__')}.part-* and run again."
            )


def manifest(settings: Settings, fingerprint: str, inputs: dict, parts: list[Part]) -> dict:
    shaping = asdict(settings)
    for key in ("model_dir", "device", "batch_size", "output"):  # where and how fast, not what is written
        shaping.pop(key)
    return {"settings": {"model_fingerprint": fingerprint, **shaping}, "inputs": inputs, "shards": len(parts)}


DEFAULTS = {
    "processes": 1,
    "rows_per_shard": 10_000,
    "output_format": "parquet",
    "actors_per_node": 1,
    "cpus_per_actor": 1,
    "gpus_per_actor": 0.0,
}


def score_corpus(args) -> None:
    """`zh-sentiment predict --input FOLDER|GLOB --output DIR`: see the module's docstring."""
    for key, value in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    ray_only = [
        f"--{key.replace('_', '-')}"
        for key in ("actors_per_node", "cpus_per_actor", "gpus_per_actor")
        if getattr(args, key) != DEFAULTS[key]
    ]
    if args.ray and args.processes != 1:
        raise PipelineError("--processes is for a local run; with --ray, set --actors-per-node.")
    if ray_only and not args.ray:
        raise PipelineError(f"{', '.join(ray_only)} go(es) with --ray ADDRESS.")
    if args.gpus_per_actor < 0:
        raise PipelineError(f"--gpus-per-actor {args.gpus_per_actor}: expected 0 or more.")
    if not args.ray:
        return run_corpus(args, None)
    from zh_sentiment.ray_scoring import connect

    ray = connect(args.ray)  # first: reading the inputs may take long
    try:
        run_corpus(args, ray)
    finally:
        ray.shutdown()


def run_corpus(args, ray) -> None:
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise PipelineError(f"--output {output} is a file; give a folder for the shards (it is created if need be).")
    root, files = find_inputs(str(args.input), output)
    folder = args.model_dir or choose_model(name=args.model)[0]
    opened = open_model_folder(folder)  # every check, before any reading: a bad model folder stops it at once
    settings = Settings(
        model_dir=str(Path(folder).resolve()),
        device=args.device,
        precision=args.precision,
        runtime=args.runtime,
        batch_size=args.batch_size,
        text_column=args.text_column,
        id_column=args.id_column,
        columns=args.columns,
        encoding=args.encoding,
        rows_per_shard=args.rows_per_shard,
        output_format=args.output_format,
        output=str(output.resolve()),
    )
    parts, inputs, bad = plan(root, files, settings)
    record = manifest(settings, opened.info["fingerprint"], inputs, parts)
    check_manifest(output, record)
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / MANIFEST, record)
    todo = [part for part in parts if not part.shard(settings).is_file()]
    done_rows = sum(part.rows for part in parts) - sum(part.rows for part in todo)
    where = f"Ray cluster {args.ray}" if args.ray else f"{args.processes} process(es)"
    print(
        f"predict: model {folder}; {len(files)} input file(s), {len(parts)} shard(s) of up to "
        f"{settings.rows_per_shard:,} rows: {len(parts) - len(todo)} done already, {len(todo)} to score on {where}.",
        file=sys.stderr,
    )
    start = time.monotonic()
    with tqdm(total=done_rows + sum(p.rows for p in todo), initial=done_rows, unit="row", desc="predict") as bar:
        if args.ray:
            from zh_sentiment.ray_scoring import score_on_ray

            bad += score_on_ray(
                ray, todo, settings, args.actors_per_node, args.cpus_per_actor, args.gpus_per_actor, bar
            )
        else:
            bad += score_locally(todo, settings, args.processes, bar)
    discard_leftovers(output, {part.shard(settings).name for part in parts})
    finished = sum(part.shard(settings).is_file() for part in parts)
    seconds = time.monotonic() - start
    print(
        f"predict: {finished} of {len(parts)} shard(s) in {output}; {bar.n - done_rows:,} rows scored in "
        f"{seconds:,.1f} s.",
        file=sys.stderr,
    )
    if bad:
        shown = "\n  ".join(bad[:10]) + (f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise PipelineError(
            f"{len(bad)} input(s) could not be scored (the other shards are written):\n  {shown}\n"
            "Fix or remove them and run the same command again: it scores only what is missing."
        )


def discard_leftovers(output: Path, shards: set[str]) -> None:
    """The temporary files of shards whose writer is gone (killed midway), in one pass over the folder
    (outputs.discard_leftovers looks for one output's)."""
    for entry in os.scandir(output):
        found = TEMPORARY.fullmatch(entry.name)
        if found and found[1] in shards and not pid_alive(int(found[2])):
            Path(entry.path).unlink(missing_ok=True)


def score_locally(todo: list[Part], settings: Settings, processes: int, bar) -> list[str]:
    """The parts scored in this process, or streamed to `processes` worker processes; a message per bad input."""
    bad = []
    if processes == 1:
        scorer = Scorer(settings)
        for part, frame in stream(todo, settings, bad):
            try:
                scorer.run(part, frame, bar.update)
            except PipelineError as err:
                bad.append(str(err))
        return bad
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    context = get_context("spawn")  # a fresh interpreter: torch's threads and forked state do not mix
    try:
        with ProcessPoolExecutor(
            processes, context, initializer=start_worker, initargs=(settings, threads, os.getpid())
        ) as pool:
            running = set()
            for part, frame in stream(todo, settings, bad):
                if len(running) >= 2 * processes:  # bounded: at most two parts per worker in memory
                    finished, running = wait(running, return_when=FIRST_COMPLETED)
                    bad += collect(finished, bar)
                running.add(pool.submit(work, part, frame))
            bad += collect(running, bar)
        return bad
    except BrokenProcessPool as err:  # a worker killed (the kernel's OOM killer, a kill -9)
        raise PipelineError(
            f"a worker process died ({first_line(err)}). The shards written are kept: run the same command again, "
            "with fewer --processes or a smaller --rows-per-shard if memory ran out."
        ) from None


def stream(todo: list[Part], settings: Settings, bad: list[str]) -> Iterator[tuple[Part, pd.DataFrame]]:
    """The parts to do with their rows, each file read once from its start; a file that fails to read midway
    (it was read whole when the run was planned) goes into `bad`."""
    files: dict[str, dict[int, Part]] = {}
    for part in todo:
        files.setdefault(part.path, {})[part.number] = part
    for path, wanted in files.items():
        try:
            for number, frame in enumerate(chunks(Path(path), settings.rows_per_shard, settings)):
                if number in wanted:
                    yield wanted[number], frame
                if number >= max(wanted):
                    break
        except PipelineError as err:
            bad.append(str(err))


def collect(futures, bar) -> list[str]:
    bad = []
    for future in futures:
        rows, error = future.result()
        bar.update(rows)
        if error:
            bad.append(error)
    return bad


WORKER: Scorer | None = None


def start_worker(settings: Settings, threads: int, parent: int) -> None:
    global WORKER
    die_with(parent)  # not getppid(): the parent may be gone already, killed while this one was starting
    import torch

    torch.set_num_threads(threads)
    WORKER = Scorer(settings)


def work(part: Part, frame: pd.DataFrame) -> tuple[int, str | None]:
    try:
        return WORKER.run(part, frame), None
    except PipelineError as err:
        return 0, str(err)
