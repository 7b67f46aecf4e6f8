"""Per-column profiles: computed by PostgreSQL over a loaded typed table (`profile_table`), or
accumulated cell by cell in bounded memory (`ColumnProfile`, for the jsonb "wide" layout)."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections import Counter
from typing import Any, Final

import psycopg
from psycopg import sql

from core import settings
from core.columntypes import ColumnType
from jobs.csvimport.celltypes import ColumnSpec, Value
from jobs.csvimport.columntypes import RECORDS

# Distinct values are counted exactly (by 64-bit hash, so long texts cost 8 bytes each) up to
# this many, then by HyperLogLog and reported with "distinct_approximate": true.
DISTINCT_EXACT_CAP: Final = 10_000
# Past this many rows a typed table's profile leaves out count(DISTINCT) (a sort of every
# column, ~1 s per 1M rows x 6 columns) and reports ANALYZE's estimates instead.
EXACT_DISTINCT_ROWS: Final = 100_000
# Top-value candidates kept for text/bool; beyond it the Misra-Gries summary applies (counts
# become lower bounds, but any value above n/TOP_CAPACITY is guaranteed to survive).
TOP_CAPACITY: Final = 10_000
# Top-value keys are truncated so a column of 1 MiB cells cannot hold GBs in the counter.
TOP_VALUE_MAX_CHARS: Final = 200
TOP_N: Final = 5

_HLL_P: Final = 12  # 4096 registers: ~1.6% standard error (Flajolet et al. 2007, 1.04/sqrt(m))
_HLL_M: Final = 1 << _HLL_P
_MASK64: Final = (1 << 64) - 1


class _HyperLogLog:
    __slots__ = ("registers",)

    def __init__(self) -> None:
        self.registers = bytearray(_HLL_M)

    def add_hash(self, h: int) -> None:
        h &= _MASK64
        idx = h >> (64 - _HLL_P)
        rest = (h << _HLL_P) & _MASK64
        rank = 64 - _HLL_P + 1 if rest == 0 else 65 - rest.bit_length()
        if rank > self.registers[idx]:
            self.registers[idx] = rank

    def estimate(self) -> int:
        alpha = 0.7213 / (1 + 1.079 / _HLL_M)
        z = sum(2.0**-r for r in self.registers)
        est = alpha * _HLL_M * _HLL_M / z
        zeros = self.registers.count(0)
        if est <= 2.5 * _HLL_M and zeros:
            est = _HLL_M * math.log(_HLL_M / zeros)  # small-range (linear counting) correction
        return round(est)


def _hash(text: str) -> int:
    # Stable across processes, unlike hash() of a str (randomised per process, PYTHONHASHSEED),
    # so a re-run reports the same estimate.
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# Means of datetimes are seconds from this instant (UTC, as _key and extract(epoch) count),
# so they carry a zone like min and max do (API.md: time stamps ISO 8601 with a zone).
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _key(value: Value) -> float | int:
    # Comparable key for min/max/mean: aware datetimes (a column may mix zones) go to UTC.
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return (value - dt.datetime(1970, 1, 1)).total_seconds()
    if isinstance(value, dt.date):
        return value.toordinal()
    if isinstance(value, bool):
        return int(value)
    assert isinstance(value, int | float)
    return value


class ColumnProfile:
    def __init__(self, col: ColumnSpec) -> None:
        self.col = col
        self.count = 0
        self.nulls = 0
        self.invalid = 0
        self._hashes: set[int] | None = set()
        self._hll: _HyperLogLog | None = None
        self._min: Value | None = None
        self._max: Value | None = None
        self._min_key = 0.0
        self._max_key = 0.0
        self._sum = 0.0
        self._n = 0
        self._top: Counter[str] = Counter()

    def add(self, value: Value | None, error: str | None) -> None:
        """Feed one `parse_cell` result."""
        self.count += 1
        if error is not None:
            self.invalid += 1
            return
        if value is None:
            self.nulls += 1
            return
        h = _hash(value if isinstance(value, str) else repr(value))
        if self._hashes is not None:
            self._hashes.add(h)
            if len(self._hashes) > DISTINCT_EXACT_CAP:
                self._hll = _HyperLogLog()
                for old in self._hashes:
                    self._hll.add_hash(old)
                self._hashes = None
        else:
            assert self._hll is not None
            self._hll.add_hash(h)
        if RECORDS[self.col.type].mean_key is None:
            self._add_top(str(value)[:TOP_VALUE_MAX_CHARS])
            return
        k = _key(value)
        if self._n == 0 or k < self._min_key:
            self._min, self._min_key = value, k
        if self._n == 0 or k > self._max_key:
            self._max, self._max_key = value, k
        self._sum += k
        self._n += 1

    def _add_top(self, key: str) -> None:
        top = self._top
        top[key] += 1
        if len(top) > 2 * TOP_CAPACITY:
            # Batched Misra-Gries (Misra & Gries 1982): subtract the TOP_CAPACITY-th largest
            # count from every counter and drop the non-positive ones; amortised O(1) per add.
            cut = sorted(top.values(), reverse=True)[TOP_CAPACITY]
            self._top = Counter({k: c - cut for k, c in top.items() if c > cut})

    @property
    def distinct(self) -> int:
        if self._hashes is not None:
            return len(self._hashes)
        assert self._hll is not None
        return self._hll.estimate()

    def _mean(self) -> Any:
        if self._n == 0:
            return None
        mean = self._sum / self._n
        if self.col.type == ColumnType.DATE:
            return dt.date.fromordinal(round(mean)).isoformat()
        if self.col.type == ColumnType.DATETIME:
            return (_EPOCH + dt.timedelta(seconds=mean)).isoformat()
        return mean

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.col.name,
            "type": self.col.type,
            "nulls": self.nulls,
            "invalid": self.invalid,
            "distinct": self.distinct,
            "distinct_approximate": self._hashes is None,
        }
        if RECORDS[self.col.type].mean_key is None:
            out["top"] = [
                {"value": v, "count": c}
                for v, c in sorted(self._top.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_N]
            ]
            return out

        def jsonable(v: Value | None) -> Any:
            return v.isoformat() if isinstance(v, dt.date) else v

        out["min"] = jsonable(self._min)
        out["max"] = jsonable(self._max)
        out["mean"] = self._mean()
        return out


# --- in PostgreSQL, over the loaded table -------------------------------------------------------


def _jsonable(value: Any) -> Any:
    # JSON has no Infinity/NaN (RFC 8259 section 6) and PostgreSQL's jsonb refuses them.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value.isoformat() if isinstance(value, dt.date) else value


def _mean_of(col_type: str, mean: Any) -> Any:
    if mean is None:
        return None
    if col_type == ColumnType.DATE:
        return dt.date.fromordinal(round(float(mean))).isoformat()
    if col_type == ColumnType.DATETIME:
        return (_EPOCH + dt.timedelta(seconds=float(mean))).isoformat()
    return _jsonable(float(mean))


def profile_table(
    conn: psycopg.Connection[Any],
    table: str,
    columns: list[ColumnSpec],
    invalid: list[int],
    rows: int,
) -> tuple[list[dict[str, Any]], int]:
    """Profiles of the loaded (valid) rows of a typed upload table, computed by PostgreSQL
    inside the import's transaction; `invalid` are the rejected-cell counts per column and
    `rows` the rows loaded. Returns (one dict per column, the table's row count).

    One scan aggregates every column (count, min, max, avg and, up to EXACT_DISTINCT_ROWS
    rows, count(DISTINCT), which sorts: measured faster than a hash GROUP BY per column for
    high-cardinality columns; a bool column's two counts); text columns then get one GROUP
    BY each for their top values and distinct count. Past EXACT_DISTINCT_ROWS rows the other
    columns' distinct counts are ANALYZE's estimates ("distinct_approximate": true)."""
    ident = sql.Identifier(table)
    exact = rows <= EXACT_DISTINCT_ROWS
    # count(DISTINCT) sorts each column; in memory instead of on disk it took ~half as long.
    conn.execute("SELECT set_config('work_mem', %s, true)", (settings.UPLOAD_PROFILE_WORK_MEM,))
    aggs: list[sql.Composable] = [sql.SQL("count(*)")]
    for c in columns:
        name = sql.Identifier(c.sql_name)
        aggs.append(sql.SQL("count({})").format(name))
        mean_key = RECORDS[c.type].mean_key
        if c.type == ColumnType.BOOL:
            # Its two values counted in this scan: no GROUP BY scan of its own (~80 ms per 1M).
            aggs += [
                sql.SQL("count(*) FILTER (WHERE {})").format(name),
                sql.SQL("count(*) FILTER (WHERE NOT {})").format(name),
            ]
        elif mean_key is not None:
            # Means as numbers: days since 0001-01-01 (date.toordinal) or epoch seconds.
            key = sql.SQL(mean_key)
            aggs += [
                sql.SQL("count(DISTINCT {})" if exact else "NULL").format(name),
                sql.SQL("min({})").format(name),
                sql.SQL("max({})").format(name),
                sql.SQL("avg({})").format(key.format(name)),
            ]
    row = conn.execute(sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(aggs), ident))
    stats = list(row.fetchone() or ())
    total = int(stats.pop(0))
    estimates = {} if exact else _estimated_distinct(conn, table, columns, total)
    out: list[dict[str, Any]] = []
    for c, bad in zip(columns, invalid, strict=True):
        entry: dict[str, Any] = {
            "name": c.name,
            "type": c.type,
            "nulls": total - int(stats.pop(0)),
            "invalid": bad,
        }
        if c.type == ColumnType.BOOL:
            distinct, top = _bool_top(int(stats.pop(0)), int(stats.pop(0)))
            entry |= {"distinct": distinct, "distinct_approximate": False, "top": top}
        elif RECORDS[c.type].mean_key is None:
            distinct, top = _top_values(conn, ident, c)
            entry |= {"distinct": distinct, "distinct_approximate": False, "top": top}
        else:
            distinct, low, high, mean = stats[:4]
            del stats[:4]
            if not exact:
                count = total - entry["nulls"]
                distinct = min(count, estimates.get(c.sql_name, 0)) or min(count, 1)
            entry |= {
                "distinct": int(distinct),
                "distinct_approximate": not exact,
                "min": _jsonable(low),
                "max": _jsonable(high),
                "mean": _mean_of(c.type, mean),
            }
        out.append(entry)
    return out, total


def _estimated_distinct(
    conn: psycopg.Connection[Any], table: str, columns: list[ColumnSpec], total: int
) -> dict[str, int]:
    """ANALYZE's distinct-value estimates (Haas-Stokes, from a sample of 300 x
    UPLOAD_PROFILE_STATISTICS_TARGET rows) of the columns with min/max/mean, by sql_name."""
    names = [c.sql_name for c in columns if RECORDS[c.type].mean_key is not None]
    if not names:
        return {}
    ident = sql.Identifier(table)
    cols = sql.SQL(", ").join(map(sql.Identifier, names))
    # A 9,000-row sample by default: 45 ms per 1M rows against 120 ms for 30,000, with
    # estimates as close on the benchmark's columns (docs/csv.md).
    target = str(settings.UPLOAD_PROFILE_STATISTICS_TARGET)
    conn.execute("SELECT set_config('default_statistics_target', %s, true)", (target,))
    conn.execute(sql.SQL("ANALYZE {} ({})").format(ident, cols))
    found = conn.execute(
        "SELECT s.attname, s.n_distinct FROM pg_stats s"
        " JOIN pg_class c ON c.relname = s.tablename"
        " JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = s.schemaname"
        " WHERE c.oid = %s::regclass",
        (ident.as_string(conn),),
    ).fetchall()
    # n_distinct < 0 is minus the share of rows that are distinct (pg_stats docs).
    return {name: round(-n * total if n < 0 else n) for name, n in found}


def _bool_top(trues: int, falses: int) -> tuple[int, list[dict[str, Any]]]:
    """A bool column's distinct count and top values from its two counts (as `_top_values`
    orders them: by count, then False before True)."""
    counts = sorted(((-n, value) for value, n in ((False, falses), (True, trues)) if n))
    return len(counts), [{"value": str(value), "count": -n} for n, value in counts]


def _top_values(
    conn: psycopg.Connection[Any], table: sql.Identifier, col: ColumnSpec
) -> tuple[int, list[dict[str, Any]]]:
    """A text column's distinct count and top values, by one GROUP BY."""
    # COLLATE "C" compares text bytewise: faster, and ties order by code point as before.
    value = sql.SQL('{} COLLATE "C"').format(sql.Identifier(col.sql_name))
    query = sql.SQL(
        "WITH g AS MATERIALIZED (SELECT {v} AS v, count(*) AS n FROM {t}"
        " WHERE {v} IS NOT NULL GROUP BY 1)"
        " SELECT (SELECT count(*) FROM g), (SELECT coalesce(json_agg(json_build_array(v, n)),"
        " '[]') FROM (SELECT v, n FROM g ORDER BY n DESC, v LIMIT {n}) x)"
    ).format(v=value, t=table, n=sql.Literal(TOP_N))
    distinct, top = conn.execute(query).fetchone() or (0, [])
    return int(distinct), [{"value": str(v)[:TOP_VALUE_MAX_CHARS], "count": n} for v, n in top]
