"""Write outputs so that a killed stage never leaves something that looks complete.

Everything is written under a temporary name in the same folder (so that the rename is atomic) and renamed
into place only when it is whole. The temporary name is new and ours, `.<name>.<pid>-<random>.tmp`: it never
replaces or removes a file of the user's, such as an input called `<name>.tmp`. A folder left behind by a
stage that was killed (its pid no longer alive: the cached states can be gigabytes) is discarded by the next
write of the same output; a file is never discarded, since a user's own file (predict's --input) may have any
name.

A file output that is a link is written where the link points (the link stays), keeping that file's
permissions; one that is a device or a pipe (/dev/stdout, a FIFO) is written to directly: it cannot be
replaced, and nothing half-written can be mistaken for a whole file there.
"""

import errno
import json
import os
import re
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

from zh_sentiment.errors import PipelineError
from zh_sentiment.lifetime import pid_alive


class DiskFull(PipelineError):
    pass


def disk_full(err: BaseException) -> bool:
    if isinstance(err, DiskFull):  # from an atomic_file inside an atomic_dir: name the folder instead
        return True
    # safetensors reports a full disk as SafetensorError("... No space left on device (os error 28)")
    if isinstance(err, OSError):
        return err.errno == errno.ENOSPC
    return isinstance(err, SafetensorError) and "No space left" in str(err)


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def disk_full_error(path: Path, needed: int) -> DiskFull:
    """`needed`: what the writer said it needs, or what it had written when the disk filled (0 if it wrote nothing)."""
    free = shutil.disk_usage(path.parent if path.parent.exists() else ".").free
    if needed > free:  # known before writing
        amount = f"it needs at least {needed / 1e6:,.1f} MB free there, {free / 1e6:,.1f} MB are free now"
    else:  # the disk filled while writing: the output is larger than all the space there was for it
        amount = f"it needs more than the {free / 1e6:,.1f} MB that are free there without it"
    return DiskFull(f"no space left on the device for {path}: {amount}. Free some space and run again.")


def temporary_name(path: Path) -> Path:
    """A name next to `path` that no one else uses: hidden, the writer's pid (see discard_leftovers), random."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def leftovers(path: Path) -> list[Path]:
    """The temporary names of `path` whose writer is gone: killed before it could rename or remove them."""
    ours = re.compile(re.escape(f".{path.name}.") + r"(\d{1,9})-[0-9a-f]{8}\.tmp")
    found = (ours.fullmatch(entry.name) for entry in os.scandir(path.parent))
    return [path.with_name(match[0]) for match in found if match and not pid_alive(int(match[1]))]


def discard_leftovers(path: Path) -> None:
    for leftover in leftovers(path):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path, needs: int = 0) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces `path` once the block succeeds.

    `needs`, the bytes the block will write if the caller knows, is checked against the free
    space first, so that a long stage stops before its work rather than after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    discard_leftovers(path)
    if needs > shutil.disk_usage(path.parent).free:
        raise disk_full_error(path, needs)
    tmp = temporary_name(path)
    tmp.mkdir()  # fails rather than reuse a folder of that name: removing it on failure is then always right
    try:
        yield tmp
    except (OSError, SafetensorError, DiskFull) as err:
        # what was written when the disk filled is a lower bound of what the output needs
        written = max(size(tmp), needs)
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full(err):
            raise disk_full_error(path, written) from err
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def is_stream(path: Path) -> bool:
    """A character device, FIFO or socket: something to write to, not a file to replace."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path that replaces `path` once the block succeeds (see the module's docstring for
    links, devices and pipes)."""
    path = Path(os.path.realpath(path))
    if is_stream(path):
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    tmp.touch(exist_ok=False)  # created here, exclusively (as mkstemp does, but with the umask's mode)
    try:
        yield tmp
        if path.is_file():  # an output replaced keeps its permissions: a private file stays private
            os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        written = size(tmp)
        tmp.unlink(missing_ok=True)
        if disk_full(err):
            raise disk_full_error(path, written) from err
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, data: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_csv(path: str | Path, frame) -> None:
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8")
