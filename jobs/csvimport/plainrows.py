"""Whole blocks of plain rows, recognised by one regex: the pass-through's fast check.

`passthrough.Checker` reads each row with Python's `csv` and checks a column at a time, ~2 s
per 1M rows x 10 columns, which left PostgreSQL's COPY waiting on this process. Most blocks
of a well-formed file need neither step: when one regex built from the columns matches a
whole block, every row in it has the header's width and every cell is in the plain form
that COPY reads to the very value the Python path would, so the block is counted (its line
breaks) and nothing else. The first block it does not match goes, with the rest of the file,
through `csv` and the Checker as before, which decide whether the file is suitable.

The regex accepts only cells both readers read alike, so what it accepts the Checker would
let through too, with one exception: a quoted text cell with a doubled quote, which the
Checker, seeing only the cell's value, cannot tell from a stray quote in an unquoted one.
The rules:
- cells never hold a CR or LF, so rows are lines and a block is whole rows; but a block the
  first regex misses is tried again with one that lets quoted text hold line breaks
  (`multiline`), its rows told apart by the quotes before each line break
  (`whole_records`), and a record left open at its end carried into the next block;
- typed cells are in `columntypes.Plain.exact` form (dates on the calendar), quoted or not,
  or empty and unquoted (NULL to both readers); bool cells are one of the spellings both
  read alike;
- text cells are unquoted without a quote, or quoted with every quote inside doubled, and
  never empty when quoted nor all whitespace ("" and "  " are NULL to the Python path, ''
  to COPY);
- a column with no values in the head of the file (`undecided`) matches only empty cells;
- no line (with line breaks in cells: no record) is longer than the csv field limit
  (`lines_within`, `whole_records`).
Delimiters are limited to those no cell pattern can contain, so a row splits one way.

It runs on RE2 (google-re2), over the UTF-8 bytes that go to COPY: a DFA reads the 89 MB
benchmark file in ~0.15 s where Python's backtracking `re` took ~1.25 s, and in linear time
whatever the input. RE2 has no look-arounds, nor do the plain forms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

import re2

from core.columntypes import ColumnType
from jobs.csvimport.celltypes import ColumnSpec
from jobs.csvimport.columntypes import BOOL_PLAIN, DATED, DAY_MONTH_ORDERS, RECORDS

# Digits, signs, '.', ':', 'T', 'Z', ' ' and letters occur in plain cells; these never do.
DELIMITERS: Final = frozenset(",;\t|")
# What str.isspace calls whitespace (the Python path's test for an empty text cell), which
# RE2's \s (ASCII only) is not; none lies past U+3000.
WHITESPACE: Final = "".join(c for c in map(chr, range(0x3001)) if c.isspace())
# RE2 builds its DFA lazily within this memory; past it, it runs slower but still linearly.
RE2_MAX_MEM: Final = 64 << 20

BlockMatcher = Callable[[bytes], object]


def _chars(chars: Iterable[str]) -> str:
    """A character-class body for RE2 naming each of `chars` by code point."""
    return "".join(f"\\x{{{ord(c):x}}}" for c in sorted(set(chars)))


def _cell(col: ColumnSpec, delimiter: str, multiline: bool) -> str:
    """The RE2 regex of one cell of `col`, NULL (empty) included; `multiline`: a quoted text
    cell may hold line breaks."""
    if col.type == ColumnType.TEXT:
        if col.undecided:
            return ""
        d, space = _chars(delimiter), _chars(WHITESPACE)
        blank = set(WHITESPACE) - {"\r", "\n"}
        # Leading blanks, then a character that is not one (so never all whitespace), then
        # anything but a quote, the delimiter or a line break. Quoted, a quote is doubled
        # (RFC 4180), which both readers read as one, and line breaks may be data.
        unquoted = f'[{_chars(blank - {delimiter})}]*[^{space}"{d}][^"{d}\\r\\n]*'
        lead, other = (space, '[^"]') if multiline else (_chars(blank), '[^"\\r\\n]')
        quoted = f'"[{lead}]*(?:[^{space}"]|"")(?:{other}|"")*"'
        return f"(?:{unquoted}|{quoted})?"
    if col.type == ColumnType.BOOL:
        form = "|".join(sorted(BOOL_PLAIN))
    elif col.type in DATED and col.date_format in DAY_MONTH_ORDERS:  # under its DateStyle
        forms = DAY_MONTH_ORDERS[col.date_format]
        form = forms.date if col.type == ColumnType.DATE else forms.datetime
    else:
        plain = RECORDS[col.type].plain
        assert plain is not None, col.type
        form = plain.exact
    # Quoted or not, a typed cell is the same text to both readers; "" is not ('' to COPY).
    return f'(?:{form}|"(?:{form})")?'


def block_matcher(
    columns: list[ColumnSpec], delimiter: str, multiline: bool = False
) -> BlockMatcher | None:
    """A fullmatch of a block of whole plain rows (UTF-8 bytes), or None when the columns
    cannot have one or the regex is past RE2's memory (hundreds of typed columns).
    `multiline`: quoted text cells may hold line breaks (count rows by `whole_records`)."""
    if delimiter not in DELIMITERS or len(columns) < 2:
        return None
    row = f"[{_chars(delimiter)}]".join(_cell(c, delimiter, multiline) for c in columns)
    options = re2.Options()
    options.max_mem = RE2_MAX_MEM
    try:
        regex = re2.compile(f"(?:{row}\\r?\\n)*(?:{row})?".encode(), options)
    except re2.error:
        return None
    fullmatch: BlockMatcher = regex.fullmatch
    return fullmatch


def lines_within(block: str, limit: int) -> bool:
    """Is no line of `block` longer than `limit` characters? A few C-level searches, one
    per `limit` characters, instead of splitting the block."""
    start, end = 0, len(block)
    while end - start > limit:
        cut = block.rfind("\n", start, start + limit + 1)
        if cut < 0:
            return False
        start = cut + 1
    return True


def rows_in(block: bytes) -> int:
    """The rows of a block the matcher accepted: its lines, the last one maybe unended."""
    return block.count(b"\n") + (bool(block) and not block.endswith(b"\n"))


def numbered(block: bytes, first: int, delimiter: str) -> bytes:
    """A block the matcher accepted with each line prefixed by its row number (`first`,
    first + 1, ...) and the delimiter: one C-level `%` format of the whole block, ~1 ms per
    MiB, where PostgreSQL numbering the rows by an identity column took ~0.1 s per 1M."""
    if not block:
        return block
    ended = block.endswith(b"\n")
    body = block[:-1] if ended else block
    prefix = b"%d" + delimiter.encode()
    template = prefix + body.replace(b"%", b"%%").replace(b"\n", b"\n" + prefix)
    rows = body.count(b"\n") + 1
    return template % tuple(range(first, first + rows)) + (b"\n" if ended else b"")


def whole_records(text: str) -> tuple[int, int, int]:
    """For `text` that starts at a record: (the end of its last whole record, how many
    records end there, the longest of them in characters). A line break ends a record
    unless the record so far holds an odd number of quotes (it is inside a quoted field);
    so does the text's end when it has no line break (a file's last line). Exact for a
    block the `multiline` matcher accepts, where every quote opens, closes or is doubled
    inside a quoted cell. A line at a time: only blocks that hold a quoted line break."""
    end = rows = longest = quotes = 0
    pos = 0
    lines = text.split("\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and not line:
            break
        quotes += line.count('"')
        pos += len(line) + (not last)
        if not quotes % 2:
            rows += 1
            longest = max(longest, pos - end)
            end, quotes = pos, 0
    return end, rows, longest
