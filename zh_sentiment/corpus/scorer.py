"""Scoring one part and writing its shard: the same code in this process, a --processes worker or a Ray actor."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import softmax

from zh_sentiment.corpus.inputs import read_part
from zh_sentiment.corpus.parts import Part, Settings
from zh_sentiment.inference import Classifier, load_model
from zh_sentiment.outputs import atomic_file
from zh_sentiment.predict import CHUNK


class Scorer:
    """A model loaded once, scoring parts into shards: in this process, in each --processes worker, or in each
    Ray actor."""

    def __init__(self, settings: Settings, classifier: Classifier | None = None):
        self.settings = settings
        self.classifier = classifier or load_model(
            Path(settings.model_dir), settings.device, settings.precision, settings.runtime
        )

    def run(self, part: Part, frame: pd.DataFrame | None = None, progress: Callable[[int], None] | None = None) -> int:
        """Score `part` (read here unless given) and write its shard; the rows written."""
        if frame is None:
            frame = read_part(part, self.settings)
        table = self.score(frame, part, progress)
        write_shard(part.shard(self.settings), table, self.settings.output_format)
        return len(table)

    def score(self, frame: pd.DataFrame, part: Part, progress: Callable[[int], None] | None) -> pd.DataFrame:
        texts = frame["text"].tolist()
        names = self.classifier.label_names
        logits, notes = np.zeros((len(texts), len(names)), dtype=np.float32), []
        for start in range(0, len(texts), CHUNK):
            chunk_logits, chunk_notes = self.classifier.score(texts[start : start + CHUNK], self.settings.batch_size)
            logits[start : start + len(chunk_notes)] = chunk_logits
            notes += chunk_notes
            if progress:
                progress(len(chunk_notes))
        empty = np.array([any(note.code == "empty" for note in found) for found in notes], dtype=bool)
        probabilities = softmax(logits, axis=1).astype(np.float32)
        first = part.number * self.settings.rows_per_shard
        ids = (
            {self.settings.id_column: frame["id"].tolist()}
            if self.settings.id_column
            else {"file": [part.name] * len(texts), "row": np.arange(first + 1, first + len(texts) + 1)}
        )
        return pd.DataFrame(
            {
                **ids,
                "predicted": np.where(empty, "", np.array(names)[logits.argmax(1)]),
                "probability": np.where(empty, np.nan, probabilities.max(1)),
                **{f"probability_{name}": np.where(empty, np.nan, probabilities[:, i]) for i, name in enumerate(names)},
                "notes": ["; ".join(note.message for note in found) for found in notes],
            }
        )


def write_shard(path: Path, table: pd.DataFrame, output_format: str) -> None:
    with atomic_file(path) as tmp:
        if output_format == "parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False, encoding="utf-8")
