"""Starting, supervising and stopping the fine-tuning processes.

`python -m stages.finetune` is the launcher. With finetune.processes: 1 it trains in its own process;
with N > 1 it starts N workers itself (multiprocessing spawn: CUDA needs fresh processes), waits for
them, and when one fails stops the others and raises one PipelineError for the whole run. This replaces
torchrun, whose worker runs in a session of its own and outlives a killed launcher, whose failures end in
a ChildFailedError traceback after each rank's own message, and which costs a second `import torch`.

- No process outlives its launcher: each worker dies with it (zh_sentiment.lifetime), as the launcher,
  like every stage, dies with DVC.
- One writer per project: the launcher holds an exclusive lock (flock) on LOCK_FILE for the whole run.
- A stalled process (stopped, swapped out, deadlocked) stops the run after finetune.timeout_seconds, the
  timeout of every collective, with a message naming it.

Across nodes the launcher is torchrun (what SLURM's srun starts on each node): started by a launcher that
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT, `python -m stages.finetune` is one rank of
that job (join()) and starts no processes of its own. The same guarantees, as far as a worker can keep them:
it dies with its torchrun (which starts it in a session of its own, so a killed torchrun would leave it
running), every collective times out after finetune.timeout_seconds, only rank 0 holds the lock and writes,
and a failure is one `error:` line, which torchrun's own failure report repeats as its root cause.
"""

import fcntl
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
from tqdm.std import tqdm

from zh_sentiment.errors import PipelineError, first_line
from zh_sentiment.lifetime import die_with_parent

LOCK_FILE = Path(".dvc/tmp/finetune.lock")  # outside every DVC output, and not copied by `dvc exp run --queue`
HOST = "127.0.0.1"  # all processes run on this machine
GRACE_SECONDS = 5  # after one process fails: how long the others get to report their own error before being killed
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # what torchrun sets


def launched() -> bool:
    """Whether a launcher (torchrun; srun running torchrun) started this process as one rank of its job."""
    return all(name in os.environ for name in LAUNCHER_VARIABLES)


# --- one writer, no orphans -------------------------------------------------------------------------------------


@contextmanager
def exclusive(what: str) -> Iterator[None]:
    """Hold LOCK_FILE for the block; if another run holds it, stop with a message naming its pid.
    Under a launcher only rank 0 writes, so only rank 0 takes it (the ranks of one node share a project)."""
    if launched() and os.environ["RANK"] != "0":
        yield
        return
    LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+", encoding="utf-8") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            raise PipelineError(
                f"another finetune run (pid {holder}) is writing {what} in this project (it holds {LOCK_FILE}). "
                f"Wait for it to finish, or stop it (`kill {holder}`), then run again."
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield  # the lock goes with the file: closed here, or by the kernel when this process dies


# --- the run ----------------------------------------------------------------------------------------------------


def run(train: Callable[[int, int], None], processes: int, timeout_seconds: int) -> None:
    """Call train(rank, world) in `processes` processes; raise a PipelineError saying what stopped the run.
    Under a launcher, run this process's rank of the launcher's job instead (finetune.processes unused)."""
    if launched():
        join(train, timeout_seconds)
        return
    if processes == 1:
        train(0, 1)
        return
    # The launcher hosts the store the workers meet at: a free port chosen by the system, no race for one.
    store = dist.TCPStore(HOST, 0, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=timeout_seconds))
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="finetune-reports-") as reports:
        workers = [
            spawn.Process(target=worker, args=(train, rank, processes, store.port, reports), name=f"finetune-{rank}")
            for rank in range(processes)
        ]
        try:
            for process in workers:
                process.start()
            failed = first_failure(workers)
            if failed is None:
                return
            # The others usually fail at their next collective within a second: let them say why, then stop them.
            deadline = time.monotonic() + GRACE_SECONDS
            for process in workers:
                process.join(max(0.0, deadline - time.monotonic()))
            still_running = [rank for rank, process in enumerate(workers) if process.is_alive()]
        finally:
            for process in workers:
                if process.is_alive():
                    process.kill()  # SIGKILL: a stopped (SIGSTOP) process ignores SIGTERM until it is continued
                    process.join()
        report = read_reports(Path(reports), workers)
    explain(report, workers, failed, still_running, timeout_seconds)


def first_failure(workers: list) -> int | None:
    """Wait until every worker has exited (None) or one has failed (its rank)."""
    running = {process.sentinel: rank for rank, process in enumerate(workers)}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            rank = running.pop(sentinel)
            workers[rank].join()
            if workers[rank].exitcode != 0:
                return rank
    return None


def worker(train: Callable[[int, int], None], rank: int, world: int, port: int, reports: str) -> None:
    """One process of the run: train, and on failure leave a report (what kind, what message) for the launcher."""
    die_with_parent()
    # tqdm's default lock is a named semaphore: one left by a killed process makes the launcher's
    # resource tracker warn after the run's message. The bars never span processes: a thread lock does.
    tqdm.set_lock(threading.RLock())
    os.environ.update(  # what torchrun sets (join_group reads them)
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR=HOST,
        MASTER_PORT=str(port),
        TORCHELASTIC_USE_AGENT_STORE="True",  # the launcher hosts the store, as torchrun's agent does
    )
    try:
        train(rank, world)
        return
    except PipelineError as err:
        report = {"kind": "error", "message": str(err)}
    except RuntimeError as err:
        report = {"kind": collective_failure(err) or "crash", "message": traceback.format_exc()}
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal's group: exit quietly
        os._exit(130)
    except BaseException:  # a bug: its traceback is the report
        report = {"kind": "crash", "message": traceback.format_exc()}
    Path(reports, f"{rank}.json").write_text(json.dumps(report), encoding="utf-8")
    sys.exit(1)


def collective_failure(err: RuntimeError) -> str | None:
    """What a failed collective says: "timeout" (it waited finetune.timeout_seconds), "peer" (another process
    went away), or None for any other error. gloo and nccl raise RuntimeError (or DistError, a subclass of it)
    with only the message to tell them apart."""
    text = str(err).lower()
    if isinstance(err, dist.DistError) or "gloo" in text or "nccl" in text:
        return "timeout" if "timed out" in text or "timeout" in text else "peer"
    return None


def join(train: Callable[[int, int], None], timeout_seconds: int) -> None:
    """Run train(RANK, WORLD_SIZE) as the launcher's worker; on failure leave its one line for the launcher too."""
    die_with_parent()  # torchrun: the agent that started this process, which watches it
    tqdm.set_lock(threading.RLock())  # as in worker(): no named semaphore left behind by a killed process
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        train(rank, world)
    except PipelineError as err:
        fail(str(err))
    except RuntimeError as err:
        kind = collective_failure(err)
        if kind is None:  # a bug: its traceback, and torchrun's report after it
            raise
        if kind == "timeout":
            message = (
                f"finetune: rank {rank} of {world} waited finetune.timeout_seconds = {timeout_seconds} s for another "
                "process in a collective and the run stopped: a node stopped answering (stopped, swapped out, "
                "starved of CPU, or cut off from the network). If a process legitimately needs longer between "
                "steps, raise finetune.timeout_seconds."
            )
        else:
            message = (
                f"finetune: rank {rank} of {world} lost another process of the run ({gist(err)}); the run "
                "stopped. The other nodes' output says which one went and why."
            )
        fail(message)


def fail(message: str) -> None:
    """Stop this worker with `message`, said once: torchrun reports a worker's error file as the run's root cause
    (`zh-sentiment torchrun` prints just that line), so a worker that left one prints nothing itself; under a
    launcher without error files the worker prints it."""
    if tell_launcher(message):
        sys.exit(1)
    raise PipelineError(message) from None


def gist(err: RuntimeError) -> str:
    """A collective's error, shortened: gloo's start with the source file and line they were raised at."""
    return re.sub(r"^\[[^\]]*\]\s*", "", first_line(err))[:160]


def tell_launcher(message: str) -> bool:
    """Leave `message` in torchrun's error file (TORCHELASTIC_ERROR_FILE, its own JSON), whose failure report quotes
    it as the root cause (without one it says only "To enable traceback see ..."); whether there was one to write.
    Other launchers set no such file."""
    path = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if path:
        Path(path).write_text(json.dumps({"message": f"error: {message}", "timestamp": int(time.time())}))
    return bool(path)


def join_group(backend: str, rank: int, world: int, timeout_seconds: int) -> None:
    """Join the run's process group at the store in MASTER_ADDR:MASTER_PORT (env://: hosted by run() or torchrun's
    agent, or by rank 0 under a launcher that hosts none), with a bounded timeout on every collective."""
    timeout = timedelta(seconds=timeout_seconds)
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)


def read_reports(folder: Path, workers: list) -> dict[int, dict]:
    found = {}
    for rank in range(len(workers)):
        path = folder / f"{rank}.json"
        if path.exists():
            found[rank] = json.loads(path.read_text(encoding="utf-8"))
    return found


def explain(report: dict[int, dict], workers: list, failed: int, still_running: list[int], timeout: int) -> None:
    """Raise the one message for the run: the project's own error first, then a lost process, a stall, a bug."""
    world = len(workers)
    errors = [rank for rank in sorted(report) if report[rank]["kind"] == "error"]
    if errors:
        raise PipelineError(report[errors[0]]["message"])
    lost = [rank for rank, process in enumerate(workers) if process.exitcode != 0 and rank not in report]
    lost = [rank for rank in lost if rank not in still_running]
    if lost:
        rank = failed if failed in lost else lost[0]
        code = workers[rank].exitcode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        hint = " (the kernel's out-of-memory killer sends SIGKILL: see `dmesg`)" if code == -signal.SIGKILL else ""
        raise PipelineError(
            f"finetune: process {rank} (pid {workers[rank].pid}) of {world} {how}{hint}; the run stopped."
        )
    timed_out = [rank for rank in sorted(report) if report[rank]["kind"] == "timeout"]
    if timed_out:
        stalled = [rank for rank in still_running if rank not in report] or [
            rank for rank in range(world) if rank not in timed_out
        ]
        named = ", ".join(f"{rank} (pid {workers[rank].pid})" for rank in stalled)
        raise PipelineError(
            f"finetune: process {named} of {world} stopped answering: process(es) "
            f"{', '.join(map(str, timed_out))} waited finetune.timeout_seconds = {timeout} s for it in a collective "
            "and the run stopped. Was it stopped (kill -STOP), swapped out or starved of CPU? "
            "If a process legitimately needs longer between steps, raise finetune.timeout_seconds."
        )
    crashed = [rank for rank in sorted(report) if report[rank]["kind"] == "crash"]
    if crashed:  # not a user error: show the bug's traceback, once
        print(f"finetune: process {crashed[0]} of {world} failed:\n{report[crashed[0]]['message']}", file=sys.stderr)
        sys.exit(1)
    last = report.get(failed, {}).get("message", f"exit code {workers[failed].exitcode}").strip().splitlines()[-1]
    raise PipelineError(f"finetune: process {failed} of {world} failed ({last}); the run stopped.")
