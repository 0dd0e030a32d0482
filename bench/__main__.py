"""Run the benchmark: python -m bench [--smoke] [--only NAME ...]

Each measurement is a module bench/<name>.py with measure(setup) -> list[Row]; it prints ratios
against baselines measured in the same run. Results go to bench/results.json, and the
benchmark table in docs/benchmark.md is regenerated from that file (bench/readme.py). To add a measurement, write
its module and add its name to MEASUREMENTS.
"""

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch
import transformers

from bench.common import REAL, SMOKE, Setup
from bench.readme import TABLE_FILE, table_page, update_table
from zh_sentiment.encoder import use_all_cores
from zh_sentiment.outputs import write_json
from zh_sentiment.sandbox import ROOT

MEASUREMENTS = [
    "precision",
    "finetune_memory",
    "finetune_epochs",
    "default_run",
    "serving",
    "label_issues",
    "corpus",
    "scale",
    "explain",
    "onnx_runtime",
    "onnx_accuracy",
]
RESULTS_FILE = ROOT / "bench" / "results.json"


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average_at_start": round(os.getloadavg()[0], 2),  # other processes slow every timing down
    }


def merged(earlier: dict, latest: dict) -> dict:
    """`earlier` with `latest`'s measurements in place of its own; `runs` says where each measurement came from."""

    def run(results: dict) -> str:
        load = results["machine"]["load_average_at_start"]
        return f"`{results['command']}`, {results['date'][:10]}, load average {load} at the start"

    runs = {name: earlier.get("runs", {}).get(name, run(earlier)) for name in earlier["measurements"]}
    runs.update({name: run(latest) for name in latest["measurements"]})
    measurements = {**earlier["measurements"], **latest["measurements"]}
    keep = [name for name in MEASUREMENTS if name in measurements]  # the runner's order; dropped modules go
    return {
        **earlier,
        "measurements": {name: measurements[name] for name in keep},
        "runs": {name: runs[name] for name in keep},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny encoder and few reviews: seconds, not minutes")
    parser.add_argument("--only", nargs="+", choices=MEASUREMENTS, default=MEASUREMENTS)
    parser.add_argument("--results", type=Path, default=RESULTS_FILE, help="where to write the results (JSON)")
    parser.add_argument(
        "--table",
        type=Path,
        default=TABLE_FILE,
        help="Markdown file whose table to regenerate, between the bench:start and bench:end markers",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the other measurements in --results; the table says which run each is",
    )
    args = parser.parse_args(argv)
    table_page(args.table)  # now, not after the measuring
    scale = SMOKE if args.smoke else REAL
    use_all_cores()
    start = time.perf_counter()
    results = {
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "scale": asdict(scale),
        "measurements": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        setup = Setup(scale, Path(scratch))
        for name in args.only:
            print(f"-- {name}", flush=True)
            rows = importlib.import_module(f"bench.{name}").measure(setup)
            for row in rows:
                print(f"   {row.measurement}: {row.shown()}  {row.note}", flush=True)
            results["measurements"][name] = [{**asdict(row), "shown": row.shown()} for row in rows]
    results["wall_seconds"] = wall_seconds = round(time.perf_counter() - start, 1)
    if args.merge and args.results.exists():
        results = merged(json.loads(args.results.read_text(encoding="utf-8")), results)
    write_json(args.results, results)
    update_table(args.table, results)
    print(f"wrote {args.results} and the table in {args.table} ({wall_seconds:.0f} s)")
    return results


if __name__ == "__main__":
    main()
