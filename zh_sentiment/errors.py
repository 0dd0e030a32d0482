"""User-facing errors: one clear message instead of a traceback."""

import os
import sys
from collections.abc import Callable

from zh_sentiment.lifetime import die_with_dvc


class PipelineError(Exception):
    """A problem the user can fix: the message names the file, row or param and what to do."""


def first_line(err: Exception) -> str:
    """A library error's gist, to quote inside a PipelineError (PIPELINE_DEBUG=1 shows the rest)."""
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def run(main: Callable[[], None]) -> None:
    """Run a stage's main(); print a PipelineError as one message and exit 1.

    Set PIPELINE_DEBUG=1 to get the full traceback as well. Under DVC the stage dies with DVC, so a
    killed `dvc repro` leaves no stage writing outputs behind it.
    """
    die_with_dvc()
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C: DVC says the stage was interrupted; a traceback adds nothing
        sys.exit(130)
    except PipelineError as err:
        if os.environ.get("PIPELINE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        if err.__cause__ is not None:
            print("(set PIPELINE_DEBUG=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)
