"""Column-at-a-time checking of a batch of CSV rows, producing COPY ... (FORMAT csv) text.

The per-cell path (`columntypes.parse_cell`, a regex and a constructor per cell, then the
value turned back into text) costs ~2 µs a cell. Here a batch is transposed and each column
is checked against its type's plain form (`columntypes.Plain`: integer digits, ISO date, ...)
by one regex over the whole column; only the cells that miss it (empty cells, null tokens,
digit grouping, other date formats, bad values) go through `parse_cell`, which stays the
reference (tests/test_csvbatch.py checks the two agree). Accepted cells are handed to
PostgreSQL as text, which it parses into the typed column itself: a plain cell as written,
a normalised one as the text of its parsed value.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

from core.columntypes import ColumnType
from jobs.csvimport.celltypes import ColumnSpec, Value, two_digit_year
from jobs.csvimport.columntypes import BOOL_PLAIN, FLOAT_EXACT_DIGITS, RECORDS, parse_cell

# A rejected value is kept for the error report up to this many characters.
ERROR_VALUE_MAX_CHARS: Final = 1000


def fit_row(fields: list[str], width: int) -> tuple[list[str] | None, str | None]:
    """Return (fields sized to `width`, None) or (None, reason) for a ragged row. Extra
    trailing fields that are all empty (spreadsheet exports pad with ",,") are dropped."""
    n = len(fields)
    if n == width:
        return fields, None
    if n < width:
        return None, f"too few fields: expected {width}, got {n}"
    if any(f.strip() for f in fields[width:]):
        return None, f"too many fields: expected {width}, got {n}"
    return fields[:width], None


def _whole(cell: str) -> Callable[[str], object]:
    # Each plain form is checked over a whole column at once: the cells joined by "\n" and
    # one regex fullmatch of "cell(\ncell)*", ~4x faster than a fullmatch call per cell. A
    # cell that itself holds a "\n" is caught by counting the separators.
    return re.compile(f"{cell}(?:\n{cell})*").fullmatch


@dataclass(frozen=True, slots=True)
class _Matchers:
    whole: Callable[[str], object]  # every cell plain and calendar-safe
    whole_unsafe: Callable[[str], object] | None  # every cell plain, calendar to check
    one: Callable[[str], object]
    calendar: Callable[[str], object] | None
    max_chars: int | None = None  # only the decimal-comma integers (_COMMA_FLOAT) have one


_MATCHERS: Final = {
    name: _Matchers(
        _whole(r.plain.exact),
        _whole(r.plain.cell) if r.plain.safe else None,
        re.compile(r.plain.cell).fullmatch,
        r.plain.calendar,
    )
    for name, r in RECORDS.items()
    if r.plain is not None
}
# With a decimal comma "1.5" is not a plain number but "15" is: integers as short as a float's
# exact digits, so that no integer past float8's exact range (2**53) passes unread.
_COMMA_FLOAT: Final = dataclasses.replace(_MATCHERS[ColumnType.INT], max_chars=FLOAT_EXACT_DIGITS)
# Text cells holding one of these are quoted for CSV COPY (RFC 4180; PostgreSQL reads a bare
# CR or LF as a line break).
_CSV_SPECIAL: Final = ('"', ",", "\r", "\n")

Rejected = tuple[int, str, str, str]  # (row number, column name, value, reason)


def _as_text(value: Value) -> str:
    """The text PostgreSQL reads back to `value` (a slow-path, already validated cell)."""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form; 'inf' is valid float8 input
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        # In range: celltypes reads no instant outside years 1-9999 in UTC.
        value = value.astimezone(dt.UTC)  # offsets past +-15:59 are not timestamptz input
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _on_calendar(cells: Sequence[str], parse: Callable[[str], object]) -> bool:
    try:
        for _ in map(parse, cells):
            pass
    except ValueError:
        return False
    return True


def _matchers(col: ColumnSpec) -> _Matchers | None:
    # Dates and date-times: the plain form is ISO 8601 whatever the column's pattern, since
    # every pattern also reads ISO (celltypes.read_date) and none matches an ISO cell itself.
    if col.type == ColumnType.FLOAT and col.decimal_comma:
        return _COMMA_FLOAT
    return _MATCHERS.get(col.type)


def all_plain(cells: Sequence[str], col: ColumnSpec) -> bool:
    """Is every cell in its column's plain form (one regex over the whole column)?"""
    m = _matchers(col)
    if m is None or not cells:
        return False
    joined = "\n".join(cells)
    if joined.count("\n") != len(cells) - 1:
        return False
    if m.max_chars is not None and max(map(len, cells)) > m.max_chars:
        return False
    if m.whole(joined) is not None:
        return True
    return (
        m.calendar is not None
        and m.whole_unsafe is not None
        and m.whole_unsafe(joined) is not None
        and _on_calendar(cells, m.calendar)
    )


def _plain(cells: Sequence[str], col: ColumnSpec) -> list[str] | None:
    """Each cell's COPY text when it is in its column's plain form, else "" for that cell;
    None when no cell is (nothing saved by trying)."""
    if col.type == ColumnType.BOOL:
        return [BOOL_PLAIN.get(c, "") for c in cells]
    if all_plain(cells, col):
        return list(cells)
    m = _matchers(col)
    if m is None:
        return None
    hits = list(map(m.one, cells))
    if not any(hits):
        return None
    return [
        c
        if hit
        and (m.max_chars is None or len(c) <= m.max_chars)
        and (m.calendar is None or _on_calendar((c,), m.calendar))
        else ""
        for c, hit in zip(cells, hits, strict=True)
    ]


def fits(cells: Sequence[str], col: ColumnSpec) -> bool:
    """Does every cell fit the column's type (NULLs do)? Stops at the first that does not."""
    return all_plain(cells, col) or all(parse_cell(c, col)[1] is None for c in cells)


def _quoted(cells: Sequence[str]) -> Sequence[str]:
    joined = "".join(cells)
    if not any(ch in joined for ch in _CSV_SPECIAL):
        return cells
    if '"' in joined:
        cells = [c.replace('"', '""') for c in cells]
    # Quote every non-NULL cell of such a column: one cheap rule instead of a test per cell.
    return ['"' + c + '"' if c else "" for c in cells]


def check_column(
    cells: Sequence[str], col: ColumnSpec
) -> tuple[Sequence[str], list[tuple[int, str]]]:
    """(CSV COPY field per cell, "" for NULL; [(index, reason)] of the cells that do not fit)."""
    errors: list[tuple[int, str]] = []
    if col.type == ColumnType.TEXT:
        # parse_cell: a text cell is NULL when empty or all whitespace, else kept verbatim.
        if any(map(str.isspace, cells)):
            cells = ["" if c.isspace() else c for c in cells]
        return _quoted(cells), errors
    plain = _plain(cells, col)
    if plain is not None and "" not in plain:
        return plain, errors
    out = plain if plain is not None else [""] * len(cells)
    for i, cell in enumerate(cells):
        if out[i]:
            continue
        value, error = parse_cell(cell, col)
        if error is not None:
            errors.append((i, error))
        elif value is not None:
            out[i] = _as_text(value)
    return out, errors


@dataclass(slots=True)
class Checked:
    """One checked batch."""

    text: str = ""  # CSV COPY text of the loadable rows, `_row` first
    good: int = 0  # rows in `text`
    rejected: list[Rejected] = field(default_factory=list)
    bad_rows: int = 0
    ragged: list[int] = field(default_factory=list)  # field counts of the ragged rows
    invalid: list[int] = field(default_factory=list)  # rejected cells per column
    misfits: list[int] = field(default_factory=list)  # inferred columns a cell did not fit
    two_digit_years: list[int] = field(default_factory=list)  # per column
    columns: list[Sequence[str]] = field(default_factory=list)  # the raw cells, per column


def check_batch(
    records: list[tuple[int, list[str]]], columns: list[ColumnSpec], delimiter: str
) -> Checked:
    """Validate rows: a ragged row is rejected whole, a cell that does not fit a forced type
    rejects its row, and one that does not fit an inferred type is a misfit (the type was
    guessed wrong; the caller re-decides it)."""
    width = len(columns)
    out = Checked(invalid=[0] * width, two_digit_years=[0] * width)
    if not records:
        return out
    numbers: Sequence[int]
    fitted: Sequence[list[str]]
    numbers, fitted = zip(*records, strict=True)
    if set(map(len, fitted)) != {width}:
        numbers, fitted = [], []
        for number, fields in records:
            sized, reason = fit_row(fields, width)
            if sized is None:
                # A ragged row is rejected whole: its cells can't be matched to columns.
                value = delimiter.join(fields)[:ERROR_VALUE_MAX_CHARS]
                out.rejected.append((number, "", value, reason or "ragged row"))
                out.ragged.append(len(fields))
                continue
            numbers.append(number)
            fitted.append(sized)
    out.bad_rows = len(out.rejected)
    if not fitted:
        return out
    texts: list[Sequence[str]] = []
    bad: dict[int, list[tuple[str, str, str]]] = {}
    out.columns = list(zip(*fitted, strict=True))
    for j, (cells, col) in enumerate(zip(out.columns, columns, strict=True)):
        text, errors = check_column(cells, col)
        texts.append(text)
        if errors and not col.forced:
            out.misfits.append(j)
            continue
        out.invalid[j] = len(errors)
        for i, reason in errors:
            bad.setdefault(i, []).append((col.name, cells[i][:ERROR_VALUE_MAX_CHARS], reason))
        if col.date_format is not None and col.date_format.endswith(("%y", "%Y")):
            out.two_digit_years[j] = sum(1 for c in cells if two_digit_year(c, col))
    if out.misfits:
        return out
    for i in sorted(bad):
        out.rejected.extend((numbers[i], name, value, reason) for name, value, reason in bad[i])
    out.bad_rows += len(bad)
    rows: Iterator[tuple[str, ...]] = zip(map(str, numbers), *texts, strict=True)
    if bad:
        rows = (r for i, r in enumerate(rows) if i not in bad)
    # An unquoted empty field is NULL to CSV COPY; every non-NULL field here is non-empty.
    text = "\n".join(map(",".join, rows))
    out.text = text + "\n" if text else ""
    out.good = len(fitted) - len(bad)
    return out
