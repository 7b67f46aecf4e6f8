"""Loading checked rows into an upload's typed table: the table's layout (one column per
field, or one jsonb column for files too wide for a heap tuple), the COPYs, rejected cells
and the summary. Called by `jobs.csv_import` inside its one transaction."""

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
from jobs.csvimport.batch import ERROR_VALUE_MAX_CHARS, check_batch
from jobs.csvimport.celltypes import ColumnSpec, parse_cell
from jobs.csvimport.format import CsvFormat, CsvFormatError, fit_row
from jobs.csvimport.profile import ColumnProfile, profile_table

PG_TYPES = {
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "date": "date",
    "datetime": "timestamptz",
    "text": "text",
}
# PostgreSQL allows 1600 columns per table (docs, Appendix K "Limits"); one is ``_row``.
PG_MAX_COLUMNS = 1599
# Bytes per value of the fixed-width types (docs, chapter 8); text counts as a TOAST pointer.
FIXED_BYTES = {"int": 8, "float": 8, "datetime": 8, "date": 4, "bool": 1}
# Above this estimated row size the "wide" layout (one jsonb column) is used.
WIDE_ROW_BYTES = 6000
# A batch is also cut after this many characters of cells, so wide rows stay bounded.
BATCH_MAX_CHARS = 8 * 1024 * 1024
# At most this many rows are read between two checks of BATCH_MAX_CHARS.
BATCH_SLICE_ROWS = 256
# Rejected cells held in memory before they are written (the rows COPY pauses for it).
ERRORS_PER_FLUSH = 10_000


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
                text, good, errors, bad, per_column = check_batch(records, columns, fmt.delimiter)
                if text:
                    if copy is None:
                        copy = open_copy.enter_context(cur.copy(query))
                    copy.write(text)
                pending += errors
                if len(pending) >= ERRORS_PER_FLUSH:
                    open_copy.close()
                    copy = None
                    flush_errors(cur, upload_id, pending)
                invalid_cells = [a + b for a, b in zip(invalid_cells, per_column, strict=True)]
                valid += good
                invalid += bad
                after_batch(valid + invalid)
            open_copy.close()
            flush_errors(cur, upload_id, pending)
    except (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
        # e.g. a NUL character deep in the file (PostgreSQL text cannot hold one) or
        # a row wider than a heap page: the file cannot be stored as it is.
        raise CsvFormatError("unloadable_row", str(exc).splitlines()[0]) from exc
    profiles, _ = profile_table(conn, table, columns, invalid_cells)
    nulls = sum(p["nulls"] for p in profiles)
    return summarise(valid, invalid, profiles, valid * len(columns), nulls)


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
    valid = invalid = 0
    while True:
        batch, errors, bad = parse_batch(rows, fmt.columns, profiles, fmt.delimiter)
        if not batch and not errors:
            break
        copy_batch(conn, table, fmt.columns, batch, upload_id, errors)
        valid += len(batch)
        invalid += bad
        after_batch(valid + invalid)
    cells = sum(p.count for p in profiles)
    nulls = sum(p.nulls for p in profiles)
    return summarise(valid, invalid, [p.to_dict() for p in profiles], cells, nulls)


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
    estimate = 24 + len(columns) // 8 + sum(FIXED_BYTES.get(c.type, 18) for c in columns)
    return len(columns) > PG_MAX_COLUMNS or estimate > WIDE_ROW_BYTES


def create_table(conn: psycopg.Connection[Any], table: str, columns: list[ColumnSpec]) -> None:
    defs: list[sql.Composable] = [sql.SQL("_row bigint NOT NULL")]
    if is_wide(columns):
        defs.append(sql.SQL("data jsonb NOT NULL"))
    else:
        defs += [
            sql.SQL("{} {}").format(sql.Identifier(c.sql_name), sql.SQL(PG_TYPES[c.type]))
            for c in columns
        ]
    query = sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(", ").join(defs))
    conn.execute(query)


def parse_batch(
    rows: Iterator[tuple[int, list[str]]],
    columns: list[ColumnSpec],
    profiles: list[ColumnProfile],
    delimiter: str,
) -> tuple[list[tuple[Any, ...]], list[tuple[int, str, str, str]], int]:
    """Up to UPLOAD_BATCH_ROWS rows: (valid typed rows, rejected cells, rejected rows)."""
    width = len(columns)
    pairs = list(zip(columns, profiles, strict=True))
    batch: list[tuple[Any, ...]] = []
    errors: list[tuple[int, str, str, str]] = []
    bad_rows = 0
    chars = 0
    for number, fields in rows:
        fitted, reason = fit_row(fields, width)
        if fitted is None:
            # A ragged row is rejected whole: its cells can't be matched to columns.
            assert reason is not None
            errors.append((number, "", delimiter.join(fields)[:ERROR_VALUE_MAX_CHARS], reason))
            bad_rows += 1
        else:
            values: list[Any] = [number]
            ok = True
            for cell, (col, profile) in zip(fitted, pairs):  # noqa: B905 - fitted to width
                value, error = parse_cell(cell, col)
                profile.add(value, error)
                if error is not None:
                    ok = False
                    errors.append((number, col.name, cell[:ERROR_VALUE_MAX_CHARS], error))
                values.append(value)
            if ok:
                batch.append(tuple(values))
            else:
                bad_rows += 1
            chars += sum(map(len, fitted))
        if len(batch) + bad_rows >= settings.UPLOAD_BATCH_ROWS or chars >= BATCH_MAX_CHARS:
            break
    return batch, errors, bad_rows


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
