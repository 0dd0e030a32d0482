"""Processes that go when the process that started them goes, however it goes (SIGKILL included).

Linux kills a process whose parent dies if it asked to (prctl PR_SET_PDEATHSIG). A thread that waits for
the process to follow covers the rest: the moment before prctl takes effect, other systems, and an
ancestor further up than the parent (DVC, when a shell stands between it and the stage).
"""

import ctypes
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SHELLS = {"sh", "dash", "bash", "zsh", "fish", "ksh", "mksh"}


def die_with_parent() -> None:
    """Be killed as soon as the process that started this one dies."""
    die_with(os.getppid())


def die_with_dvc() -> None:
    """Under `dvc repro` / `dvc exp run`, go when DVC goes.

    DVC runs a stage's cmd as `$SHELL -c cmd`. bash replaces itself with the command; dash (/bin/sh on
    Debian, DVC's shell when SHELL is unset) waits for it instead, and outlives a killed DVC. So the
    process to follow is the nearest ancestor that is not a shell.
    """
    if not os.environ.get("DVC_STAGE"):
        return
    starter = os.getppid()
    while starter > 1 and (found := proc_stat(starter)) and found[0] in SHELLS:
        starter = found[1]
    die_with(starter)


def die_with(starter: int) -> None:
    """Be killed when the parent dies, and exit when `starter` (the parent, or an ancestor) does."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=exit_when_gone, args=(starter,), daemon=True, name=f"follow-{starter}").start()


def proc_stat(pid: int) -> tuple[str, int] | None:
    """A live process's command name and parent pid, from /proc; None once it is gone (or with no /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = stat[stat.index("(") + 1 :].rsplit(")", 1)  # the name may hold spaces and parentheses
    return name, int(rest.split()[1])


def exit_when_gone(pid: int) -> None:
    try:
        select.select([os.pidfd_open(pid)], [], [])  # readable once the process has exited (Linux >= 5.3)
    except (AttributeError, OSError):  # no pidfds here, or the process is gone already: poll
        while pid_alive(pid):
            time.sleep(0.5)
    os._exit(1)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        pass
    return True
