"""Progress bars: tqdm's redraws on a terminal; a line per 10% in a log (`dvc queue logs`, a file, a pipe)."""

import subprocess
import sys

LOOP = """
import time
from zh_sentiment.progress import tqdm
for _ in tqdm(range(500), desc="embed train", unit="batch", mininterval=0):
    time.sleep(0.001)
"""


def test_a_bar_written_to_a_log_is_a_line_per_ten_percent():
    result = subprocess.run([sys.executable, "-c", LOOP], capture_output=True, text=True, check=True)
    assert "\r" not in result.stderr
    lines = result.stderr.splitlines()
    assert 3 <= len(lines) <= 12, result.stderr  # the start, at most one per 10%, the end
    assert lines[0].startswith("embed train:   0%") and lines[-1].startswith("embed train: 100%")
    percents = [int(line.split(":")[1].split("%")[0]) for line in lines]
    assert percents == sorted(percents) and len(set(p // 10 for p in percents)) == len(percents)
