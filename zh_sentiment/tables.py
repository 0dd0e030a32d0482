"""Reading users' CSV/TSV review files: separator from the suffix, encoding detected or given."""

import codecs
import csv
import io
from pathlib import Path

import pandas as pd

from zh_sentiment.errors import PipelineError, first_line

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


def require_columns(found: list[str], wanted: dict[str, str], where: str) -> None:
    """`wanted` maps a param name to the column it names."""
    for param, column in wanted.items():
        if column not in found:
            raise PipelineError(
                f"{where}: no column '{column}' (from {param}). Columns found: {', '.join(map(repr, found))}. "
                f"Set {param} to one of them."
            )


def csv_options(path: Path) -> dict:
    """Options for pandas.read_csv, which load_dataset("csv") passes on to it.

    Empty cells are missing values, but "NA" is a review, not a gap. A blank line is a row
    of missing cells, not nothing: skipping it would shift the number of every row after it.
    """
    return {
        "sep": separator(path),
        "quoting": quoting(path),
        "keep_default_na": False,
        "na_values": [""],
        "skip_blank_lines": False,
    }


def read_header(path: Path, encoding: str) -> list[str]:
    try:
        header = pd.read_csv(path, encoding=encoding, nrows=0, **csv_options(path))
    except pd.errors.EmptyDataError:
        raise empty(path) from None
    return [str(column) for column in header.columns]


def empty(path: Path) -> PipelineError:
    return PipelineError(f"{path} is empty; it needs a header row naming the columns, then one review per row.")


def unreadable(path: Path, err: pd.errors.ParserError) -> PipelineError:
    # pandas says e.g. "Expected 2 fields in line 3, saw 3", counting the header as line 1
    reason = first_line(err).removeprefix("Error tokenizing data. C error: ")
    if separator(path) == "\t":
        hint = "A review must not contain a tab: replace tabs in reviews by spaces."
    else:
        hint = (
            'A review that contains a comma or a double quote must be in double quotes ("" for a quote '
            "inside it); or save the file tab-separated, as .tsv."
        )
    return PipelineError(f"{path}: cannot be read as a table ({reason}; line 1 is the header). {hint}")


def read_table(path: Path, encoding: str = "auto") -> pd.DataFrame:
    """Every cell as text. Blank lines at the end are only the end of the file and are dropped."""
    text = path.read_bytes().decode(detect_encoding(path, encoding)).rstrip("\r\n") + "\n"
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, **csv_options(path))
    except pd.errors.EmptyDataError:
        raise empty(path) from None
    except pd.errors.ParserError as err:
        raise unreadable(path, err) from err
