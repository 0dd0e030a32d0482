"""Scoring the parts here: in this process, or streamed to --processes worker processes that die with it."""

import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path

import pandas as pd

from zh_sentiment.corpus.inputs import chunks
from zh_sentiment.corpus.parts import Part, Settings
from zh_sentiment.corpus.scorer import Scorer
from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.lifetime import die_with


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
