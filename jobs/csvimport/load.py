"""Loading checked rows into an upload's typed table (`jobs.csvimport.table`): the COPYs,
rejected cells and what the load saw besides its rows (`Tally`: the warnings). Called by
`jobs.csvimport.job` inside its one transaction.

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
from jobs.csvimport.batch import ERROR_VALUE_MAX_CHARS, Checked, check_batch, fit_row
from jobs.csvimport.celltypes import ColumnSpec, two_digit_year
from jobs.csvimport.columnprofile import ColumnProfile
from jobs.csvimport.columntypes import parse_cell
from jobs.csvimport.format import CsvFormat
from jobs.csvimport.records import CsvFormatError
from jobs.csvimport.table import is_wide, summarise, table_result
from jobs.csvimport.tally import Tally

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
    warnings = tally.warnings(valid, valid + invalid)
    return table_result(conn, table, fmt, warnings, valid, invalid, invalid_cells)


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
