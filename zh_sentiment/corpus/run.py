"""The run: the plan, the manifest that keeps a re-run from mixing settings, and where the parts are scored."""

import json
import os
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path

from zh_sentiment.corpus.inputs import count_rows, find_inputs
from zh_sentiment.corpus.local import score_locally
from zh_sentiment.corpus.parts import Part, Settings
from zh_sentiment.errors import PipelineError
from zh_sentiment.inference import choose_model, open_model_folder
from zh_sentiment.lifetime import pid_alive
from zh_sentiment.outputs import write_json
from zh_sentiment.progress import tqdm

MANIFEST = "_manifest.json"
TEMPORARY = re.compile(r"\.(.+)\.(\d{1,9})-[0-9a-f]{8}\.tmp")  # outputs.temporary_name's pattern


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
    from zh_sentiment.corpus.on_ray import connect

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
            from zh_sentiment.corpus.on_ray import score_on_ray

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
