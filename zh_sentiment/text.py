"""Review text normalisation, the same in the clean stage and in predict."""

import re

ZERO_WIDTH = re.compile("[\u200b\u200c\u200d\u2060\ufeff]")
# C0/C1 control characters other than the whitespace ones (\t \n \v \f \r), which collapse to a space below
CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x9f]")
WHITESPACE = re.compile(r"\s+")
FIXES = ("whitespace_normalized", "control_chars_removed", "zero_width_removed")


def normalize_text(text: str) -> tuple[str, list[str]]:
    """The cleaned text and the names of the fixes it needed."""
    fixes = []
    if ZERO_WIDTH.search(text):
        text = ZERO_WIDTH.sub("", text)
        fixes.append("zero_width_removed")
    if CONTROL.search(text):
        text = CONTROL.sub("", text)
        fixes.append("control_chars_removed")
    collapsed = WHITESPACE.sub(" ", text).strip()
    if collapsed != text:
        fixes.append("whitespace_normalized")
    return collapsed, fixes
