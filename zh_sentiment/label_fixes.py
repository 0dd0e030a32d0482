"""Reviewed label decisions (data/label_fixes.csv), which the clean stage applies: relabel or drop a review, or
keep it as labelled (the label is right; label_issues stops listing the review, as it does a relabeled one).

A decision names its review by `id` (as metrics/data/label_issues.csv shows it) or by `text`; the id is
a hash of the cleaned text, so it stays the same when the source is re-fetched, reordered or re-split.
A decision that matches no review, names a label that does not exist, or repeats another decision's
review stops clean with the line to fix: a reviewer's typo must never be ignored silently.
"""

import csv
import hashlib
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from zh_sentiment.errors import PipelineError
from zh_sentiment.text import normalize_text

ID_LENGTH = 16  # hex digits of sha256: 64 bits, no collision among millions of reviews in practice
COLUMNS = ("id", "text", "action", "label", "note")  # note: the reviewer's reason, for people only
ACTIONS = ("relabel", "drop", "keep")
MAX_SHOWN = 5


def review_id(text: str) -> str:
    """The stable id of a cleaned review text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:ID_LENGTH]


@dataclass(frozen=True)
class Decision:
    line: int  # in the file, for messages
    id: str
    action: str
    label: int | None  # the new label id (relabel), None (drop)


def read_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line, {column: cell}) for every row under the header that has any cell filled in."""
    if not path.exists():  # under `dvc repro` DVC stops first (a missing dependency); run by hand: no decisions
        return []
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise PipelineError(f"{path}: not UTF-8 (first bad byte at offset {err.start}); save it as UTF-8.") from None
    reader = csv.reader(io.StringIO(text))
    try:
        header = [cell.strip() for cell in next(reader, [])]
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise PipelineError(f"{path}, line {reader.line_num}: cannot be read as CSV ({err}).") from None
    unknown = [name for name in header if name not in COLUMNS]
    if unknown or len(set(header)) != len(header) or not {"action", "label"} <= set(header):
        raise PipelineError(
            f"{path}: the header row is {','.join(header) or '(empty)'}; it must name the columns "
            f"{','.join(COLUMNS)} (id or text may be left out, note is optional), each once."
        )
    if "id" not in header and "text" not in header:
        raise PipelineError(f"{path}: the header row needs an id or a text column to name the reviews.")
    found = []
    for line, row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise PipelineError(
                f"{path}, line {line}: {len(row)} cells, but the header names {len(header)} columns. "
                'A text that contains a comma or a double quote must be in double quotes ("" for a quote inside it).'
            )
        found.append((line, dict(zip(header, row))))
    return found


def parse_decision(line: int, row: dict[str, str], names: list[str], path: Path) -> Decision:
    where = f"{path}, line {line}"
    given_id, given_text = row.get("id", "").strip(), row.get("text", "")
    text = normalize_text(given_text)[0]  # a text pasted from the source matches its cleaned review
    if not given_id and not text:
        raise PipelineError(f"{where}: no id and no text; name the review by its id (metrics/data/label_issues.csv).")
    if given_id and (len(given_id) != ID_LENGTH or any(c not in "0123456789abcdef" for c in given_id)):
        raise PipelineError(
            f"{where}: id '{given_id}' is not a review id ({ID_LENGTH} hex digits, as metrics/data/label_issues.csv "
            "shows them); copy it from there."
        )
    if given_id and text and review_id(text) != given_id:
        raise PipelineError(
            f"{where}: the id and the text name different reviews (the text's id is {review_id(text)}); "
            "keep the one you mean and clear the other."
        )
    action, label = row["action"].strip(), row["label"].strip()
    if action not in ACTIONS:
        raise PipelineError(f"{where}: action '{action}' is not one of {', '.join(ACTIONS)}.")
    if action != "relabel" and label:
        raise PipelineError(f"{where}: action {action} takes no label (found '{label}'); clear it, or use relabel.")
    if action == "relabel" and label not in names:
        raise PipelineError(
            f"{where}: label '{label}' is not a label of this dataset; relabel to one of {', '.join(names)}."
        )
    return Decision(line, given_id or review_id(text), action, names.index(label) if label else None)


def read_decisions(path: Path, names: list[str]) -> list[Decision]:
    """The decisions in `path`, checked; `names` are the label names (ids 0..k-1)."""
    decisions = [parse_decision(line, row, names, path) for line, row in read_rows(path)]
    lines: dict[str, list[int]] = {}
    for decision in decisions:
        lines.setdefault(decision.id, []).append(decision.line)
    repeated = [found for found in lines.values() if len(found) > 1]
    if repeated:
        shown = "; ".join(" and ".join(map(str, found)) for found in repeated[:MAX_SHOWN])
        raise PipelineError(
            f"{path}: {len(repeated)} review(s) decided more than once (lines {shown}); keep one decision per review."
        )
    return decisions


def apply_decisions(
    splits: dict[str, pd.DataFrame], decisions: list[Decision], path: Path
) -> tuple[dict[str, pd.DataFrame], dict[str, Counter]]:
    """`splits` (text, label id) with the decisions applied to every copy of each review, in any split,
    and per split how many rows were relabeled and dropped. A relabel to the label a row already
    has changes nothing and is not counted; a keep changes nothing, but must name a review like any other."""
    ids = {name: frame["text"].map(review_id) for name, frame in splits.items()}
    unmatched = [d for d in decisions if not any((found == d.id).any() for found in ids.values())]
    if unmatched:
        shown = "; ".join(f"line {d.line}: {d.id}" for d in unmatched[:MAX_SHOWN])
        raise PipelineError(
            f"{path}: {len(unmatched)} decision(s) match no review of the source after cleaning ({shown}). "
            "Check the id or text against metrics/data/label_issues.csv; remove a decision whose review is "
            "no longer in the source."
        )
    counts = {name: Counter(relabeled=0, dropped=0) for name in splits}
    relabel = {d.id: d.label for d in decisions if d.action == "relabel"}
    drop = {d.id for d in decisions if d.action == "drop"}
    fixed = {}
    for name, frame in splits.items():
        new_labels = ids[name].map(relabel)
        changed = new_labels.notna() & (new_labels != frame["label"])
        dropped = ids[name].isin(drop)
        counts[name].update(relabeled=int(changed.sum()), dropped=int(dropped.sum()))
        frame = frame.assign(label=new_labels.fillna(frame["label"]).astype(int))
        fixed[name] = frame[~dropped]
    return fixed, counts
