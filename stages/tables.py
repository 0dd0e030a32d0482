"""Reading users' CSV/TSV review files: separator from the suffix, encoding detected or given."""

import codecs
import csv
from pathlib import Path

import pandas as pd

from stages.errors import PipelineError

TABLE_SUFFIXES = (".csv", ".tsv")


def separator(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def quoting(path: Path) -> int:
    # TSV review dumps are written without quoting; a review that starts with " would
    # otherwise swallow every line up to the next quote.
    return csv.QUOTE_NONE if path.suffix.lower() == ".tsv" else csv.QUOTE_MINIMAL


def detect_encoding(path: Path, encoding: str = "auto") -> str:
    """The codec to read `path` with: `encoding` if given, else UTF-8 (BOM or not), then GB18030.

    GB18030 is a superset of GBK and GB2312, the usual encodings of Chinese files
    saved by Windows tools.
    """
    data = path.read_bytes()
    if encoding != "auto":
        if codecs.lookup(encoding).name == "utf-8" and data.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        try:
            data.decode(encoding)
        except UnicodeDecodeError as err:
            raise PipelineError(
                f"{path}: not valid {encoding} (first bad byte at offset {err.start}). "
                "Set data.encoding to the file's encoding, or to auto to detect UTF-8 and GBK/GB18030."
            ) from None
        return encoding
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    for candidate in ("utf-8-sig", "gb18030"):  # utf-8-sig reads plain UTF-8 too
        try:
            data.decode(candidate)
            return candidate
        except UnicodeDecodeError:
            continue
    raise PipelineError(
        f"{path}: neither UTF-8 nor GBK/GB18030. Save it as UTF-8, "
        "or set data.encoding in params.yaml to its encoding (for example big5)."
    )


def read_columns(path: Path, encoding: str) -> list[str]:
    header = pd.read_csv(path, sep=separator(path), quoting=quoting(path), encoding=encoding, nrows=0)
    return [str(column) for column in header.columns]


def require_columns(found: list[str], wanted: dict[str, str], where: str) -> None:
    """`wanted` maps a param name to the column it names."""
    for param, column in wanted.items():
        if column not in found:
            raise PipelineError(
                f"{where}: no column '{column}' (from {param}). Columns found: {', '.join(map(repr, found))}. "
                f"Set {param} to one of them."
            )


def read_table(path: Path, encoding: str = "auto") -> pd.DataFrame:
    """Every cell as text; empty cells as missing values."""
    return pd.read_csv(
        path,
        sep=separator(path),
        quoting=quoting(path),
        encoding=detect_encoding(path, encoding),
        dtype=str,
        keep_default_na=False,
        na_values=[""],
    )
