"""An upload's typed table: its layout (one column per field, or one jsonb column for files
too wide for a heap tuple), its DDL and key, and the result of API.md computed from it."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from jobs.csvimport.celltypes import ColumnSpec
from jobs.csvimport.columntypes import RECORDS
from jobs.csvimport.format import CsvFormat
from jobs.csvimport.profile import profile_table

# PostgreSQL allows 1600 columns per table (docs, Appendix K "Limits"); one is ``_row``.
PG_MAX_COLUMNS = 1599
# A variable-length value in a heap tuple: at least a TOAST pointer (docs, "TOAST").
TOAST_POINTER_BYTES = 18
# Above this estimated row size the "wide" layout (one jsonb column) is used.
WIDE_ROW_BYTES = 6000


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
    """`numbered`: PostgreSQL numbers `_row` 1, 2, ... in COPY order where the pass-through
    does not write the numbers in itself.
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


def table_result(
    conn: psycopg.Connection[Any],
    table: str,
    fmt: CsvFormat,
    warnings: list[dict[str, Any]],
    valid: int,
    invalid: int,
    invalid_cells: list[int],
) -> dict[str, Any]:
    """The result of API.md for a loaded typed table, profiled by PostgreSQL."""
    profiles, _ = profile_table(conn, table, fmt.columns, invalid_cells, valid)
    nulls = sum(p["nulls"] for p in profiles)
    result = summarise(valid, invalid, profiles, valid * len(fmt.columns), nulls)
    result["warnings"] = fmt.warnings + warnings
    return result


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
