"""Loading checked rows into an upload's typed table: the table's layout (one column per
field, or one jsonb column for files too wide for a heap tuple), the COPYs, rejected cells,
the warnings and the summary. Called by `jobs.csvimport.job` inside its one transaction.

A load raises `Misguessed` when a cell does not fit a type inferred from the head of the
file; the job then rolls it back and decides the types from the whole file
(`jobs.csvimport.inference`)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from operator import itemgetter
from typing import Any

import orjson
import psycopg
from psycopg import sql

from core import settings
from core.columntypes import ColumnType
from jobs.csvimport.batch import ERROR_VALUE_MAX_CHARS, Checked, check_batch, fit_row
from jobs.csvimport.celltypes import ColumnSpec, two_digit_year
from jobs.csvimport.columntypes import RECORDS, parse_cell
from jobs.csvimport.format import CsvFormat, CsvFormatError, warning
from jobs.csvimport.inference import ColumnGuess, with_type
from jobs.csvimport.profile import ColumnProfile, profile_table

# PostgreSQL allows 1600 columns per table (docs, Appendix K "Limits"); one is ``_row``.
PG_MAX_COLUMNS = 1599
# A variable-length value in a heap tuple: at least a TOAST pointer (docs, "TOAST").
TOAST_POINTER_BYTES = 18
# Above this estimated row size the "wide" layout (one jsonb column) is used.
WIDE_ROW_BYTES = 6000
# A batch is also cut after this many characters of cells, so wide rows stay bounded.
BATCH_MAX_CHARS = 8 * 1024 * 1024
# At most this many rows are read between two checks of BATCH_MAX_CHARS.
BATCH_SLICE_ROWS = 256
# Rejected cells held in memory before they are written (the rows COPY pauses for it).
ERRORS_PER_FLUSH = 10_000


def take_batch(rows: Iterator[tuple[int, list[str]]]) -> list[tuple[int, list[str]]]:
    """Up to UPLOAD_BATCH_ROWS rows, fewer when their cells pass BATCH_MAX_CHARS.

    Rows are taken in slices (counting per row in Python cost ~0.4 s per 1M rows): slices
    double from one row up to BATCH_SLICE_ROWS, and never hold more rows than the widest
    row seen so far would fit in the remaining budget, so wide rows are taken one by one."""
    batch: list[tuple[int, list[str]]] = []
    limit = settings.UPLOAD_BATCH_ROWS
    chars = widest = 0
    step = 1
    while len(batch) < limit and chars < BATCH_MAX_CHARS:
        room = (BATCH_MAX_CHARS - chars) // max(widest, 1)
        n = max(1, min(step, BATCH_SLICE_ROWS, limit - len(batch), room))
        part = list(itertools.islice(rows, n))
        if part:
            batch += part
            sizes = list(map(sum, map(map, itertools.repeat(len), map(itemgetter(1), part))))
            chars += sum(sizes)
            widest = max(widest, *sizes)
        if len(part) < n:
            break
        step *= 2
    return batch


def fitted_batches(
    rows: Iterator[tuple[int, list[str]]], width: int, after_batch: Callable[[int], None]
) -> Iterator[list[list[str]]]:
    """The rows of `take_batch` batches fitted to `width`, ragged ones left out."""
    seen = 0
    while records := take_batch(rows):
        fitted = [fit_row(fields, width)[0] for _, fields in records]
        yield [f for f in fitted if f is not None]
        seen += len(records)
        after_batch(seen)


class Misguessed(Exception):
    """A cell did not fit a type inferred from the head of the file. `columns` are the
    whole-file types when this load could tell them (only undecided columns were off),
    else None: a typing pass over the file decides them."""

    def __init__(self, columns: list[ColumnSpec] | None = None) -> None:
        super().__init__("a column type inferred from the head of the file does not fit")
        self.columns = columns


class Tally:
    """What a load saw besides its rows: ragged rows, two-digit years, undecided columns."""

    def __init__(self, columns: list[ColumnSpec], delimiter: str) -> None:
        self.columns = columns
        self.ragged_widths: list[int] = []  # [min, max] of the ragged rows' field counts
        self.ragged = 0
        self.two_digit_years = [0] * len(columns)
        self.guesses = {i: ColumnGuess(delimiter) for i, c in enumerate(columns) if c.undecided}

    def add(self, checked: Checked) -> None:
        if checked.misfits:
            raise Misguessed
        if checked.ragged:
            widths = [*self.ragged_widths, *checked.ragged]
            self.ragged_widths = [min(widths), max(widths)]
        self.ragged += len(checked.ragged)
        self.two_digit_years = [
            a + b for a, b in zip(self.two_digit_years, checked.two_digit_years, strict=True)
        ]
        for i, guess in self.guesses.items():
            if checked.columns:
                guess.feed(checked.columns[i])

    def settle(self) -> None:
        """Raise Misguessed, with the whole-file types, if an undecided column is not text."""
        decided = {i: g.best() for i, g in self.guesses.items()}
        if any(d.type != ColumnType.TEXT for d in decided.values()):
            raise Misguessed(
                [
                    with_type(c, decided[i]) if i in decided else c
                    for i, c in enumerate(self.columns)
                ]
            )

    def warnings(self, valid: int, total: int) -> list[dict[str, Any]]:
        out = []
        for col, n in zip(self.columns, self.two_digit_years, strict=True):
            if n:
                out.append(
                    warning(
                        "two_digit_years",
                        f"Column {col.name!r}: {n} dates have two-digit years, read with the"
                        " POSIX pivot (69-99 are 1969-1999, 00-68 are 2000-2068); check them"
                        " against the data, or upload the file with four-digit years.",
                        column=col.name,
                        cells=n,
                        pivot=69,
                    )
                )
        if valid == 0:
            width = len(self.columns)
            if total == 0:
                out.append(warning("no_data_rows", "The file has a header but no data rows."))
            elif self.ragged == total:
                lo, hi = self.ragged_widths
                fields = f"{lo}" if lo == hi else f"{lo}-{hi}"
                out.append(
                    warning(
                        "no_rows_loaded",
                        f"No row was loaded: the rows have {fields} fields, the header {width}."
                        + (
                            " This looks like a multi-table report (several tables of"
                            " different widths in one file); export one table per file."
                            if lo != hi
                            else " Check the delimiter and the header line."
                        ),
                        header_fields=width,
                        row_fields=[lo, hi],
                    )
                )
            else:
                out.append(
                    warning(
                        "no_rows_loaded",
                        "No row was loaded: every row has a cell that does not fit a type"
                        " set in `columns`, or the wrong number of fields; see the errors.",
                    )
                )
        return out


def load_columns(
    conn: psycopg.Connection[Any],
    table: str,
    fmt: CsvFormat,
    rows: Iterator[tuple[int, list[str]]],
    upload_id: str,
    after_batch: Callable[[int], None],
) -> dict[str, Any]:
    """One column per field: cells checked a column at a time and COPYed as CSV text
    that PostgreSQL types; the profiles are then aggregated by PostgreSQL."""
    columns = fmt.columns
    names = sql.SQL(", ").join(
        [sql.Identifier("_row"), *(sql.Identifier(c.sql_name) for c in columns)]
    )
    query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(sql.Identifier(table), names)
    tally = Tally(columns, fmt.delimiter)
    invalid_cells = [0] * len(columns)
    valid = invalid = 0
    # One COPY stays open across batches, so PostgreSQL parses and stores batch n while
    # this process checks batch n + 1 (two cores busy instead of taking turns); it is
    # closed only to write buffered rejected cells, which share the connection.
    try:
        with conn.cursor() as cur, contextlib.ExitStack() as open_copy:
            copy: psycopg.Copy | None = None
            pending: list[tuple[int, str, str, str]] = []
            while records := take_batch(rows):
                checked = check_batch(records, columns, fmt.delimiter)
                tally.add(checked)
                if checked.text:
                    if copy is None:
                        copy = open_copy.enter_context(cur.copy(query))
                    copy.write(checked.text)
                pending += checked.rejected
                if len(pending) >= ERRORS_PER_FLUSH:
                    open_copy.close()
                    copy = None
                    flush_errors(cur, upload_id, pending)
                invalid_cells = [a + b for a, b in zip(invalid_cells, checked.invalid, strict=True)]
                valid += checked.good
                invalid += checked.bad_rows
                after_batch(valid + invalid)
            open_copy.close()
            flush_errors(cur, upload_id, pending)
    except (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
        # e.g. a NUL character deep in the file (PostgreSQL text cannot hold one) or
        # a row wider than a heap page: the file cannot be stored as it is.
        raise CsvFormatError("unloadable_row", str(exc).splitlines()[0]) from exc
    tally.settle()
    return table_result(conn, table, fmt, tally, valid, invalid, invalid_cells)


def table_result(
    conn: psycopg.Connection[Any],
    table: str,
    fmt: CsvFormat,
    tally: Tally,
    valid: int,
    invalid: int,
    invalid_cells: list[int],
) -> dict[str, Any]:
    """The result of API.md for a loaded typed table, profiled by PostgreSQL."""
    profiles, _ = profile_table(conn, table, fmt.columns, invalid_cells, valid)
    nulls = sum(p["nulls"] for p in profiles)
    result = summarise(valid, invalid, profiles, valid * len(fmt.columns), nulls)
    result["warnings"] = fmt.warnings + tally.warnings(valid, valid + invalid)
    return result


def load_wide(
    conn: psycopg.Connection[Any],
    table: str,
    fmt: CsvFormat,
    rows: Iterator[tuple[int, list[str]]],
    upload_id: str,
    after_batch: Callable[[int], None],
) -> dict[str, Any]:
    """The jsonb layout: cells typed one by one in Python and profiled as they go."""
    profiles = [ColumnProfile(col) for col in fmt.columns]
    tally = Tally(fmt.columns, fmt.delimiter)
    valid = invalid = 0
    while records := take_batch(rows):
        batch, checked = parse_batch(records, fmt.columns, profiles, fmt.delimiter)
        tally.add(checked)
        copy_batch(conn, table, fmt.columns, batch, upload_id, checked.rejected)
        valid += len(batch)
        invalid += checked.bad_rows
        after_batch(valid + invalid)
    tally.settle()
    cells = sum(p.count for p in profiles)
    nulls = sum(p.nulls for p in profiles)
    result = summarise(valid, invalid, [p.to_dict() for p in profiles], cells, nulls)
    result["warnings"] = fmt.warnings + tally.warnings(valid, valid + invalid)
    return result


def flush_errors(
    cur: psycopg.Cursor[Any], upload_id: str, errors: list[tuple[int, str, str, str]]
) -> None:
    if errors:
        copy_errors(cur, upload_id, errors)
        errors.clear()


def copy_errors(
    cur: psycopg.Cursor[Any], upload_id: str, errors: list[tuple[int, str, str, str]]
) -> None:
    with cur.copy(
        "COPY upload_errors (upload_id, row_number, column_name, value, error) FROM STDIN"
    ) as copy:
        for number, column, value, error in errors:
            copy.write_row((upload_id, number, column, value, error))


def is_wide(columns: list[ColumnSpec]) -> bool:
    """Too wide for one row per heap tuple? Fixed-width values cannot be TOASTed, and a
    heap tuple holds at most ~8160 bytes (docs, "TOAST"); such files go into one jsonb
    column instead, which TOAST compresses and moves out of line as one value."""
    estimate = (
        24
        + len(columns) // 8
        + sum(RECORDS[c.type].fixed_bytes or TOAST_POINTER_BYTES for c in columns)
    )
    return len(columns) > PG_MAX_COLUMNS or estimate > WIDE_ROW_BYTES


def create_table(
    conn: psycopg.Connection[Any], table: str, columns: list[ColumnSpec], numbered: bool = False
) -> None:
    """`numbered`: PostgreSQL numbers `_row` 1, 2, ... in COPY order (the pass-through).
    The primary key comes after the load (`index_rows`): kept up during the COPY it cost
    PostgreSQL ~0.8 s per 1M rows, building it after ~0.3 s (rows arrive sorted)."""
    row = "GENERATED ALWAYS AS IDENTITY (CACHE 10000)" if numbered else "NOT NULL"
    defs: list[sql.Composable] = [sql.SQL("_row bigint " + row)]
    if is_wide(columns):
        defs.append(sql.SQL("data jsonb NOT NULL"))
    else:
        defs += [
            sql.SQL("{} {}").format(sql.Identifier(c.sql_name), sql.SQL(RECORDS[c.type].pg_type))
            for c in columns
        ]
    query = sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(", ").join(defs))
    conn.execute(query)


def index_rows(conn: psycopg.Connection[Any], table: str) -> None:
    """The primary key on `_row`, by which the rows endpoint pages."""
    conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (_row)").format(sql.Identifier(table)))


def parse_batch(
    records: list[tuple[int, list[str]]],
    columns: list[ColumnSpec],
    profiles: list[ColumnProfile],
    delimiter: str,
) -> tuple[list[tuple[Any, ...]], Checked]:
    """(valid typed rows, what was found) for the jsonb layout, cell by cell."""
    width = len(columns)
    pairs = list(zip(columns, profiles, strict=True))
    batch: list[tuple[Any, ...]] = []
    found = Checked(invalid=[0] * width, two_digit_years=[0] * width)
    fitted_rows: list[list[str]] = []
    for number, fields in records:
        fitted, reason = fit_row(fields, width)
        if fitted is None:
            # A ragged row is rejected whole: its cells can't be matched to columns.
            line = delimiter.join(fields)[:ERROR_VALUE_MAX_CHARS]
            found.rejected.append((number, "", line, reason or "ragged row"))
            found.bad_rows += 1
            found.ragged.append(len(fields))
            continue
        fitted_rows.append(fitted)
        values: list[Any] = [number]
        ok = True
        for j, (cell, (col, profile)) in enumerate(zip(fitted, pairs, strict=True)):
            value, error = parse_cell(cell, col)
            if error is not None and not col.forced:
                found.misfits.append(j)
                return batch, found
            profile.add(value, error)
            if error is not None:
                ok = False
                found.invalid[j] += 1
                found.rejected.append((number, col.name, cell[:ERROR_VALUE_MAX_CHARS], error))
            elif value is not None and col.date_format and two_digit_year(cell, col):
                found.two_digit_years[j] += 1
            values.append(value)
        if ok:
            batch.append(tuple(values))
        else:
            found.bad_rows += 1
    if fitted_rows and any(c.undecided for c in columns):
        found.columns = list(zip(*fitted_rows, strict=True))
    return batch, found


def copy_batch(
    conn: psycopg.Connection[Any],
    table: str,
    columns: list[ColumnSpec],
    batch: list[tuple[Any, ...]],
    upload_id: str,
    errors: list[tuple[int, str, str, str]],
) -> None:
    if is_wide(columns):
        names: sql.Composable = sql.SQL("_row, data")
        keys = [c.name for c in columns]
        # orjson writes dates and datetimes as ISO 8601, as GET /rows returns them.
        batch = [(r[0], orjson.dumps(dict(zip(keys, r[1:], strict=True))).decode()) for r in batch]
    else:
        names = sql.SQL(", ").join(
            [sql.Identifier("_row"), *(sql.Identifier(c.sql_name) for c in columns)]
        )
    with conn.cursor() as cur:
        try:
            if batch:
                query = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), names)
                with cur.copy(query) as copy:
                    for row in batch:
                        copy.write_row(row)
            if errors:
                copy_errors(cur, upload_id, errors)
        except (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
            # e.g. a NUL character deep in the file (PostgreSQL text cannot hold one) or
            # a row wider than a heap page: the file cannot be stored as it is.
            raise CsvFormatError("unloadable_row", str(exc).splitlines()[0]) from exc


def summarise(
    valid: int, invalid: int, profiles: list[dict[str, Any]], cells: int, nulls: int
) -> dict[str, Any]:
    # Quality: 80% the share of rows that loaded, 20% the share of cells that are filled.
    total = valid + invalid
    validity = valid / total if total else 1.0
    completeness = 1 - nulls / cells if cells else 1.0
    return {
        "rows_total": total,
        "rows_valid": valid,
        "rows_invalid": invalid,
        "data_quality_score": round(100 * (0.8 * validity + 0.2 * completeness), 1),
        "columns": profiles,
    }
