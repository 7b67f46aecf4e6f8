"""The column-at-a-time checker (jobs.csvimport.batch) against the per-cell reference
(columntypes.parse_cell): for any cells, the same cells are rejected with the same reasons,
and what PostgreSQL reads from the COPY text it writes is exactly the value parse_cell gives;
for forced (lenient) and inferred (strict) columns alike."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import settings as settings_module
from core.columntypes import ColumnType
from jobs.csvimport.batch import check_batch, check_column
from jobs.csvimport.celltypes import NULL_TOKENS, ColumnSpec
from jobs.csvimport.columntypes import RECORDS, parse_cell
from jobs.csvimport.load import BATCH_MAX_CHARS, take_batch
from tests.support.uploads import run_import, stage, upload_row

_SPECS = [
    ColumnSpec("c", "c", ColumnType.INT),
    ColumnSpec("c", "c", ColumnType.INT, thousands_sep=","),
    ColumnSpec("c", "c", ColumnType.INT, decimal_comma=True, thousands_sep="."),
    ColumnSpec("c", "c", ColumnType.FLOAT),
    ColumnSpec("c", "c", ColumnType.FLOAT, thousands_sep=" "),
    ColumnSpec("c", "c", ColumnType.FLOAT, decimal_comma=True),
    ColumnSpec("c", "c", ColumnType.BOOL),
    ColumnSpec("c", "c", ColumnType.DATE, "%Y-%m-%d"),
    ColumnSpec("c", "c", ColumnType.DATE, "%d/%m/%Y"),
    ColumnSpec("c", "c", ColumnType.DATETIME, "%Y-%m-%d"),
    ColumnSpec("c", "c", ColumnType.DATETIME, "%d.%m.%Y"),
    ColumnSpec("c", "c", ColumnType.TEXT),
]
SPECS = [dataclasses.replace(s, forced=forced) for s in _SPECS for forced in (True, False)]

_zones = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m))
)
_plain = st.one_of(
    st.integers(-(2**64), 2**64).map(str),
    st.integers(-(10**7), 10**7).map(lambda n: f"{n:,}"),
    st.floats(allow_nan=False).map(repr),
    st.floats(-1e9, 1e9).map(lambda f: f"{f:.3f}"),
    st.floats(-1e9, 1e9).map(lambda f: f"{f:.2f}".replace(".", ",")),
    st.sampled_from(["1e400", "-1e-400", "1" * 40, "0." + "0" * 40 + "1", "+5", "007", ".5"]),
    st.sampled_from([str(2**63 - 1), str(2**63), str(-(2**63)), str(-(2**63) - 1), "9" * 20]),
    st.sampled_from(["true", "False", "YES", "n", "t", "TRUE", "yes", "maybe"]),
    st.dates().map(dt.date.isoformat),
    st.dates().map(lambda d: d.strftime("%d/%m/%Y")),
    st.sampled_from(["2024-02-30", "0000-01-01", "2024-1-5", "2023-02-29", "2024-02-29"]),
    st.datetimes(timezones=st.none() | _zones).map(lambda t: t.isoformat(sep="T")),
    st.datetimes().map(lambda t: t.isoformat(sep=" ", timespec="seconds")),
    st.datetimes().map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")),
    st.datetimes().map(lambda t: t.strftime("%d.%m.%Y %H:%M")),
    st.sampled_from(["2024-05-01T24:00:00", "2024-05-01T10:00:00+16:00", "2024-05-01 10:00"]),
    st.sampled_from(["2024-05-01T10:00:00+15:59", "2024-05-01 10:00:00-23:59", "2024-05-01Z"]),
    st.sampled_from(sorted(NULL_TOKENS)),
)
_cell = st.one_of(
    _plain,
    _plain.map(lambda v: f" {v} "),
    st.text(alphabet=st.sampled_from(list('0123456789+-.,eE:T Z/"\r\n\tab')), max_size=24),
)


def _stored(value: Any) -> Any:
    """parse_cell's value as PostgreSQL stores it (naive datetimes are UTC)."""
    if isinstance(value, dt.datetime):
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
    return value


@pytest.fixture
def utc_db(db: psycopg.Connection) -> psycopg.Connection:
    db.execute("SET TIME ZONE 'UTC'")
    return db


EDGES = [
    str(2**63 - 1),
    str(2**63),
    str(-(2**63)),
    "9" * 19,
    "1" * 40,
    "1" * 33 + ".5",
    "9" * 320,  # past float8's range: PostgreSQL refuses it, parse_cell gives inf
    "0." + "0" * 400 + "1",
    "2024-02-29",
    "2023-02-29",
    "0000-01-01",
    "2024-05-01T10:00:00+15:59",
    "2024-05-01T10:00:00+16:00",
    "2024-05-01T10:00:00-23:59",
    "2024-05-01T24:00:00",
    "2024-05-31 23:59:59.123456Z",
    "TRUE",
    "  7 ",
    "",
    "NA",
    "1\n2",
]


@pytest.mark.parametrize(
    "spec",
    SPECS,
    ids=lambda s: (
        f"{s.type}-{s.date_format}-{s.thousands_sep}-{'forced' if s.forced else 'inferred'}"
    ),
)
def test_edge_cells(utc_db: psycopg.Connection, spec: ColumnSpec) -> None:
    for cells in ([c] for c in EDGES):
        check_like_parse_cell(utc_db, spec, cells)
    check_like_parse_cell(utc_db, spec, EDGES)


@pytest.mark.parametrize(
    "spec",
    SPECS,
    ids=lambda s: (
        f"{s.type}-{s.date_format}-{s.thousands_sep}-{'forced' if s.forced else 'inferred'}"
    ),
)
@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cells=st.lists(_cell, min_size=1, max_size=12))
def test_same_verdicts_and_values_as_parse_cell(
    utc_db: psycopg.Connection, spec: ColumnSpec, cells: list[str]
) -> None:
    check_like_parse_cell(utc_db, spec, cells)
    # Whole columns of one plain shape take the joined-regex path.
    check_like_parse_cell(utc_db, spec, [c for c in cells if parse_cell(c, spec)[1] is None])


@pytest.mark.parametrize("forced", [False, True])
def test_issue14_decimal_comma_float_keeps_integers_past_2_to_the_53(
    utc_db: psycopg.Connection, forced: bool
) -> None:
    # 2**53 + 1 has no float8 of its own: stored, it would read back 9007199254740992. With a
    # decimal comma the column's plain form is integer digits; the per-cell path rejects the
    # cell when the type was inferred (a user who forced float accepts the rounding), so the
    # column path must not wave it through (Hypothesis found it).
    spec = ColumnSpec("c", "c", ColumnType.FLOAT, decimal_comma=True, forced=forced)
    for cells in (["9007199254740993"], ["12", "9007199254740993", "3,5"]):
        check_like_parse_cell(utc_db, spec, cells)
    _, errors = check_column(["9007199254740993"], spec)
    assert errors == ([] if forced else [(0, "not a number")])


@pytest.mark.parametrize("forced", [False, True])
def test_an_instant_outside_years_1_to_9999_in_utc_is_no_datetime(
    utc_db: psycopg.Connection, forced: bool
) -> None:
    # 0001-01-01T00:00:00+15:59 is 0000-12-31 in UTC: PostgreSQL stored it as a BC time
    # stamp that psycopg cannot read back, and +16:00 (kept, as UTC overflowed) made the
    # COPY fail (Hypothesis found both).
    spec = ColumnSpec("c", "c", ColumnType.DATETIME, forced=forced)
    outside = ["0001-01-01T00:00:00+15:59", "0001-01-01T10:00:00+16:00", "9999-12-31T23:00-01:00"]
    inside = ["0001-01-01T00:00:00+00:00", "0001-01-02T00:00:00+15:59", "9999-12-31T23:00:00Z"]
    for cell in outside:
        assert parse_cell(cell, spec) == (None, "not a datetime")
    for cell in inside:
        assert parse_cell(cell, spec)[1] is None
    check_like_parse_cell(utc_db, spec, inside)
    check_like_parse_cell(utc_db, spec, outside + inside)


def check_like_parse_cell(db: psycopg.Connection, spec: ColumnSpec, cells: list[str]) -> None:
    if not cells:
        return
    expected = [parse_cell(c, spec) for c in cells]
    _, errors = check_column(cells, spec)
    assert errors == [(i, e) for i, (_, e) in enumerate(expected) if e is not None]

    records = [(i + 1, [c]) for i, c in enumerate(cells)]
    checked = check_batch(records, [spec], ",")
    if not spec.forced:
        # An inferred type a cell does not fit was guessed wrong: nothing is rejected.
        assert checked.misfits == ([0] if errors else [])
        if errors:
            return
    text, good, bad_rows = checked.text, checked.good, checked.bad_rows
    assert (good, bad_rows, checked.invalid) == (
        len(cells) - len(errors),
        len(errors),
        [len(errors)],
    )
    assert [(r[0], r[3]) for r in checked.rejected] == [(i + 1, e) for i, e in errors]
    pg_type = RECORDS[spec.type].pg_type
    db.execute(f"CREATE TEMP TABLE IF NOT EXISTS t_{spec.type} (_row bigint, c {pg_type})")
    db.execute(f"TRUNCATE t_{spec.type}")
    with db.cursor() as cur:
        with cur.copy(f"COPY t_{spec.type} (_row, c) FROM STDIN (FORMAT csv)") as copy:
            copy.write(text)
        got = cur.execute(f"SELECT _row, c FROM t_{spec.type} ORDER BY _row").fetchall()
    want = [(i + 1, _stored(v)) for i, (v, e) in enumerate(expected) if e is None]
    assert got == want


def test_quoting_nulls_and_ragged_rows(utc_db: psycopg.Connection) -> None:
    cols = [
        ColumnSpec("n", "n", ColumnType.INT, forced=True),
        ColumnSpec("t", "t", ColumnType.TEXT),
    ]
    records = [
        (1, ["1", 'say "hi", then\r\nleave']),
        (2, ["", "   "]),
        (3, ["x", "kept"]),
        (4, ["4"]),
        (5, ["5", "\\.", "", ""]),
    ]
    checked = check_batch(records, cols, ",")
    text = checked.text
    assert (checked.good, checked.bad_rows, checked.invalid) == (3, 2, [1, 0])
    assert checked.ragged == [1]
    assert checked.rejected == [
        (4, "", "4", "too few fields: expected 2, got 1"),
        (3, "n", "x", "not an integer"),
    ]
    utc_db.execute("CREATE TEMP TABLE q (_row bigint, n bigint, t text)")
    with utc_db.cursor() as cur:
        with cur.copy("COPY q FROM STDIN (FORMAT csv)") as copy:
            copy.write(text)
        got = cur.execute("SELECT * FROM q ORDER BY _row").fetchall()
    assert got == [(1, 1, 'say "hi", then\r\nleave'), (2, None, None), (5, 5, "\\.")]


def test_floats_that_would_change_stay_text(db: psycopg.Connection, redis_client: Any) -> None:
    # 1e999 would be read as inf, 1e-400 as 0, and 17 digits round; the column stays text.
    # Forced to float, they load as the double nearest to them, as asked.
    data = b"x,y\n1,1e999\n2,-1e-400\n3,0.12345678901234567\n4,2.5\n"
    upload_id, _ = stage(db, data)
    run_import(redis_client, upload_id)
    y = upload_row(db, upload_id)["result"]["columns"][1]
    assert y["type"] == "text"
    upload_id, _ = stage(db, data, columns={"y": "float"})
    run_import(redis_client, upload_id)
    row = upload_row(db, upload_id)
    assert row["status"] == "completed"
    y = row["result"]["columns"][1]
    assert (y["type"], y["min"], y["max"], y["mean"]) == ("float", -0.0, "inf", "inf")


def test_batches_are_bounded_by_rows_and_by_characters() -> None:
    small = iter([(i, ["x" * 10] * 3) for i in range(1, 12_001)])
    sizes = [len(take_batch(small)) for _ in range(4)]
    assert sizes == [settings_module.UPLOAD_BATCH_ROWS] * 2 + [2_000, 0]
    # Rows of 3 MiB: taken one at a time, the batch stops once past BATCH_MAX_CHARS.
    wide = iter([(i, ["y" * (3 << 20)]) for i in range(1, 6)] + [(6, ["z"])])
    first = take_batch(wide)
    assert len(first) == -(-BATCH_MAX_CHARS // (3 << 20))
    assert [n for n, _ in take_batch(wide)] == [4, 5, 6]
