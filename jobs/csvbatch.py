"""Column-at-a-time validation of a batch of CSV rows, producing COPY ... (FORMAT csv) text.

The per-cell path (`csvtypes.parse_cell`, a regex and a constructor per cell, then psycopg
turning the Python value back into text) cost ~2 µs a cell. Here a batch is transposed and
each column is checked with one C-level `map` of a strict "plain" pattern (`int`, ISO date,
...) over all its cells; only the cells that miss it (empty cells, null tokens, thousands
separators, other date formats, bad values) go through `parse_cell`. Accepted cells are
handed to PostgreSQL as text, which it parses into the typed column itself: a plain cell
as written (the plain patterns only accept forms PostgreSQL's input functions read to the
same value), a normalised one as the text of its parsed value.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from jobs.csvformat import fit_row
from jobs.csvtypes import ColumnSpec, Value, parse_cell

# A rejected value is kept for the error report up to this many characters.
ERROR_VALUE_MAX_CHARS: Final = 1000

# At most 18 digits: always inside bigint, so PostgreSQL's int8in cannot overflow.
_INT_PLAIN: Final = re.compile(r"[+-]?[0-9]{1,18}").fullmatch
# At most 32 characters: PostgreSQL's float8in raises on overflow/underflow (1e400, 1e-400),
# which no value this short can reach. Exponents and separators take the slow path.
_FLOAT_PLAIN: Final = re.compile(r"(?=.{1,32}\Z)[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)").fullmatch
_DATE_PLAIN: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}").fullmatch
# Zones up to +-15:59, the range PostgreSQL's timestamptz input accepts (datetime.c).
_DATETIME_PLAIN: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-](?:0[0-9]|1[0-5]):[0-9]{2})?"
).fullmatch
_BOOL_PLAIN: Final = {
    spelling: "t" if word in ("true", "yes") else "f"
    for word in ("true", "false", "yes", "no")
    for spelling in (word, word.upper(), word.capitalize())
}

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


def _check_calendar(cells: Sequence[str], parse: Callable[[str], object]) -> bool:
    try:
        for _ in map(parse, cells):
            pass
    except ValueError:
        return False
    return True


def _plain(cells: Sequence[str], col: ColumnSpec) -> list[str | None] | None:
    """Each cell's COPY text when it is in its column's plain form, else None for that cell;
    None for the whole column when no cell is (nothing saved by trying)."""
    t = col.type
    if t == "int":
        hits: list[object] = list(map(_INT_PLAIN, cells))
    elif t == "float" and not col.decimal_comma:
        hits = list(map(_FLOAT_PLAIN, cells))
    elif t == "float":
        hits = list(map(_INT_PLAIN, cells))  # "1.5" is not a number with a decimal comma
    elif t == "bool":
        return list(map(_BOOL_PLAIN.get, cells))
    elif t == "date" and col.date_format in (None, "%Y-%m-%d"):
        hits = list(map(_DATE_PLAIN, cells))
        if all(hits) and not _check_calendar(cells, dt.date.fromisoformat):
            return None
    elif t == "datetime" and col.date_format in (None, "%Y-%m-%d"):
        hits = list(map(_DATETIME_PLAIN, cells))
        if all(hits) and not _check_calendar(cells, dt.datetime.fromisoformat):
            return None
    else:
        return None
    if all(hits):
        return list(cells)
    if not any(hits):
        return None
    # Mixed: a plain-looking date can still be 2024-02-31, so dates are re-checked per cell.
    check = {"date": dt.date.fromisoformat, "datetime": dt.datetime.fromisoformat}.get(t)
    out: list[str | None] = []
    for cell, hit in zip(cells, hits, strict=True):
        if hit and check is not None and not _check_calendar((cell,), check):
            hit = None
        out.append(cell if hit else None)
    return out


def check_column(
    cells: Sequence[str], col: ColumnSpec
) -> tuple[Sequence[str | None], list[tuple[int, str]]]:
    """(COPY text per cell, None for NULL; [(index, reason)] of the invalid cells)."""
    errors: list[tuple[int, str]] = []
    if col.type == "text":
        # parse_cell: a text cell is NULL when empty or all whitespace, else kept verbatim.
        if "" not in cells and not any(map(str.isspace, cells)):
            return cells, errors
        return [c if c and not c.isspace() else None for c in cells], errors
    plain = _plain(cells, col)
    out: list[str | None] = plain if plain is not None else [None] * len(cells)
    for i, cell in enumerate(cells):
        if out[i] is not None:
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
    texts: list[Sequence[str | None]] = []
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
    rows: Iterator[tuple[object, ...]] = zip(numbers, *texts, strict=True)
    if bad:
        rows = (r for i, r in enumerate(rows) if i not in bad)
    buf = io.StringIO()
    # "\r\n" so the writer also quotes a bare "\r" (PostgreSQL's CSV COPY reads an unquoted
    # one as a line break); None is written unquoted-empty, which CSV COPY reads as NULL.
    csv.writer(buf, lineterminator="\r\n").writerows(rows)
    return buf.getvalue(), len(fitted) - len(bad), rejected, bad_rows, invalid
