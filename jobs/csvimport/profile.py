"""Per-column profiles of a loaded typed upload table, computed by PostgreSQL inside the
import's transaction (`profile_table`).

One scan aggregates every column: count, min, max, the sum of a mean key and, up to
EXACT_DISTINCT_ROWS rows, count(DISTINCT), which sorts (measured faster than a hash GROUP
BY per column for high-cardinality columns); a bool column's two counts. Past that size the
typed columns' distinct counts are ANALYZE's estimates, and the scan is grouped by the text
columns of few values (by the same estimates): PostgreSQL aggregates per group, Python folds
the groups, and those columns' exact top values and distinct counts come from the one scan
instead of a scan each (docs/csv.md). Any other text column gets a GROUP BY of its own."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections import Counter
from collections.abc import Sequence
from typing import Any, Final, Literal

import psycopg
from psycopg import sql

from core import settings
from core.columntypes import ColumnType
from jobs.csvimport.celltypes import ColumnSpec
from jobs.csvimport.columnprofile import EPOCH, TOP_N, TOP_VALUE_MAX_CHARS
from jobs.csvimport.columntypes import RECORDS

# Past this many rows a typed table's profile leaves out count(DISTINCT) (a sort of every
# column, ~1 s per 1M rows x 6 columns) and reports ANALYZE's estimates instead.
EXACT_DISTINCT_ROWS: Final = 100_000

# How one aggregate's per-group values fold into the column's: counts and sums add up.
Fold = Literal["sum", "min", "max"]
# Sums of numeric groups: +Infinity and -Infinity give NaN, as PostgreSQL's sum does, and
# the mean's division keeps more digits than a double holds.
_SUMS: Final = decimal.Context(prec=40, traps=[])


def _jsonable(value: Any) -> Any:
    # JSON has no Infinity/NaN (RFC 8259 section 6) and PostgreSQL's jsonb refuses them.
    if isinstance(value, float | decimal.Decimal) and not math.isfinite(value):
        return str(value)
    return value.isoformat() if isinstance(value, dt.date) else value


def _mean_of(col_type: str, total: Any, count: int) -> Any:
    if total is None or not count:
        return None
    mean = _SUMS.divide(decimal.Decimal(total), count)
    if col_type == ColumnType.DATE:
        return dt.date.fromordinal(round(mean)).isoformat()
    if col_type == ColumnType.DATETIME:
        return (EPOCH + dt.timedelta(seconds=float(mean))).isoformat()
    return _jsonable(float(mean))


def _fold(kind: Fold, values: list[Any]) -> Any:
    present = [v for v in values if v is not None]
    if kind != "sum":
        return (min if kind == "min" else max)(present, default=None)
    if not present:
        return None
    if all(isinstance(v, int) for v in present):
        return sum(present)
    with decimal.localcontext(_SUMS):  # Decimal arithmetic uses the thread's context
        return sum((decimal.Decimal(v) for v in present), decimal.Decimal(0))


class _Scan:
    """The select list of the aggregate scan and, per column, where its values land."""

    def __init__(self, columns: list[ColumnSpec], exact: bool, grouped: Sequence[int]) -> None:
        self.grouped = list(grouped)
        self.aggs: list[tuple[sql.Composable, Fold]] = [(sql.SQL("count(*)"), "sum")]
        self.slots: list[list[int]] = []  # per column, its aggregates' indexes in `aggs`
        for c in columns:
            name = sql.Identifier(c.sql_name)
            mine = [self._add(sql.SQL("count({})").format(name), "sum")]
            mean_key = RECORDS[c.type].mean_key
            if c.type == ColumnType.BOOL:
                # Its two values counted in this scan: no GROUP BY scan of its own (~80 ms
                # per 1M rows).
                mine.append(self._add(sql.SQL("count(*) FILTER (WHERE {})").format(name), "sum"))
                mine.append(
                    self._add(sql.SQL("count(*) FILTER (WHERE NOT {})").format(name), "sum")
                )
            elif mean_key is not None:
                # Means as numbers: days since 0001-01-01 (date.toordinal) or epoch seconds.
                distinct = sql.SQL("count(DISTINCT {})" if exact else "NULL").format(name)
                mine.append(self._add(distinct, "sum"))  # one row: no GROUP BY when exact
                mine.append(self._add(sql.SQL("min({})").format(name), "min"))
                mine.append(self._add(sql.SQL("max({})").format(name), "max"))
                key = sql.SQL(mean_key).format(name)
                mine.append(self._add(sql.SQL("sum({})").format(key), "sum"))
            self.slots.append(mine)

    def _add(self, expr: sql.Composable, fold: Fold) -> int:
        self.aggs.append((expr, fold))
        return len(self.aggs) - 1

    def run(
        self, conn: psycopg.Connection[Any], table: sql.Identifier, columns: list[ColumnSpec]
    ) -> tuple[list[Any], list[Counter[str]]]:
        """(every aggregate folded over the groups, per grouped column its value counts)."""
        # COLLATE "C" compares text bytewise: faster, and ties order by code point as before.
        keys = [
            sql.SQL('{} COLLATE "C"').format(sql.Identifier(columns[j].sql_name))
            for j in self.grouped
        ]
        select = sql.SQL(", ").join([*keys, *(expr for expr, _ in self.aggs)])
        query = sql.SQL("SELECT {} FROM {}").format(select, table)
        if keys:
            query += sql.SQL(" GROUP BY {}").format(
                sql.SQL(", ").join(sql.Literal(i + 1) for i in range(len(keys)))
            )
        groups = conn.execute(query).fetchall()
        width = len(keys)
        folded = [
            _fold(fold, [g[width + i] for g in groups]) for i, (_, fold) in enumerate(self.aggs)
        ]
        counts: list[Counter[str]] = [Counter() for _ in keys]
        for g in groups:
            for k, counter in enumerate(counts):
                if g[k] is not None:
                    counter[g[k]] += g[width]
        return folded, counts


def profile_table(
    conn: psycopg.Connection[Any],
    table: str,
    columns: list[ColumnSpec],
    invalid: list[int],
    rows: int,
) -> tuple[list[dict[str, Any]], int]:
    """Profiles of the loaded (valid) rows of a typed upload table; `invalid` are the
    rejected-cell counts per column and `rows` the rows loaded. Returns (one dict per
    column, the table's row count)."""
    ident = sql.Identifier(table)
    exact = rows <= EXACT_DISTINCT_ROWS
    # count(DISTINCT) sorts each column; in memory instead of on disk it took ~half as long.
    conn.execute("SELECT set_config('work_mem', %s, true)", (settings.UPLOAD_PROFILE_WORK_MEM,))
    estimates = {} if exact else _estimated_distinct(conn, table, columns, rows)
    scan = _Scan(columns, exact, [] if exact else _few_valued(columns, estimates))
    folded, counts = scan.run(conn, ident, columns)
    total = int(folded[0])
    out: list[dict[str, Any]] = []
    for j, (c, bad, slots) in enumerate(zip(columns, invalid, scan.slots, strict=True)):
        stats = [folded[i] for i in slots]
        count = int(stats[0])
        entry: dict[str, Any] = {
            "name": c.name,
            "type": c.type,
            "nulls": total - count,
            "invalid": bad,
        }
        if c.type == ColumnType.BOOL:
            distinct, top = _bool_top(int(stats[1]), int(stats[2]))
            entry |= {"distinct": distinct, "distinct_approximate": False, "top": top}
        elif j in scan.grouped:
            distinct, top = _top_of(counts[scan.grouped.index(j)])
            entry |= {"distinct": distinct, "distinct_approximate": False, "top": top}
        elif RECORDS[c.type].mean_key is None:
            distinct, top = _top_values(conn, ident, c)
            entry |= {"distinct": distinct, "distinct_approximate": False, "top": top}
        else:
            distinct, low, high, key_sum = stats[1:]
            if not exact:
                distinct = min(count, estimates.get(c.sql_name, 0)) or min(count, 1)
            entry |= {
                "distinct": int(distinct),
                "distinct_approximate": not exact,
                "min": _jsonable(low),
                "max": _jsonable(high),
                "mean": _mean_of(c.type, key_sum, count),
            }
        out.append(entry)
    return out, total


def _few_valued(columns: list[ColumnSpec], estimates: dict[str, int]) -> list[int]:
    """The text columns to group the aggregate scan by, fewest values first, while their
    estimated value combinations (NULL counting as one) stay within UPLOAD_PROFILE_MAX_GROUPS:
    measured on 1M rows, 808 groups cost the scan ~60 ms where the two GROUP BYs they spare
    took ~150 ms; 10,000 groups cost more than the scans they spare."""
    texts = sorted(
        (estimates[c.sql_name] + 1, j)
        for j, c in enumerate(columns)
        if c.type == ColumnType.TEXT and c.sql_name in estimates
    )
    chosen: list[int] = []
    groups = 1
    for values, j in texts:
        if groups * values > settings.UPLOAD_PROFILE_MAX_GROUPS:
            break
        groups *= values
        chosen.append(j)
    return chosen


def _estimated_distinct(
    conn: psycopg.Connection[Any], table: str, columns: list[ColumnSpec], total: int
) -> dict[str, int]:
    """ANALYZE's distinct-value estimates (Haas-Stokes, from a sample of 300 x
    UPLOAD_PROFILE_STATISTICS_TARGET rows) of the columns with min/max/mean and the text
    columns, by sql_name."""
    names = [
        c.sql_name
        for c in columns
        if RECORDS[c.type].mean_key is not None or c.type == ColumnType.TEXT
    ]
    if not names:
        return {}
    ident = sql.Identifier(table)
    cols = sql.SQL(", ").join(map(sql.Identifier, names))
    # A 9,000-row sample by default: 45 ms per 1M rows against 120 ms for 30,000, with
    # estimates as close on the benchmark's columns (docs/csv.md).
    target = str(settings.UPLOAD_PROFILE_STATISTICS_TARGET)
    conn.execute("SELECT set_config('default_statistics_target', %s, true)", (target,))
    conn.execute(sql.SQL("ANALYZE {} ({})").format(ident, cols))
    # The upload table is created unqualified, so in current_schema().
    found = conn.execute(
        "SELECT attname, n_distinct FROM pg_stats"
        " WHERE schemaname = current_schema() AND tablename = %s",
        (table,),
    ).fetchall()
    # n_distinct < 0 is minus the share of rows that are distinct (pg_stats docs).
    return {name: round(-n * total if n < 0 else n) for name, n in found}


def _bool_top(trues: int, falses: int) -> tuple[int, list[dict[str, Any]]]:
    """A bool column's distinct count and top values from its two counts (as `_top_values`
    orders them: by count, then False before True)."""
    counts = sorted(((-n, value) for value, n in ((False, falses), (True, trues)) if n))
    return len(counts), [{"value": str(value), "count": -n} for n, value in counts]


def _top_of(counts: Counter[str]) -> tuple[int, list[dict[str, Any]]]:
    """A text column's distinct count and top values from its value counts, ordered as
    `_top_values` orders them (by count, then by code point, as COLLATE "C" does)."""
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]
    return len(counts), [{"value": v[:TOP_VALUE_MAX_CHARS], "count": n} for v, n in top]


def _top_values(
    conn: psycopg.Connection[Any], table: sql.Identifier, col: ColumnSpec
) -> tuple[int, list[dict[str, Any]]]:
    """A text column's distinct count and top values, by one GROUP BY."""
    value = sql.SQL('{} COLLATE "C"').format(sql.Identifier(col.sql_name))
    query = sql.SQL(
        "WITH g AS MATERIALIZED (SELECT {v} AS v, count(*) AS n FROM {t}"
        " WHERE {v} IS NOT NULL GROUP BY 1)"
        " SELECT (SELECT count(*) FROM g), (SELECT coalesce(json_agg(json_build_array(v, n)),"
        " '[]') FROM (SELECT v, n FROM g ORDER BY n DESC, v LIMIT {n}) x)"
    ).format(v=value, t=table, n=sql.Literal(TOP_N))
    distinct, top = conn.execute(query).fetchone() or (0, [])
    return int(distinct), [{"value": str(v)[:TOP_VALUE_MAX_CHARS], "count": n} for v, n in top]
