"""Whole blocks of plain rows, recognised by one regex: the pass-through's fast check.

`passthrough.Checker` reads each row with Python's `csv` and checks a column at a time, ~2 s
per 1M rows x 10 columns, which left PostgreSQL's COPY waiting on this process. Most blocks
of a well-formed file need neither step: when one regex built from the columns matches a
whole block, every row in it has the header's width and every cell is in the plain form
that COPY reads to the very value the Python path would, so the block is counted (its line
breaks) and nothing else. The first block it does not match goes, with the rest of the file,
through `csv` and the Checker as before, which decide whether the file is suitable.

The regex accepts only what the Checker accepts, more strictly:
- cells never hold a quote, CR or LF, so rows are lines and a block is whole rows;
- typed cells are unquoted, in `columntypes.Plain` form (dates on the calendar), or empty
  (NULL to both readers); bool cells are one of the spellings both read alike;
- text cells are unquoted, or quoted with no quote inside, and never empty when quoted nor
  all whitespace ("" and "  " are NULL to the Python path, '' to COPY);
- a column with no values in the head of the file (`undecided`) matches only empty cells;
- no line is longer than the csv field limit (checked without a scan, `lines_within`).
Delimiters are limited to those no cell pattern can contain, so a row splits one way only.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from core.columntypes import ColumnType
from jobs.csvimport.celltypes import ColumnSpec
from jobs.csvimport.columntypes import RECORDS

# Spellings PostgreSQL's boolean input reads as Python's reader does (docs 8.6), NULL aside.
BOOL_WORDS: Final = frozenset(
    s for word in ("true", "false", "yes", "no") for s in (word, word.upper(), word.capitalize())
)
# Digits, signs, '.', ':', 'T', 'Z', ' ' and letters occur in plain cells; these never do.
DELIMITERS: Final = frozenset(",;\t|")

BlockMatcher = Callable[[str], object]


def _cell(col: ColumnSpec, delimiter: str) -> str:
    """The regex of one cell of `col`, NULL (empty) included."""
    if col.type == ColumnType.TEXT:
        if col.undecided:
            return ""
        d = re.escape(delimiter)
        # Leading blanks, then a character that is not one (so never all whitespace), then
        # anything but a quote, the delimiter or a line break: one way to match a cell.
        unquoted = rf'[^\S\r\n{d}]*[^\s"{d}][^"{d}\r\n]*'
        quoted = r'"[^\S\r\n"]*[^\s"][^"\r\n]*"'
        return f"(?>{unquoted}|{quoted})?"
    if col.type == ColumnType.BOOL:
        return f"(?>{'|'.join(sorted(BOOL_WORDS))})?"
    plain = RECORDS[col.type].plain
    assert plain is not None, col.type
    cell = plain.safe or plain.cell
    if plain.max_chars is not None:
        # Bounded by a look-ahead over the characters a plain number is made of.
        cell = rf"(?=[0-9+.\-]{{1,{plain.max_chars}}}(?![0-9+.\-])){cell}"
    return f"(?>{cell})?"


def block_matcher(columns: list[ColumnSpec], delimiter: str) -> BlockMatcher | None:
    """A fullmatch of a block of whole plain rows, or None when the columns cannot have
    one. Cells, rows and the block are atomic: once a cell matched, nothing goes back into
    it, so a miss costs one scan (backtracking across the cells of a row that ends in a
    lone CR is exponential in the number of text cells)."""
    if delimiter not in DELIMITERS or len(columns) < 2:
        return None
    row = re.escape(delimiter).join(_cell(c, delimiter) for c in columns)
    return re.compile(rf"(?>{row}\r?\n)*+(?>{row})?").fullmatch


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


def rows_in(block: str) -> int:
    """The rows of a block the matcher accepted: its lines, the last one maybe unended."""
    return block.count("\n") + (bool(block) and not block.endswith("\n"))
