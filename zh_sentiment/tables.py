"""Reading users' CSV/TSV review files: separator from the suffix, encoding detected or given,
with a header row or with the columns named by a param."""

import codecs
import csv
import io
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from zh_sentiment.errors import PipelineError, first_line

TABLE_SUFFIXES = (".csv", ".tsv")

# auto: the share of a decoding's non-ASCII characters that may be odd (not a common Chinese character,
# punctuation or symbol) for it to count as Chinese text. Measured on ChnSentiCorp-style reviews: right
# decodings stay under 3 %, Big5 read as GB18030 is over 70 % odd.
MAX_ODD_SHARE = 0.2
CJK_PUNCTUATION = re.compile("[\u2000-\u27bf\u3000-\u303f\uff00-\uffef]")  # punctuation, symbols, fullwidth forms
UTF_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def separator(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def quoting(path: Path) -> int:
    # TSV review dumps are written without quoting; a review that starts with " would
    # otherwise swallow every line up to the next quote.
    return csv.QUOTE_NONE if path.suffix.lower() == ".tsv" else csv.QUOTE_MINIMAL


def detect_encoding(path: Path, encoding: str = "auto", param: str = "data.encoding") -> str:
    """The codec to read the file `path` with (see codec_for)."""
    return codec_for(path.read_bytes(), path, encoding, param)


def codec_for(data: bytes, where: str | Path, encoding: str = "auto", param: str = "data.encoding") -> str:
    """The codec to read `data` with: `encoding` if given, else the one the bytes show. `where`
    (a file, or e.g. stdin) and `param` (the setting that gives the encoding) name them in messages.

    auto: a byte order mark (UTF-8, UTF-16, UTF-32); UTF-16/32 without one; valid UTF-8;
    else GB18030 (a superset of GBK and GB2312, what Windows tools in mainland China save)
    or Big5 (cp950, Taiwan and Hong Kong), whichever decoding reads as Chinese. Both decode
    most byte strings without error, so the text itself is the evidence; when it does not
    settle the question this stops and asks for `param` rather than guess.
    """
    if encoding != "auto":
        if codecs.lookup(encoding).name == "utf-8" and data.startswith(codecs.BOM_UTF8):
            return "utf-8-sig"
        try:
            data.decode(encoding)
        except UnicodeDecodeError as err:
            raise PipelineError(
                f"{where}: not valid {encoding} (first bad byte at offset {err.start}). "
                f"Set {param} to the file's encoding, or to auto to detect it."
            ) from None
        return encoding
    for bom, codec in UTF_BOMS:
        if data.startswith(bom):
            return codec
    if b"\x00" in data:  # never in GBK, Big5 or UTF-8 text; in UTF-16/32 it is half the bytes
        return utf_without_bom(data, where, param)
    try:
        data.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    return chinese_codec(data, where, param)


def utf_without_bom(data: bytes, where: str | Path, param: str) -> str:
    # The right reading has line breaks and no control characters; the wrong widths and byte
    # orders give NULs, undecodable bytes, or no line break at all.
    for codec in ("utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be"):
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if "\n" in text and not any(ch < " " and ch not in "\t\r\n" for ch in text):
            return codec
    raise PipelineError(
        f"{where}: holds NUL bytes but is not UTF-16 or UTF-32 text; is it a table at all? "
        f"Save it as UTF-8 CSV/TSV, or set {param} to its encoding."
    )


def chinese_codec(data: bytes, where: str | Path, param: str) -> str:
    readings = {}
    for codec in ("gb18030", "cp950"):
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        odd, simplified = character_shares(text)
        if odd <= MAX_ODD_SHARE:
            readings[codec] = (simplified, text)
    if len(readings) == 1:
        return next(iter(readings))
    if len(readings) == 2:
        (gb_simplified, gb_text), (big5_simplified, big5_text) = readings["gb18030"], readings["cp950"]
        # GBK text often decodes as plausible-looking Big5 too (rare traditional characters), but
        # with far fewer of the common simplified ones; Big5 never reads as plausible GB18030.
        if gb_text == big5_text or gb_simplified > big5_simplified:
            return "gb18030"
        if big5_simplified > gb_simplified:
            return "cp950"
    raise PipelineError(
        f"{where}: cannot tell its encoding: it is not UTF-8, and read as GBK/GB18030 or as Big5 it "
        f"{'does not look like Chinese text' if not readings else 'looks like Chinese text either way'}. "
        f"Set {param} to the file's encoding (e.g. gbk, big5, utf-16), or save it as UTF-8."
    )


def character_shares(text: str) -> tuple[float, float]:
    """Of the non-ASCII characters: the share that is odd for Chinese text, and the share of the
    3,755 common simplified characters (GB2312 level 1)."""
    counts = Counter(ch for ch in text if not (" " <= ch <= "~" or ch in "\t\r\n"))
    total = sum(counts.values()) or 1
    odd = sum(n for ch, n in counts.items() if not (CJK_PUNCTUATION.match(ch) or common_hanzi(ch)))
    simplified = sum(n for ch, n in counts.items() if in_range(ch, "gb2312", b"\xb0\xa1", b"\xd7\xf9"))
    return odd / total, simplified / total


def common_hanzi(ch: str) -> bool:
    """A character of GB2312 (6,763 simplified) or Big5 level 1 (5,401 frequent traditional)."""
    return in_range(ch, "gb2312", b"\xb0\xa1", b"\xf7\xfe") or in_range(ch, "big5", b"\xa4\x40", b"\xc6\x7e")


def in_range(ch: str, codec: str, low: bytes, high: bytes) -> bool:
    try:
        return low <= ch.encode(codec) <= high
    except UnicodeEncodeError:
        return False


def require_columns(found: list[str], wanted: dict[str, str], where: str, columns_param: str = "data.columns") -> None:
    """`wanted` maps a param name to the column it names."""
    for param, column in wanted.items():
        if column not in found:
            raise PipelineError(
                f"{where}: no column '{column}' (from {param}). Columns found: {', '.join(map(repr, found))}. "
                f"Set {param} to one of them.{headerless_hint(found, columns_param)}"
            )


def looks_like_label(cell: str) -> bool:
    return re.fullmatch(r"-?\d+(\.0)?", cell.strip()) is not None


def looks_like_text(cell: str) -> bool:
    return len(cell) > 8 and re.search("[\u4e00-\u9fff]", cell) is not None


def headerless_hint(header: list[str], columns_param: str) -> str:
    """A hint when the header row looks like a review: a label such as 0 or 1, or a Chinese sentence.
    The example names the columns in the order the row shows (label first or text first), when it shows one."""
    if not any(looks_like_label(cell) or looks_like_text(cell) for cell in header):
        return ""
    if len(header) == 2 and looks_like_label(header[0]) and not looks_like_label(header[1]):
        example = columns_example(columns_param, ["label", "text"])
    elif len(header) == 2 and looks_like_label(header[1]) and not looks_like_label(header[0]):
        example = columns_example(columns_param, ["text", "label"])
    else:
        example = " or ".join(columns_example(columns_param, order) for order in (["label", "text"], ["text", "label"]))
    return (
        " The first row looks like a review, not a header: if the file has no header row, name its columns "
        f"in order with {example}, and pick the text and label columns among those names."
    )


def columns_example(columns_param: str, order: list[str]) -> str:
    """How to name the columns of a file without a header row: a param, or predict's option."""
    if columns_param.startswith("--"):
        return f"{columns_param} {','.join(order)}"
    return f"{columns_param}: [{', '.join(order)}]"


def no_columns(columns_param: str) -> str:
    return f"leave out {columns_param}" if columns_param.startswith("--") else f"set {columns_param}: []"


def csv_options(path: Path) -> dict:
    """Options for pandas.read_csv.

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


def unreadable(path: Path, err: pd.errors.ParserError, header: bool = True) -> PipelineError:
    # pandas says e.g. "Expected 2 fields in line 3, saw 3", counting the first line as line 1
    reason = first_line(err).removeprefix("Error tokenizing data. C error: ")
    if separator(path) == "\t":
        hint = "A review must not contain a tab: replace tabs in reviews by spaces."
    else:
        hint = (
            'A review that contains a comma or a double quote must be in double quotes ("" for a quote '
            "inside it); or save the file tab-separated, as .tsv."
        )
    first = "line 1 is the header" if header else "line 1 is the first review"
    return PipelineError(f"{path}: cannot be read as a table ({reason}; {first}). {hint}")


def read_table(
    path: Path,
    encoding: str = "auto",
    columns: list[str] | None = None,
    encoding_param: str = "data.encoding",
    columns_param: str = "data.columns",
) -> pd.DataFrame:
    """Every cell as text, read fresh from disk (no cache). Blank lines at the end are only the end
    of the file and are dropped. `columns`: the file has no header row and these are its columns."""
    data = path.read_bytes()
    text = data.decode(codec_for(data, path, encoding, encoding_param)).rstrip("\r\n") + "\n"
    try:
        # Read as rows only, header or not: then a row with more fields than the first line is an error naming
        # it. With header="infer", pandas would take the extra leading fields of a first review as the index,
        # and read every row after it shifted by as many columns.
        frame = pd.read_csv(io.StringIO(text), dtype=str, header=None, **csv_options(path))
    except pd.errors.EmptyDataError:
        needs = "one review per row" if columns else "a header row naming the columns, then one review per row"
        raise PipelineError(f"{path} is empty; it needs {needs}.") from None
    except pd.errors.ParserError as err:
        raise unreadable(path, err, header=not columns) from None  # says all there is: a traceback adds nothing
    if columns:
        frame = name_columns(frame, columns, path, columns_param)
    else:
        refuse_repeated_names([cell for cell in frame.iloc[0] if not pd.isna(cell)], f"{path}: the header row")
        frame = frame.iloc[1:].set_axis(header_names(text, path), axis=1).reset_index(drop=True)
    if frame.empty:
        raise PipelineError(
            f"{path} has a header row but no reviews. Add reviews below the header, or remove the file."
        )
    return frame


def header_names(text: str, path: Path) -> list[str]:
    """The column names of the header row, as pandas makes them: a repeated name gets .1, an empty one Unnamed."""
    return list(pd.read_csv(io.StringIO(text), dtype=str, nrows=0, **csv_options(path)).columns)


def refuse_repeated_names(names: list[str], where: str) -> None:
    """Two columns of one name: which one holds the reviews would be a guess."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PipelineError(
            f"{where} names the column(s) {', '.join(map(repr, repeated))} more than once. Give each column "
            "its own name."
        )


def name_columns(frame: pd.DataFrame, columns: list[str], path: Path, columns_param: str) -> pd.DataFrame:
    refuse_repeated_names(columns, columns_param)
    # the table is as wide as its first line (a longer line after it is a read error): name that line
    if frame.shape[1] != len(columns):
        raise PipelineError(
            f"{path}: line 1 has {frame.shape[1]} field(s) but {columns_param} names {len(columns)} "
            f"({', '.join(columns)}). Give one name per column, in order."
        )
    frame.columns = columns
    first = ["" if pd.isna(cell) else str(cell).strip() for cell in frame.iloc[0]]
    if {cell.lower() for cell in first} & {name.lower() for name in columns}:
        raise PipelineError(
            f"{path}: the first row ({', '.join(first)}) looks like a header, but {columns_param} says the file "
            f"has none. If the file has a header row, {no_columns(columns_param)} and pick the columns by the "
            "names in that header."
        )
    return frame
