"""Column-at-a-time validation of a batch of CSV rows, producing COPY ... (FORMAT csv) text.

The per-cell path (`csvtypes.parse_cell`, a regex and a constructor per cell, then psycopg
turning the Python value back into text) cost ~2 µs a cell. Here a batch is transposed and
each column is checked against a strict "plain" form (`int` digits, ISO date, ...) by one
regex over the whole column; only the cells that miss it (empty cells, null tokens,
thousands separators, other date formats, bad values) go through `parse_cell`, which stays
the reference (tests/test_csvbatch.py checks the two agree). Accepted cells are handed to
PostgreSQL as text, which it parses into the typed column itself: a plain cell as written
(the plain forms only accept what PostgreSQL's input functions read to the same value), a
normalised one as the text of its parsed value.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from jobs.csvimport.celltypes import ColumnSpec, Value, parse_cell
from jobs.csvimport.format import fit_row

# A rejected value is kept for the error report up to this many characters.
ERROR_VALUE_MAX_CHARS: Final = 1000

# Each plain form is checked over a whole column at once: the cells joined by "\n" and one
# regex fullmatch of "cell(\ncell)*", ~4x faster than a fullmatch call per cell. A cell that
# itself holds a "\n" is caught by counting the separators.
# At most 18 digits: always inside bigint, so PostgreSQL's int8in cannot overflow.
_INT: Final = r"[+-]?[0-9]{1,18}"
# Floats of at most FLOAT_MAX_CHARS characters: PostgreSQL's float8in raises on overflow or
# underflow (1e400, 1e-400), which no value this short can reach. Exponents and separators
# take the slow path.
_FLOAT: Final = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
FLOAT_MAX_CHARS: Final = 32
_YMD: Final = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
# Days 01-28 exist in every month (and years 0001-9999 in both Python and PostgreSQL), so a
# column matching this needs no calendar check.
_YMD_SAFE: Final = r"(?!0000)[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])"
# Zones up to +-15:59, the range PostgreSQL's timestamptz input accepts (datetime.c).
_HMS: Final = (
    r"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:0[0-9]|1[0-5]):[0-5][0-9])?"
)


def _whole(cell: str) -> Callable[[str], object]:
    return re.compile(f"{cell}(?:\n{cell})*").fullmatch


# type -> (whole column, calendar-safe; whole column, needs a calendar check; one cell)
_PLAIN: Final = {
    "int": (_whole(_INT), None, re.compile(_INT).fullmatch),
    "float": (_whole(_FLOAT), None, re.compile(_FLOAT).fullmatch),
    "date": (_whole(_YMD_SAFE), _whole(_YMD), re.compile(_YMD).fullmatch),
    "datetime": (_whole(_YMD_SAFE + _HMS), _whole(_YMD + _HMS), re.compile(_YMD + _HMS).fullmatch),
}
# A plain date/datetime can still be off the calendar (2024-02-31): checked by these.
_CALENDAR: Final = {"date": dt.date.fromisoformat, "datetime": dt.datetime.fromisoformat}
_BOOL_PLAIN: Final = {
    spelling: "t" if word in ("true", "yes") else "f"
    for word in ("true", "false", "yes", "no")
    for spelling in (word, word.upper(), word.capitalize())
}
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
        with contextlib.suppress(OverflowError):  # near year 1 or 9999: keep the offset
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


def _plain(cells: Sequence[str], col: ColumnSpec) -> list[str] | None:
    """Each cell's COPY text when it is in its column's plain form, else "" for that cell;
    None when no cell is (nothing saved by trying)."""
    t = col.type
    if t == "bool":
        return [_BOOL_PLAIN.get(c, "") for c in cells]
    if t in ("date", "datetime") and col.date_format not in (None, "%Y-%m-%d"):
        return None
    if t == "float" and col.decimal_comma:
        t = "int"  # "1.5" is not a number with a decimal comma; "15" is
    if t not in _PLAIN:
        return None
    safe, unsafe, one = _PLAIN[t]
    joined = "\n".join(cells)
    check = _CALENDAR.get(col.type)
    if joined.count("\n") == len(cells) - 1 and (
        t != "float" or max(map(len, cells)) <= FLOAT_MAX_CHARS
    ):
        if safe(joined) is not None:
            return list(cells)
        if check is not None and unsafe is not None and unsafe(joined) is not None:
            return list(cells) if _on_calendar(cells, check) else _per_cell(cells, t, one, check)
    return _per_cell(cells, t, one, check)


def _per_cell(
    cells: Sequence[str],
    t: str,
    one: Callable[[str], object],
    check: Callable[[str], object] | None,
) -> list[str] | None:
    hits = list(map(one, cells))
    if not any(hits):
        return None
    return [
        c
        if hit
        and (t != "float" or len(c) <= FLOAT_MAX_CHARS)
        and (check is None or _on_calendar((c,), check))
        else ""
        for c, hit in zip(cells, hits, strict=True)
    ]


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
    """(CSV COPY field per cell, "" for NULL; [(index, reason)] of the invalid cells)."""
    errors: list[tuple[int, str]] = []
    if col.type == "text":
        # parse_cell: a text cell is NULL when empty or all whitespace, else kept verbatim.
        if any(map(str.isspace, cells)):
            cells = ["" if c.isspace() else c for c in cells]
        return _quoted(cells), errors
    plain = _plain(cells, col)
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


def check_batch(
    records: list[tuple[int, list[str]]], columns: list[ColumnSpec], delimiter: str
) -> tuple[str, int, list[Rejected], int, list[int]]:
    """Validate rows; returns (CSV text of the valid rows, `_row` first; how many; the
    rejected cells; how many rows were rejected; invalid cells per column)."""
    width = len(columns)
    numbers: list[int] = []
    fitted: list[list[str]] = []
    rejected: list[Rejected] = []
    for number, fields in records:
        if len(fields) != width:
            fields_or_none, reason = fit_row(fields, width)
            if fields_or_none is None:
                # A ragged row is rejected whole: its cells can't be matched to columns.
                value = delimiter.join(fields)[:ERROR_VALUE_MAX_CHARS]
                rejected.append((number, "", value, reason or "ragged row"))
                continue
            fields = fields_or_none
        numbers.append(number)
        fitted.append(fields)
    bad_rows = len(rejected)
    invalid = [0] * width
    if not fitted:
        return "", 0, rejected, bad_rows, invalid
    texts: list[Sequence[str]] = []
    bad: dict[int, list[tuple[str, str, str]]] = {}
    for j, (cells, col) in enumerate(zip(zip(*fitted, strict=True), columns, strict=True)):
        out, errors = check_column(cells, col)
        texts.append(out)
        invalid[j] = len(errors)
        for i, reason in errors:
            bad.setdefault(i, []).append((col.name, cells[i][:ERROR_VALUE_MAX_CHARS], reason))
    for i in sorted(bad):
        rejected.extend((numbers[i], name, value, reason) for name, value, reason in bad[i])
    bad_rows += len(bad)
    rows: Iterator[tuple[str, ...]] = zip(map(str, numbers), *texts, strict=True)
    if bad:
        rows = (r for i, r in enumerate(rows) if i not in bad)
    # An unquoted empty field is NULL to CSV COPY; every non-NULL field here is non-empty.
    text = "\n".join(map(",".join, rows))
    return text + "\n" if text else "", len(fitted) - len(bad), rejected, bad_rows, invalid
