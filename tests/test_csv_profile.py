"""The profile PostgreSQL computes over a loaded table (jobs/csvimport/profile.py): past
EXACT_DISTINCT_ROWS its one scan is grouped by the text columns of few values and the groups
are folded in Python; that must give what the exact per-column queries give, but for the
typed columns' distinct counts, which become ANALYZE's estimates."""

from __future__ import annotations

import decimal
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from core import settings
from jobs.csvimport import profile
from jobs.csvimport.celltypes import ColumnSpec

ROWS = 6000
COLUMNS = [
    ColumnSpec("n", "n", "int"),
    ColumnSpec("x", "x", "float"),
    ColumnSpec("city", "city", "text"),
    ColumnSpec("day", "day", "date"),
    ColumnSpec("ok", "ok", "bool"),
    ColumnSpec("seen", "seen", "datetime"),
    ColumnSpec("kind", "kind", "text"),
    ColumnSpec("label", "label", "text"),
    ColumnSpec("empty", "empty", "text"),
]


@pytest.fixture
def table(db: psycopg.Connection) -> Iterator[str]:
    name = f"profile_{uuid.uuid4().hex[:8]}"
    db.execute(
        f"CREATE TABLE {name} (_row bigint, n bigint, x double precision, city text,"
        " day date, ok boolean, seen timestamptz, kind text, label text, empty text)"
    )
    # Low-valued text columns with NULLs, ties and non-ASCII values (top values order ties
    # by code point); a column of a value per row; dyadic floats, so any order of summing is
    # exact and the means compare equal.
    db.execute(
        f"INSERT INTO {name} SELECT i, CASE WHEN i %% 11 <> 0 THEN i * 7 - 20000 END,"
        " i * 0.25, (ARRAY['Brno', 'Łódź', 'Lyon', 'Zoë', NULL])[i %% 5 + 1],"
        " DATE '1999-12-30' + i %% 400, CASE WHEN i %% 7 <> 0 THEN i %% 3 = 0 END,"
        " TIMESTAMPTZ '2024-05-01 10:00:00.25+02' + i * INTERVAL '61.5 minutes',"
        " CASE WHEN i %% 13 <> 0 THEN 'k' || (i %% 17) END, 'label ' || i, NULL"
        " FROM generate_series(1, %s) i",
        (ROWS,),
    )
    yield name
    db.execute(f"DROP TABLE {name}")


def profiled(db: psycopg.Connection, table: str) -> list[dict[str, Any]]:
    with db.transaction():
        out, total = profile.profile_table(db, table, COLUMNS, [0] * len(COLUMNS), ROWS)
    assert total == ROWS
    return out


def test_the_grouped_scan_gives_the_exact_profile(
    db: psycopg.Connection, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    exact = profiled(db, table)
    assert not any(c["distinct_approximate"] for c in exact)
    monkeypatch.setattr(profile, "EXACT_DISTINCT_ROWS", 100)
    queries: list[str] = []
    execute = psycopg.Connection.execute

    def logged(conn: psycopg.Connection, query: Any, *args: Any, **kwargs: Any) -> Any:
        queries.append(query if isinstance(query, str) else query.as_string(conn))
        return execute(conn, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Connection, "execute", logged)
    grouped = profiled(db, table)
    # city (4 values and NULL), kind (17 and NULL) and empty (NULL only) group the scan:
    # 5 x 18 x 1 combinations; label (6,000 values) keeps a GROUP BY of its own.
    scan = next(q for q in queries if "count(*) FILTER" in q)
    assert "GROUP BY 1, 2, 3" in scan and '"label"' not in scan.split(" FROM ")[0]
    assert sum("GROUP BY" in q for q in queries) == 2
    for want, got in zip(exact, grouped, strict=True):
        if "mean" in want:  # typed: distinct counts become estimates
            assert got.pop("distinct_approximate") is True
            assert got.pop("distinct") > 0
            del want["distinct"], want["distinct_approximate"]
        assert got == want
    by_name = {c["name"]: c for c in grouped}
    assert by_name["city"]["top"][:2] == [
        {"value": "Brno", "count": 1200},
        {"value": "Lyon", "count": 1200},
    ]
    assert (by_name["empty"]["distinct"], by_name["empty"]["top"]) == (0, [])
    ns = [i * 7 - 20000 for i in range(1, ROWS + 1) if i % 11]
    assert by_name["n"]["mean"] == pytest.approx(sum(ns) / len(ns))


def test_a_small_group_cap_leaves_every_text_column_its_own_query(
    db: psycopg.Connection, table: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profile, "EXACT_DISTINCT_ROWS", 100)
    grouped = profiled(db, table)
    monkeypatch.setattr(settings, "UPLOAD_PROFILE_MAX_GROUPS", 1)
    # Only the column of NULLs alone still fits: one group.
    assert profile._few_valued(COLUMNS, {"city": 4, "kind": 17, "empty": 0}) == [8]
    ungrouped = profiled(db, table)
    for a, b in zip(grouped, ungrouped, strict=True):
        if "mean" in a:  # typed: distinct counts are estimates from a random sample
            del a["distinct"], b["distinct"]
        assert a == b


def test_group_sums_fold_as_postgresql_adds_them() -> None:
    inf = decimal.Decimal("Infinity")
    assert profile._fold("sum", [inf, -inf]).is_nan()  # PostgreSQL's sum gives NaN too
    assert profile._fold("sum", [2**62, 2**62, None]) == 2**63  # ints stay exact ints
    # Each double exactly, to 40 digits: no rounding to a double on the way.
    assert str(profile._fold("sum", [0.1, 0.2])) == "0.3000000000000000166533453693773481063545"
    assert profile._fold("sum", [None, None]) is None
    assert (profile._fold("min", [None, 3, 1]), profile._fold("max", [])) == (1, None)
