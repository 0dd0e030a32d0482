"""zh-sentiment torchrun ARGS...: torchrun itself, with a failed run said in one line.

It takes exactly torchrun's arguments (`torchrun --help`) and runs torchrun's own launcher in this process:
rendezvous, workers, restarts and signals are all torchrun's. What differs is a failure. Plain torchrun ends a
failed run with its own traceback and a report box around the root cause; this prints just the root cause,
the failing worker's `error: ...` line (zh_sentiment/distributed.py leaves it in torchrun's error file), and
exits 1. For example, on each node of two:

    zh-sentiment torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d \\
        --rdzv-endpoint=node1:29500 --rdzv-id=ft1 -m stages.finetune
"""

import sys

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
from torch.distributed.elastic.rendezvous import RendezvousError
from torch.distributed.run import parse_args, run

from zh_sentiment.errors import PipelineError, first_line


def root_cause(err: ChildFailedError) -> str:
    """The first failure's message: the worker's own `error: ...` line, or how the process ended."""
    rank, failure = err.get_first_failure()
    message = failure.message
    if isinstance(message, dict):  # a worker's error file: {"message": ..., "extraInfo": {...}}
        message = message.get("message", "")
    message = str(message).strip()
    if message.startswith("To enable traceback"):  # torchrun's words for a worker that left no error file
        message = ""
    if message.startswith("error: "):
        return message.removeprefix("error: ")
    return f"{err.name}: rank {rank} (pid {failure.pid}) {ended(failure)}" + (f": {message}" if message else "")


def ended(failure: ProcessFailure) -> str:
    signal = failure.signal_name()
    if failure.exitcode < 0 and signal != "<N/A>":
        return f"was killed by {signal}"
    return f"exited with code {failure.exitcode}"


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        run(args)
    except ChildFailedError as err:
        raise PipelineError(root_cause(err)) from None
    except RendezvousError as err:
        raise PipelineError(
            f"torchrun: the nodes could not meet at --rdzv-endpoint {args.rdzv_endpoint} ({first_line(err)}): "
            "check that every node runs the same command and reaches that address, or that the node hosting it "
            "is still up."
        ) from None
    except SignalException as err:  # torchrun was told to stop (SIGTERM, a scheduler's cancel): it stopped its workers
        print(f"error: torchrun: stopped by {err.sigval.name}; its workers were stopped too", file=sys.stderr)
        sys.exit(128 + err.sigval.value)
