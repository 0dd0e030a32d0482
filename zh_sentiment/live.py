"""Per-epoch training metrics through dvclive, for the models trained in epochs (train, finetune).

metrics/<model>/live/plots/metrics/<name>.tsv  one row per epoch (step = the epoch) of train_loss, train_accuracy,
                                              validation_loss, validation_accuracy: `dvc plots` draws them
metrics/<model>/live/metrics.json             the last epoch's, rewritten after each: `dvc exp show` shows a
                                              running experiment's progress from it

Inside a DVC stage dvclive writes only these files: dvc.yaml declares them (no dvc.yaml of dvclive's own,
dvcyaml=None) and `dvc exp run` records the experiment (save_dvc_exp=False: no git refs of dvclive's own).
"""

from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from dvclive import Live

from zh_sentiment.outputs import write_json
from zh_sentiment.paths import model_reports

HISTORY = ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy")
# The last epoch's summary holds one figure besides the step, so that `dvc metrics show` stays one narrow table.
SUMMARY = "validation_accuracy"


class AtomicLive(Live):
    """dvclive's Live, whose summary is replaced whole: `dvc exp show` reads it while the run rewrites it after each
    epoch, and found dvclive's in-place rewrite half-written (JSONFileCorruptedError)."""

    def make_summary(self) -> None:
        self.summary["step"] = self.step  # as dvclive's own: end() reads the step back from it
        write_json(self.metrics_file, self.summary)


def live_dir(model: str) -> Path:
    return model_reports(model) / "live"


@contextmanager
def epoch_logger(model: str):
    """A function that logs one epoch's row (epoch, and HISTORY's figures) for `model`."""
    with AtomicLive(str(live_dir(model)), dvcyaml=None, save_dvc_exp=False, report=None) as live:

        def log_epoch(row: dict) -> None:
            live.step = row["epoch"]
            for name in HISTORY:
                live.log_metric(name, round(float(row[name]), 6))
            live.summary = {SUMMARY: live.summary[SUMMARY]}  # dvclive adds the step
            live.next_step()

        yield log_epoch


def read_history(model: str, root: Path = Path()) -> pd.DataFrame:
    """The per-epoch rows dvclive wrote for `model` under `root`: epoch, then HISTORY's columns."""
    folder = root / live_dir(model) / "plots" / "metrics"
    frames = [pd.read_csv(folder / f"{name}.tsv", sep="\t").set_index("step") for name in HISTORY]
    return pd.concat(frames, axis=1).rename_axis("epoch").reset_index()
