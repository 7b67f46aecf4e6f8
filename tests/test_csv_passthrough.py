"""The pass-through load (jobs/csvimport/passthrough.py): a file PostgreSQL's COPY parses must
come out exactly as the Python path loads it, and every file where the two readers could part
ways must be handed to the Python path. Each case imports the same bytes both ways and
compares the outcome: status, result, table rows, rejected cells, error."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import psycopg
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import settings as herald_settings
from jobs.csvimport import passthrough, plainrows, profile
from tests.support.shared import CSV_DIR
from tests.support.uploads import (
    chunk_count,
    error_rows,
    run_import,
    stage,
    table_exists,
    table_rows,
    upload_row,
)
from tests.test_csv_import import kill_worker_mid_load, large_file

PARSED = "parsed by PostgreSQL's COPY"
HANDED_BACK = "the Python path loads it"


def outcome(
    db: psycopg.Connection, client: redis.Redis, data: bytes, **kwargs: Any
) -> dict[str, Any]:
    upload_id, _ = stage(db, data, **kwargs)
    run_import(client, upload_id)
    row = upload_row(db, upload_id)
    done = row["status"] == "completed"
    return {
        "status": row["status"],
        "result": row["result"],
        "error": row["error"],
        "rows": table_rows(db, upload_id) if done else None,
        "errors": error_rows(db, upload_id),
    }


def both_ways(
    db: psycopg.Connection,
    client: redis.Redis,
    data: bytes,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    **kwargs: Any,
) -> tuple[dict[str, Any], str]:
    """(the outcome, which loader took it), after checking the Python path's is the same."""
    # Past profile.EXACT_DISTINCT_ROWS distinct counts are ANALYZE's estimates, from a random
    # sample: two loads of one file may differ by a few (119,973 against 120,001 in one CI
    # run). What is compared here is the loaders, so both profile exactly.
    monkeypatch.setattr(profile, "EXACT_DISTINCT_ROWS", 10**9)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="herald.csv_import"):
        fast = outcome(db, client, data, **kwargs)
    logged = caplog.text
    way = "copy" if PARSED in logged else "python" if HANDED_BACK in logged else "ineligible"
    with monkeypatch.context() as m:
        m.setattr(passthrough, "eligible", lambda fmt: False)
        slow = outcome(db, client, data, **kwargs)
    assert fast == slow
    return fast, way


WELL_FORMED = (
    b"id,amount,name,day,active,seen,qty,note\n"
    b'1,2360.48,Zo\xc3\xab,2024-01-31,true,2024-05-01T10:00:00Z,-7,"a, b"\n'
    b'2,-0.5,,2024-02-29,False,2024-05-01 10:00:00.123+02:00,0,"line\none"\n'
    b"3,.25,  padded  ,,YES,2024-05-02,18,plain\n"
    b"4,,x,2000-12-01,,,,\n"
)


def test_a_well_formed_file_is_parsed_by_copy_as_python_reads_it(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out, way = both_ways(db, redis_client, WELL_FORMED, caplog, monkeypatch)
    assert way == "copy"
    assert out["result"]["rows_valid"] == 4
    assert [r[0] for r in out["rows"]] == [1, 2, 3, 4]
    assert [r[3] for r in out["rows"]] == ["Zoë", None, "  padded  ", "x"]


def no_checker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the load if any row reaches the Checker: the block regexes must take them all."""

    def check(self: passthrough.Checker, fields: object) -> None:
        raise AssertionError("the block regex should have taken every row")

    monkeypatch.setattr(passthrough.Checker, "check", check)


def test_an_all_quoted_export_with_15_digit_decimals_takes_the_block_check(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every field quoted (csv.QUOTE_ALL, a database's ENCLOSED BY '"'), decimals of 15
    # significant digits in 16-20 characters: the shapes of 538_congress_data_aging.csv and
    # 538_mayweather_mcgregor_tweets.csv. Each block matches the regex, so the rows need no
    # `csv` and no Checker.
    data = (
        b'"id","when","ok","age","note"\n'
        b'"1","2017-08-27 00:05:34","True","53.7330595482546","a, b"\n'
        b'"2","2017-08-27 00:06:00","false","-0.000012345678901234","x"\n'
        b'"3",,,".5",\n'  # NULLs unquoted: a quoted empty cell is '' to COPY
    )

    no_checker(monkeypatch)
    out, way = both_ways(db, redis_client, data, caplog, monkeypatch)
    assert way == "copy"
    assert [r[4] for r in out["rows"]] == [53.7330595482546, -0.000012345678901234, 0.5]
    assert [r[3] for r in out["rows"]] == [True, False, None]


@pytest.mark.parametrize(
    "name",
    [
        "538_congress_data_aging.csv",
        "538_antiquities_act_dates_thousands.csv",
        "538_mayweather_mcgregor_tweets.csv",
        "538_pollster_raw_polls_2014.tsv",  # month-first dates
        "plotly_olympic_winners_bom_dmy.csv",  # day-first dates
    ],
)
def test_shared_files_these_shapes_came_from_are_parsed_by_copy(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
) -> None:
    # Quoted typed cells, 15-digit decimals of 16 characters, "Grand Canyon ""II""", line
    # breaks in quoted text, dates month or day first: every block is plain rows, and the
    # outcome is the Python path's.
    no_checker(monkeypatch)
    _, way = both_ways(db, redis_client, (CSV_DIR / name).read_bytes(), caplog, monkeypatch)
    assert way == "copy"


def test_line_breaks_in_quoted_text_take_the_block_check(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shape of 538_mayweather_mcgregor_tweets.csv: text with line breaks and quotes.
    data = (
        b'"when","ok","id","text"\r\n'
        b'"2017-08-27 00:05:34",True,1,"Hora cero !!!\n#Mayweather ""vs"" McGregor"\r\n'
        b'"2017-08-27 00:05:39",False,2,"one line"\r\n'
        b'"2017-08-27 00:05:46",True,3,"\r\n\r\nstarts blank, ends ,\r\n"\r\n'
    )
    no_checker(monkeypatch)
    out, way = both_ways(db, redis_client, data, caplog, monkeypatch)
    assert way == "copy"
    assert [r[4] for r in out["rows"]] == [
        'Hora cero !!!\n#Mayweather "vs" McGregor',
        "one line",
        "\r\n\r\nstarts blank, ends ,\r\n",
    ]


def test_records_across_block_boundaries_take_the_block_check(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ~3 MiB of three-line records: blocks (about 1 MiB, cut at line breaks) end inside one.
    lines = b"".join(
        b'%d,"line one of %d\nline two\nthree, ""quoted"""\n' % (i, i) for i in range(60_000)
    )
    no_checker(monkeypatch)
    out, way = both_ways(db, redis_client, b"n,text\n" + lines, caplog, monkeypatch)
    assert way == "copy"
    assert out["result"]["rows_valid"] == 60_000
    assert out["rows"][-1][2] == 'line one of 59999\nline two\nthree, "quoted"'


def test_rows_numbered_here_then_by_postgresql_run_on_without_a_gap(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # ~1.5 MiB of one-line rows (written with their `_row`), then a block with quoted line
    # breaks and everything after it (numbered by the identity column, from where the first
    # COPY stopped), plain lines again included.
    head = b"".join(b"%d,name %d\n" % (i, i) for i in range(120_000))
    tail = b'1,"two\nlines"\n' + b"".join(b"%d,after %d\n" % (i, i) for i in range(1000))
    numbered_from: list[int] = []
    numbered = plainrows.numbered

    def spy(block: bytes, first: int, delimiter: str) -> bytes:
        numbered_from.append(first)
        return numbered(block, first, delimiter)

    monkeypatch.setattr(plainrows, "numbered", spy)
    data = b"n,text\n" + head + tail
    out, way = both_ways(db, redis_client, data, caplog, monkeypatch, chunk=1 << 18)
    assert way == "copy"
    # Blocks of 256 KiB: the first several numbered here, the rest by PostgreSQL.
    assert len(numbered_from) >= 4 and numbered_from[0] == 1
    assert numbered_from[-1] < 120_000
    assert [r[0] for r in out["rows"]] == list(range(1, 121_002))
    assert out["rows"][119_999:120_002] == [
        (120_000, 119_999, "name 119999"),
        (120_001, 1, "two\nlines"),
        (120_002, 0, "after 0"),
    ]


def test_a_record_longer_than_the_field_limit_goes_the_python_way(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each line is short, the quoted field is not: `csv` refuses it, so must the fast path.
    monkeypatch.setattr(herald_settings, "UPLOAD_MAX_FIELD_BYTES", 1000)
    field = b"\n".join([b"x" * 50] * 40)  # 2,039 characters in lines of 50
    out, way = both_ways(db, redis_client, b'a,b\n1,"' + field + b'"\n2,y\n', caplog, monkeypatch)
    assert way != "copy"
    assert out["status"] == "failed"


@pytest.mark.parametrize(
    ("data", "days"),
    [
        (b"day,n\n1/2/2024,1\n12/31/1999,2\n02/29/2000,3\n2024-07-04,4\n", ["2024-01-02"]),
        (b"day;n\n31.12.1999;1\n1.2.2024;2\n29.02.2024;3\n13.01.2024;4\n", ["1999-12-31"]),
        (b"day,n\n13/1/2024,1\n1/2/2024,2\n", ["2024-01-13"]),
        (b"at,n\n1/2/2024 7:05,1\n12/31/2024 23:59:59.5,2\n1/3/2024,3\n", ["2024-01-02"]),
        (b"at;n\n31.12.1999 0:00;1\n2024-05-01T10:00:00Z;2\n", ["1999-12-31"]),
    ],
)
def test_month_or_day_first_dates_are_read_by_copy_under_their_datestyle(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    data: bytes,
    days: list[str],
) -> None:
    no_checker(monkeypatch)
    out, way = both_ways(db, redis_client, data, caplog, monkeypatch)
    assert way == "copy"
    first = out["rows"][0][1]
    assert (first.date() if isinstance(first, dt.datetime) else first).isoformat() == days[0]


def test_month_first_and_day_first_columns_in_one_file_go_the_python_way(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = b"us,eu\n12/31/2024,31/12/2024\n1/13/2024,13/1/2024\n"
    _, way = both_ways(db, redis_client, data, caplog, monkeypatch)
    assert way == "ineligible"


def test_quoted_empty_text_is_null_after_copy(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = b'a,b\n1,""\n2,x\n3,\n'
    out, way = both_ways(db, redis_client, data, caplog, monkeypatch)
    assert way == "copy"
    assert [r[2] for r in out["rows"]] == [None, "x", None]


@pytest.mark.parametrize(
    "data",
    [
        b"a,b\n1,x\n\n2,y\n",  # a blank line: csv skips it, COPY would fail on it
        b"a,b\n1,x\n2,y\n\n",
        b"a,b\n1,  \n2,y\n",  # all-whitespace text is NULL to Python
        b'a,b\n1,ab"c\n2,y\n',  # a stray quote is data to csv, a quote to COPY
        b'a,b\n1,"x\n\\.\ny"\n2,z\n',  # COPY's end marker inside a quoted field
        b'"a\nx",b\n1,2\n',  # the header spans two lines
        b"a,b,c\n1,2,3\n4,5\n",  # ragged
        b"a,b,c\n1,2,3\n4,5,6,,\n",  # padded with empty fields
        b"a,b\r\n1,x\n2,y\r\n",  # mixed line ends
        b"a,b\n1,x\nNA,y\n",  # a null token in an int column
        b"a,b\n1e5,x\n2.5,y\n",  # an exponent
        b"a,b\n0.1234567890123456,x\n",  # more digits than a double holds
        b'a,b\n"1234567890.1234567",x\n',  # the same, quoted
        b'a,b\n1,x\n"",y\n',  # a quoted empty typed cell: '' to COPY, NULL to Python
        b"a,b\n1/2/24,x\n12/31/24,y\n",  # two-digit years: the pivot, and its warning
        b"a,b\nt,x\nf,y\n",  # booleans spelled t/f
        b"a,b\n1,x\x00y\n",  # NUL: the file cannot be stored
        b"a\n1\n2\n",  # one column
        b"a;b\n1,5;x\n2,25;y\n",  # decimal comma
    ],
)
def test_files_copy_could_misread_go_the_python_way(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    data: bytes,
) -> None:
    _, way = both_ways(db, redis_client, data, caplog, monkeypatch)
    assert way != "copy"


@pytest.mark.parametrize("late", [b"007", b"2A004", b"1.5", b" 12"])
def test_a_misfit_after_the_first_mib_goes_the_python_way(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    late: bytes,
) -> None:
    # Typed int from the first MiB; the late cell makes it another type (text, float).
    data = b"code,name\n" + b"".join(b"%d,n%d\n" % (i, i) for i in range(120_000))
    out, way = both_ways(db, redis_client, data + late + b",last\n", caplog, monkeypatch)
    assert way == "python"
    assert out["result"]["rows_valid"] == 120_001


@pytest.mark.parametrize(
    "data",
    [
        b"a,b\n1,x\n2,y",  # no line break at the end
        b'a,b\n1,"say ""hi"""\n2,""""\n',  # quotes doubled inside quotes (RFC 4180)
        b"a,b\n",  # a header and nothing else
        b"a\tb\n1\t2.5\n",
        b"\xef\xbb\xbfa,b\n1,x\n",  # BOM
        "a,b\n1,Caf\u00e9\n".encode("utf-16"),
        "a,b\n1,Caf\u00e9 \u20ac\n".encode("cp1252"),
    ],
)
def test_copy_takes_these_as_they_are(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    data: bytes,
) -> None:
    _, way = both_ways(db, redis_client, data, caplog, monkeypatch)
    assert way == "copy"


def test_cr_line_ends_are_copy_s_too(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, way = both_ways(db, redis_client, b"a,b\r1,x\r2,y\r", caplog, monkeypatch)
    assert way == "copy"


def test_forced_types_with_misfits_go_the_python_way(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = b"a,b\n1,x\nabc,y\n3,z\n"
    out, way = both_ways(db, redis_client, data, caplog, monkeypatch, columns={"a": "int"})
    assert way == "python"
    assert out["result"]["rows_invalid"] == 1


CELLS = st.one_of(
    st.sampled_from(["", "0", "-3", "42", "007", "1.5", "2.50", ".5", "1e3", "NA", "true"]),
    st.sampled_from(["No", "2024-01-31", "2024-02-30", "2024-05-01T10:00:00Z", " ", '""']),
    st.text(alphabet='ab ,"\n\r\\.é', max_size=6),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.lists(st.lists(CELLS, min_size=3, max_size=3), min_size=1, max_size=6),
    st.booleans(),
)
def test_any_file_loads_the_same_either_way(
    db: psycopg.Connection,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    rows: list[list[str]],
    quote_all: bool,
) -> None:
    def field(cell: str) -> str:
        # Quote some cells as a spreadsheet would (or every one, as a database export does),
        # and write others raw to stress the readers.
        if cell.startswith('"') or cell in ("", " "):
            return cell
        if quote_all or any(ch in cell for ch in ',"\n\r'):
            return '"' + cell.replace('"', '""') + '"'
        return cell

    text = "x,y,z\n" + "".join(",".join(map(field, r)) + "\n" for r in rows)
    both_ways(db, redis_client, text.encode(), caplog, monkeypatch)


def test_sigkill_mid_copy_then_rerun_leaves_exactly_one_copy(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    # "oops" in the first MiB makes `amount` text: the whole file takes the pass-through,
    # which loads ~1M rows a second: enough rows that the kill lands mid-COPY.
    total = 400_000
    upload_id, _ = stage(db, large_file(total))
    kill_worker_mid_load(db, redis_client, upload_id)
    assert upload_row(db, upload_id)["status"] == "processing"
    assert not table_exists(db, upload_id)
    assert chunk_count(db, upload_id) > 0
    run_import(redis_client, upload_id)  # the retry
    row = upload_row(db, upload_id)
    assert row["status"] == "completed"
    assert (row["result"]["rows_valid"], row["result"]["rows_invalid"]) == (total, 0)
    rows = table_rows(db, upload_id)
    assert [r[0] for r in rows] == list(range(1, total + 1))
    assert rows[-1][1:3] == (total - 1, f"name {total - 1}")
    # Past 100,000 rows, typed columns' distinct counts are estimates, text ones exact.
    columns = {c["name"]: c for c in row["result"]["columns"]}
    assert columns["id"]["distinct_approximate"] is True
    assert columns["id"]["distinct"] > 0.9 * total
    assert (columns["name"]["distinct"], columns["name"]["distinct_approximate"]) == (total, False)
