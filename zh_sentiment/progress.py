"""Progress bars that stay readable in a log.

On a terminal this is tqdm. Anywhere else (`dvc queue logs`, a file, a pipe) tqdm's redraws, a
carriage return and the whole bar every 0.1 s, pile up into one wall of text; there it writes a
line at the start, one per 10% of the total, and one at the end.
"""

import sys

from tqdm import tqdm as terminal_tqdm

STEP = 10  # percent between two lines in a log


class LogLines:
    """Where the bar writes in a log: whole lines only (tqdm's clearing writes, \\r and blanks, are dropped)."""

    def write(self, text: str) -> None:
        if text.strip():
            sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class tqdm(terminal_tqdm):  # noqa: N801 (a drop-in for tqdm's own class)
    def __init__(self, *args, **kwargs):
        self.in_log = "file" not in kwargs and not sys.stderr.isatty()
        self.last_line = None  # (step, n) of the last line written to the log
        if self.in_log:
            kwargs.update(file=LogLines(), leave=False, dynamic_ncols=False, ncols=100)
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if not self.in_log:
            return super().display(msg, pos)
        step = 100 // STEP if not self.total else min(100 // STEP, int(self.n * 100 // STEP // self.total))
        if msg is None and (self.last_line is None or step > self.last_line[0]):
            self.write_line(step)
        return True

    def write_line(self, step: int) -> None:
        self.last_line = (step, self.n)
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()

    def close(self):
        if self.in_log and not self.disable and (self.last_line is None or self.last_line[1] != self.n):
            self.write_line(100 // STEP)  # the end, with the final count and rate
        super().close()


def trange(*args, **kwargs) -> tqdm:
    return tqdm(range(*args), **kwargs)
