"""clean: normalise texts, check labels, apply the reviewed label decisions, drop empty, duplicate and
leaked reviews.

Reads data/raw/<split>.csv (and data/raw/labels.json, the source's label names, when fetch
wrote it) and data/label_fixes.csv (reviewed decisions: relabel or drop a review; see
zh_sentiment/label_fixes.py), writes data/clean/<split>.csv (text, integer label),
data/clean/labels.json (the label names) and metrics/data/clean.json (rows in and
out of each split, how many rows each rule dropped or fixed, and how many the decisions
relabeled and dropped).
"""

import itertools
import json
from collections import Counter
from pathlib import Path

import pandas as pd

from zh_sentiment.errors import PipelineError, run
from zh_sentiment.label_fixes import apply_decisions, read_decisions
from zh_sentiment.outputs import atomic_dir, write_json
from zh_sentiment.params import Clean, load_params
from zh_sentiment.paths import CLEAN_DIR, CLEAN_REPORT, LABEL_FIXES, LABELS_FILE, RAW_DIR, SOURCE_LABELS_FILE, SPLITS
from zh_sentiment.text import FIXES, normalize_text

MAX_BAD_ROWS_SHOWN = 5


def normalize_texts(frame: pd.DataFrame) -> tuple[pd.DataFrame, Counter, int]:
    """Normalise every text; drop rows whose text is missing or blank.

    Returns the kept rows, how many rows each fix touched, and how many were dropped.
    """
    fixed = Counter({fix: 0 for fix in FIXES})
    texts = []
    for text in frame["text"]:
        cleaned, fixes = normalize_text("" if pd.isna(text) else str(text))
        if cleaned:  # a text fixed into nothing counts as dropped, not as fixed
            fixed.update(fixes)
        texts.append(cleaned)
    frame = frame.assign(text=texts)
    keep = frame["text"] != ""
    return frame[keep], fixed, int((~keep).sum())


def parse_label(value, label_map: dict[str, int]) -> int | None:
    """The integer id of a raw label cell, or None when it is not a valid label."""
    if pd.isna(value):
        return None
    text = str(value).strip()
    if label_map:
        return label_map.get(text)
    try:
        number = float(text)  # "1.0" is what a label column with a gap turns into
    except ValueError:
        return None
    return int(number) if number.is_integer() and number >= 0 else None


def label_names(params: Clean, raw_ids: list[int], source_names: list[str] | None = None) -> list[str]:
    """Names of the ids 0..k-1: clean.label_names, else the label_map keys, else the source's
    ClassLabel names, else the ids themselves; checked against each other."""
    if params.label_map:
        names = names_from_label_map(params)
    else:
        names = names_from_data(params, raw_ids, source_names)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PipelineError(
            f"clean.label_names names {', '.join(map(repr, repeated))} more than once; "
            "give each class its own name, in id order."
        )
    return names


def names_from_label_map(params: Clean) -> list[str]:
    keys: dict[int, list[str]] = {}
    for key, label_id in params.label_map.items():
        keys.setdefault(label_id, []).append(key)
    k = len(keys)
    if not params.label_names:
        return [keys[i][0] for i in range(k)]
    if len(params.label_names) != k:
        raise PipelineError(
            f"clean.label_names has {len(params.label_names)} names but clean.label_map maps to {k} ids; "
            "give one name per id, or set clean.label_names: []."
        )
    for i, name in enumerate(params.label_names):
        if name not in keys[i]:
            # {positive: 0, negative: 1} with names [negative, positive] would call every positive review negative
            raise PipelineError(
                f"clean.label_names says id {i} is '{name}', but clean.label_map maps "
                f"{' and '.join(map(repr, keys[i]))} to {i}"
                + (f" and '{name}' to {params.label_map[name]}" if name in params.label_map else "")
                + ". Name each id by a clean.label_map key that maps to it, in id order: clean.label_names: "
                f"[{', '.join(keys[j][0] for j in range(k))}] (or [] for exactly that)."
            )
    return list(params.label_names)


def names_from_data(params: Clean, raw_ids: list[int], source_names: list[str] | None) -> list[str]:
    if source_names and params.label_names and list(params.label_names) != source_names:
        raise PipelineError(
            f"clean.label_names is [{', '.join(params.label_names)}] but the source names its labels "
            f"[{', '.join(source_names)}] (its label column is a ClassLabel; {SOURCE_LABELS_FILE}). "
            f"Set clean.label_names: [{', '.join(source_names)}], or [] to use the source's names."
        )
    if source_names or params.label_names:
        return list(source_names or params.label_names)
    # ids 1 and 2 would otherwise make three classes, one of them never seen
    found = sorted(set(raw_ids))
    unused = max(found, default=-1) + 1 - len(found)
    if unused:
        first = next(i for i in itertools.count() if i not in found)
        raise PipelineError(
            f"{RAW_DIR}: the labels are the ids {shorten(found)}, so {unused} id(s) below the largest never "
            f"appear (the first is {first}); ids must be 0..k-1. Map them with clean.label_map "
            "(e.g. {1: 0, 2: 1} for labels 1 and 2), or set clean.label_names to one name per id 0..k-1."
        )
    return [str(i) for i in found]


def check_every_class_occurs(names: list[str], ids: dict[str, pd.Series], params: Clean) -> None:
    """A name without a single review is an empty class: it lowers macro F1 and hides ROC AUC."""
    seen = {int(i) for series in ids.values() for i in series.dropna()}
    missing = [i for i in range(len(names)) if i not in seen]
    if missing:
        shown = ", ".join(f"{i} ('{names[i]}')" for i in missing)
        if params.label_map:
            where = "clean.label_map and clean.label_names"
        else:
            where = "clean.label_names" if params.label_names else f"the source's ClassLabel ({SOURCE_LABELS_FILE})"
        raise PipelineError(
            f"{RAW_DIR}: no review has the label id(s) {shown}, but {where} name {len(names)} classes "
            f"({', '.join(names)}). Name only the classes the data has, or check data.label_column."
        )


def shorten(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:MAX_BAD_ROWS_SHOWN]))
    return shown + (f" (and {len(ids) - MAX_BAD_ROWS_SHOWN} more)" if len(ids) > MAX_BAD_ROWS_SHOWN else "")


def parse_labels(
    splits: dict[str, pd.DataFrame], params: Clean, source_names: list[str] | None = None
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Turn every label into an id in 0..k-1, or stop with the rows that are not."""
    ids = {name: frame["label"].map(lambda v: parse_label(v, params.label_map)) for name, frame in splits.items()}
    names = label_names(params, [int(i) for series in ids.values() for i in series.dropna()], source_names)
    allowed = set(range(len(names)))
    for name, frame in splits.items():
        bad = ~ids[name].isin(allowed)
        if bad.any():
            shown = "; ".join(
                f"row {row + 1}: {show_cell(frame['label'][row])}" for row in frame.index[bad][:MAX_BAD_ROWS_SHOWN]
            )
            how = (
                "add them to clean.label_map"
                if params.label_map
                else "map text labels to ids with clean.label_map (e.g. {negative: 0, positive: 1})"
            )
            raise PipelineError(
                f"{RAW_DIR / f'{name}.csv'}: {int(bad.sum())} label(s) not allowed; allowed: "
                f"{describe_allowed(params, names)}. First bad rows (row 1 = first review): {shown}. "
                f"Fix those rows, or {how}, or set clean.label_names to one name per class."
            )
    check_every_class_occurs(names, ids, params)
    return {name: frame.assign(label=ids[name].astype(int)) for name, frame in splits.items()}, names


def show_cell(value) -> str:
    return "(empty)" if pd.isna(value) else repr(value)


def describe_allowed(params: Clean, names: list[str]) -> str:
    if params.label_map:
        return ", ".join(repr(key) for key in params.label_map) + " (the keys of clean.label_map)"
    return f"integers 0..{len(names) - 1} (one per name in clean.label_names: {', '.join(names)})"


def drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, Counter]:
    """One row per text. Copies with the same label are duplicates; for a text seen with
    different labels the majority label wins, and a tie drops the text altogether."""
    keep, dropped = [], Counter(duplicate=0, conflicting_label=0)
    for _, group in frame.groupby("text", sort=False):
        votes = Counter(group["label"]).most_common()
        if len(votes) > 1 and votes[0][1] == votes[1][1]:
            dropped["conflicting_label"] += len(group)
            continue
        winner = votes[0][0]
        keep.append(group.index[group["label"] == winner][0])
        dropped["duplicate"] += votes[0][1] - 1
        dropped["conflicting_label"] += len(group) - votes[0][1]
    return frame.loc[sorted(keep)], dropped


def drop_cross_split(splits: dict[str, pd.DataFrame], remove: bool) -> dict[str, Counter]:
    """Texts shared between splits: a test review also in train inflates test accuracy.

    A shared text stays in the later split (test, then validation) and, when `remove`,
    leaves the earlier ones. The counts are reported either way.
    """
    counts = {name: Counter() for name in splits}
    for i, earlier in enumerate(SPLITS):
        for later in SPLITS[i + 1 :]:
            shared = splits[earlier]["text"].isin(set(splits[later]["text"]))
            counts[earlier][f"also_in_{later}"] = int(shared.sum())
            if remove:
                splits[earlier] = splits[earlier][~shared]
    return counts


def check_usable(name: str, frame: pd.DataFrame, report: dict, names: list[str]) -> None:
    reasons = ", ".join(f"{reason} {count}" for reason, count in report["dropped"].items())
    if report["label_fixes"]["dropped"]:
        reasons += f", by {LABEL_FIXES} {report['label_fixes']['dropped']}"
    if frame.empty:
        raise PipelineError(
            f"split '{name}' is empty after cleaning: {report['rows_in']} rows in; dropped: {reasons}. "
            f"Check the source split (data/raw/{name}.csv) and data.text_column."
        )
    if name == "train" and frame["label"].nunique() < 2:
        only = names[int(frame["label"].iloc[0])]
        raise PipelineError(
            f"split 'train' has a single class ('{only}') after cleaning ({len(frame)} rows; dropped: {reasons}). "
            "A classifier needs at least two; check data.label_column and clean.label_map."
        )


def clean_splits(
    raw: dict[str, pd.DataFrame], params: Clean, source_names: list[str] | None = None, fixes: Path | None = None
) -> tuple[dict[str, pd.DataFrame], list[str], dict]:
    """The cleaned splits, the label names (checked against `source_names`, the source's ClassLabel
    names, when it has them), and the per-split report for metrics/data/clean.json.

    `fixes`: the reviewed decisions file, applied before duplicates are resolved, so that a relabeled
    review's copies agree and a dropped review leaves every split."""
    splits, fixed, dropped = {}, {}, {}
    for name, frame in raw.items():
        splits[name], fixed[name], empty = normalize_texts(frame)
        dropped[name] = Counter(empty_text=empty)
    splits, names = parse_labels(splits, params, source_names)
    decided = {name: Counter(relabeled=0, dropped=0) for name in SPLITS}
    if fixes is not None:
        splits, decided = apply_decisions(splits, read_decisions(fixes, names), fixes)
    for name in SPLITS:
        splits[name], counts = drop_duplicates(splits[name])
        dropped[name].update(counts)
    overlap = drop_cross_split(splits, params.remove_cross_split_duplicates)

    report = {}
    for name in SPLITS:
        if params.remove_cross_split_duplicates:
            dropped[name].update(overlap[name])
        frame = splits[name]
        labels = Counter(frame["label"])
        report[name] = {
            "rows_in": len(raw[name]),
            "rows_out": len(frame),
            "dropped": dict(dropped[name]),
            "fixed": dict(fixed[name]),
            "label_fixes": dict(decided[name]),  # applied from the reviewed decisions file
            "labels": {label: labels[i] for i, label in enumerate(names)},
        }
        if not params.remove_cross_split_duplicates:
            report[name]["kept_overlap"] = dict(overlap[name])
        check_usable(name, frame, report[name], names)
    return splits, names, report


def main() -> None:
    params = load_params().clean
    raw = {
        name: pd.read_csv(RAW_DIR / f"{name}.csv", dtype=str, keep_default_na=False, na_values=[""]) for name in SPLITS
    }
    source_names = None
    if SOURCE_LABELS_FILE.exists():
        source_names = json.loads(SOURCE_LABELS_FILE.read_text(encoding="utf-8"))["names"]
    splits, names, report = clean_splits(raw, params, source_names, LABEL_FIXES)
    with atomic_dir(CLEAN_DIR) as out:
        for name, frame in splits.items():
            frame.to_csv(out / f"{name}.csv", index=False, encoding="utf-8")
            decided = report[name]["label_fixes"]
            print(
                f"clean: {name}: {report[name]['rows_in']} -> {len(frame)} rows "
                f"({decided['relabeled']} relabeled, {decided['dropped']} dropped by {LABEL_FIXES})"
            )
        write_json(out / LABELS_FILE.name, {"names": names})
    write_json(CLEAN_REPORT, report)


if __name__ == "__main__":
    run(main)
