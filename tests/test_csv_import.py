"""The import job, the RQ way (SimpleWorker burst): generated files for each quirk, real
files end to end, the event sequence, and exactly-once under re-runs and SIGKILL."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from core import jobkinds, settings
from tests.support.asgi import running_app, token
from tests.support.shared import CSV_DIR
from tests.support.uploads import (
    chunk_count,
    error_rows,
    run_import,
    stage,
    table_exists,
    table_rows,
    upload_events,
    upload_row,
    user_events,
)

DATA = CSV_DIR
ROOT = Path(__file__).resolve().parent.parent


def imported(
    db: psycopg.Connection, client: redis.Redis, data: bytes, **kwargs: Any
) -> tuple[str, dict[str, Any]]:
    upload_id, _ = stage(db, data, **kwargs)
    run_import(client, upload_id)
    return upload_id, upload_row(db, upload_id)


def types_of(row: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["type"] for c in row["result"]["columns"]}


def counts(row: dict[str, Any]) -> tuple[int, int, int]:
    r = row["result"]
    return r["rows_total"], r["rows_valid"], r["rows_invalid"]


TEXT = "name,city\nZoë,Köln\nJosé,São Paulo\n"


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (TEXT.encode(), "utf-8"),
        (TEXT.encode("utf-8-sig"), "utf-8-sig"),
        (TEXT.encode("latin-1"), "latin-1"),
        ("name,city\nCafé €,“Köln”\nJosé,São Paulo\n".encode("cp1252"), "cp1252"),
        (TEXT.encode("utf-16"), "utf-16"),
    ],
    ids=["utf8", "utf8-bom", "latin1", "cp1252", "utf16-bom"],
)
def test_encodings(
    db: psycopg.Connection, redis_client: redis.Redis, data: bytes, encoding: str
) -> None:
    upload_id, row = imported(db, redis_client, data)
    assert row["status"] == "completed"
    assert row["result"]["format"]["encoding"] == encoding
    text = data.decode(encoding)
    expected = [(i, *line.split(",")) for i, line in enumerate(text.splitlines()[1:], 1)]
    assert table_rows(db, upload_id) == expected
    assert [c["name"] for c in row["result"]["columns"]] == ["name", "city"]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiters(db: psycopg.Connection, redis_client: redis.Redis, delimiter: str) -> None:
    lines = ["id,label,ratio", *(f"{i},item {i},{i / 4}" for i in range(1, 6))]
    data = "\n".join(line.replace(",", delimiter) for line in lines).encode()
    upload_id, row = imported(db, redis_client, data)
    assert row["result"]["format"]["delimiter"] == delimiter
    assert types_of(row) == {"id": "int", "label": "text", "ratio": "float"}
    assert counts(row) == (5, 5, 0)
    assert table_rows(db, upload_id)[4] == (5, 5, "item 5", 1.25)


def test_quoted_newlines_quotes_and_crlf(db: psycopg.Connection, redis_client: redis.Redis) -> None:
    data = (
        b'id,note\r\n1,"first line\r\nsecond line"\r\n2,"say ""hi"", then go"\r\n'
        b'3,"a\nb\rc"\r\n4,plain\r\n'
    )
    upload_id, row = imported(db, redis_client, data)
    assert counts(row) == (4, 4, 0)
    assert [r[2] for r in table_rows(db, upload_id)] == [
        "first line\r\nsecond line",
        'say "hi", then go',
        "a\nb\rc",
        "plain",
    ]


def test_ragged_rows_are_rejected_with_a_reason(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    data = b"a,b,c\n1,2,3\n4,5\n6,7,8,9\n10,11,12,,\n"
    upload_id, row = imported(db, redis_client, data)
    assert row["status"] == "completed"
    assert counts(row) == (4, 2, 2)
    assert [r[0] for r in table_rows(db, upload_id)] == [1, 4]  # trailing ",," is padding
    assert error_rows(db, upload_id) == [
        (2, "", "4,5", "too few fields: expected 3, got 2"),
        (3, "", "6,7,8,9", "too many fields: expected 3, got 4"),
    ]


def test_types_come_from_every_value(db: psycopg.Connection, redis_client: redis.Redis) -> None:
    lines = ["id,amount,when"] + [f"{i},{i * 10},2024-01-{i % 28 + 1:02d}" for i in range(1, 41)]
    lines[17] = "17,abc,2024-01-18"
    lines[30] = "30,300,someday"
    upload_id, row = imported(db, redis_client, "\n".join(lines).encode())
    # One word makes a column text: nothing rejected, nothing changed.
    assert types_of(row) == {"id": "int", "amount": "text", "when": "text"}
    assert counts(row) == (40, 40, 0)
    assert error_rows(db, upload_id) == []
    assert table_rows(db, upload_id)[16] == (17, 17, "abc", "2024-01-18")


def test_forced_types_reject_the_odd_cell(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    lines = ["id,amount,when"] + [f"{i},{i * 10},2024-01-{i % 28 + 1:02d}" for i in range(1, 41)]
    lines[17] = "17,abc,2024-01-18"
    lines[30] = "30,300,someday"
    columns = {"amount": "int", "when": "date"}
    upload_id, row = imported(db, redis_client, "\n".join(lines).encode(), columns=columns)
    assert types_of(row) == {"id": "int", "amount": "int", "when": "date"}
    assert counts(row) == (40, 38, 2)
    assert error_rows(db, upload_id) == [
        (17, "amount", "abc", "not an integer"),
        (30, "when", "someday", "not a date"),
    ]
    amount = row["result"]["columns"][1]
    assert (amount["invalid"], amount["nulls"], amount["min"], amount["max"]) == (1, 0, 10, 400)
    assert len(table_rows(db, upload_id)) == 38


def postal_codes(rows: int) -> bytes:
    """A semicolon file like the French postal-code list: its first MiB holds codes without
    a leading zero only; "01400" and Corsica's "2A004" come after."""
    out = io.StringIO()
    out.write("code_postal;code_commune;nom;ligne\n")
    for i in range(rows):
        out.write(f"{10000 + i % 80000};{20000 + i % 70000};Commune {i};{i}\n")
    out.write("01400;01001;L'Abergement-Clémenciat;x\n20167;2A004;Ajaccio;y\n")
    return out.getvalue().encode()


def test_identifiers_after_the_head_keep_their_text(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    data = postal_codes(40_000)
    assert data.index(b"01400") > 1024 * 1024  # past the head the types are guessed from
    upload_id, row = imported(db, redis_client, data)
    assert row["status"] == "completed"
    assert types_of(row) == {
        "code_postal": "text",
        "code_commune": "text",
        "nom": "text",
        "ligne": "text",
    }
    assert counts(row) == (40_002, 40_002, 0)
    rows = table_rows(db, upload_id)
    assert rows[-2][1:3] == ("01400", "01001") and rows[-1][1:3] == ("20167", "2A004")
    assert rows[0][1:3] == ("10000", "20000")
    # The misguess cost a second reading, not a step back in the progress bar.
    percents = [
        d["percent"] for e, d in upload_events(redis_client, upload_id) if e == "upload.progress"
    ]
    assert percents == sorted(percents) and percents[-1] == 100


def test_a_column_empty_in_the_head_is_typed_from_later_values(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    lines = [f"{i},,x" for i in range(60_000)] + ["60000,1.5,y", "60001,2,z"]
    upload_id, row = imported(db, redis_client, ("n,late,t\n" + "\n".join(lines)).encode())
    assert types_of(row) == {"n": "int", "late": "float", "t": "text"}
    assert table_rows(db, upload_id)[-2:] == [(60001, 60000, 1.5, "y"), (60002, 60001, 2.0, "z")]


def test_two_digit_years_are_read_with_a_warning(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    data = b"date,year\n9/24/06,1906\n1/9/78,1978\n12/1/2001,2001\n"
    upload_id, row = imported(db, redis_client, data)
    assert types_of(row)["date"] == "date"
    assert [r[1] for r in table_rows(db, upload_id)] == [
        dt.date(2006, 9, 24),
        dt.date(1978, 1, 9),
        dt.date(2001, 12, 1),
    ]
    (warning,) = row["result"]["warnings"]
    assert warning["code"] == "two_digit_years"
    assert warning["details"] == {"column": "date", "cells": 2, "pivot": 69}
    assert "1969-1999" in warning["message"]


def test_a_multi_table_report_says_why_nothing_loaded(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    # A record-type column and several header rows of different widths, as report
    # generators write them: nothing matches the first header's width.
    data = (
        b"H,report,2024,final,v2,x\n"
        b"T,region,north,south,east,west,total,share\n"
        b"D,sales,1,2,3,4,10,0.5\n"
        b"T,region,north,south,east,west,total,share,note,x,y,z\n"
        b"D,costs,1,2,3,4,10,0.5,a,b,c,d\n"
    )
    _, row = imported(db, redis_client, data)
    assert row["status"] == "completed"
    assert counts(row) == (4, 0, 4)
    codes = [(w["code"], w["details"]) for w in row["result"]["warnings"]]
    assert ("no_rows_loaded", {"header_fields": 6, "row_fields": [8, 12]}) in codes
    message = next(w["message"] for w in row["result"]["warnings"] if w["code"] == "no_rows_loaded")
    assert "8-12 fields, the header 6" in message and "multi-table report" in message


def test_empty_cells_are_nulls(db: psycopg.Connection, redis_client: redis.Redis) -> None:
    data = b"n,x,t\n1,,a\n,2,\n3,NA,c\n4,5,d\n"
    upload_id, row = imported(db, redis_client, data)
    assert counts(row) == (4, 4, 0)
    assert [(c["name"], c["nulls"]) for c in row["result"]["columns"]] == [
        ("n", 1),
        ("x", 2),
        ("t", 1),
    ]
    assert table_rows(db, upload_id) == [
        (1, 1, None, "a"),
        (2, None, 2, None),
        (3, 3, None, "c"),
        (4, 4, 5, "d"),
    ]


def test_dates_in_several_formats(db: psycopg.Connection, redis_client: redis.Redis) -> None:
    data = (
        b"iso,us,eu_dot,eu_slash,long,stamp\n"
        b'2024-01-31,01/31/2024,31.01.2024,31/01/2024,"Jan 31, 2024",2024-01-31T10:20:30Z\n'
        b'2024-02-15,02/15/2024,15.02.2024,15/02/2024,"Feb 15, 2024",2024-02-15 08:00:00+02:00\n'
    )
    upload_id, row = imported(db, redis_client, data)
    assert types_of(row) == {
        "iso": "date",
        "us": "date",
        "eu_dot": "date",
        "eu_slash": "date",
        "long": "date",
        "stamp": "datetime",
    }
    jan, feb = dt.date(2024, 1, 31), dt.date(2024, 2, 15)
    utc = dt.UTC
    assert table_rows(db, upload_id) == [
        (1, jan, jan, jan, jan, jan, dt.datetime(2024, 1, 31, 10, 20, 30, tzinfo=utc)),
        (2, feb, feb, feb, feb, feb, dt.datetime(2024, 2, 15, 6, 0, tzinfo=utc)),
    ]
    # Min, max and mean of a datetime column all name their zone (API.md).
    stamp = row["result"]["columns"][-1]
    assert [dt.datetime.fromisoformat(stamp[k]).tzinfo for k in ("min", "max", "mean")] == [utc] * 3


def test_header_only(db: psycopg.Connection, redis_client: redis.Redis) -> None:
    upload_id, row = imported(db, redis_client, b"a,b,c\n")
    assert row["status"] == "completed"
    assert counts(row) == (0, 0, 0)
    assert row["result"]["data_quality_score"] == 100.0
    assert table_exists(db, upload_id) and table_rows(db, upload_id) == []
    assert [w["code"] for w in row["result"]["warnings"]] == ["no_data_rows"]


def test_very_wide(db: psycopg.Connection, redis_client: redis.Redis) -> None:
    width = 1200  # more fixed-width values than one heap tuple holds: the jsonb layout
    header = ",".join(f"c{i}" for i in range(width))
    body = "\n".join(",".join(str(r * i) for i in range(width)) for r in range(1, 4))
    upload_id, row = imported(db, redis_client, f"{header}\n{body}\n".encode())
    assert row["status"] == "completed"
    assert counts(row) == (3, 3, 0)
    assert row["result"]["storage"] == "jsonb"
    rows = table_rows(db, upload_id)
    assert rows[2][1]["c1199"] == 3 * 1199 and len(rows[2][1]) == width


def test_too_many_columns(db: psycopg.Connection, redis_client: redis.Redis) -> None:
    header = ",".join(f"c{i}" for i in range(settings.UPLOAD_MAX_COLUMNS + 1))
    upload_id, row = imported(db, redis_client, f"{header}\n".encode())
    assert row["status"] == "failed"
    assert row["error"]["code"] == "too_many_columns"
    assert not table_exists(db, upload_id)


@pytest.mark.parametrize(
    ("data", "code", "stages"),
    [
        (bytes(range(256)) * 64, "not_text", ["validating"]),
        # Found while streaming rows, after the format was read from the first MiB.
        (
            b"a,b\n" + b"x" * (10 * 1024 * 1024) + b",y\n",
            "line_too_long",
            ["validating", "processing"],
        ),
        (b"x" * (10 * 1024 * 1024), "header_too_large", ["validating"]),
        (b"   \n\n", "empty", ["validating"]),
    ],
    ids=["binary", "10mb-line-after-header", "10mb-single-line", "blank"],
)
def test_unreadable_files_fail_with_a_code(
    db: psycopg.Connection, redis_client: redis.Redis, data: bytes, code: str, stages: list[str]
) -> None:
    upload_id, user = stage(db, data)
    run_import(redis_client, upload_id)
    row = upload_row(db, upload_id)
    assert row["status"] == "failed"
    assert row["error"]["code"] == code
    assert not table_exists(db, upload_id)
    assert chunk_count(db, upload_id) == 0
    names = [(e, d.get("status") or d.get("code")) for e, d in user_events(redis_client, user)]
    assert names == [
        *(("upload.status", s) for s in stages),
        ("upload.status", "failed"),
        ("upload.error", code),
    ]


def test_nul_after_the_sample_fails_cleanly(
    db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Past the first MiB, the binary check has been passed; PostgreSQL text cannot hold NUL.
    monkeypatch.setattr(settings, "UPLOAD_BATCH_ROWS", 1000)
    data = b"a,b\n" + b"1,x\n" * 300_000 + b"2,a\x00b\n" + b"3,y\n" * 10
    upload_id, row = imported(db, redis_client, data)
    assert row["status"] == "failed"
    assert row["error"]["code"] == "unloadable_row"
    assert not table_exists(db, upload_id)
    assert error_rows(db, upload_id) == []


def test_columns_mapping_overrides_inference(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    data = b"zip,amount\n02134,1\n10001,2\n"
    upload_id, row = imported(db, redis_client, data, columns={"amount": "float", "zip": "int"})
    assert types_of(row) == {"zip": "int", "amount": "float"}
    assert table_rows(db, upload_id) == [(1, 2134, 1.0), (2, 10001, 2.0)]
    _, bad = imported(db, redis_client, data, columns={"nope": "int"})
    assert bad["status"] == "failed" and bad["error"]["code"] == "invalid_columns"


# The expected outcome of every shared file (issue 14): status, rows loaded / rejected,
# rejected cells recorded, the types of the named columns, and the warnings' codes.
Outcome = tuple[str, str, int, int, int, dict[str, str], list[str]]
OUTCOMES: dict[str, Outcome] = {
    "538_antiquities_act_dates_thousands.csv": (
        "utf-8",
        ",",
        344,
        0,
        0,
        # "1930" among the m/d/yy dates, "408,301 sq. miles" among the acres.
        {"date": "text", "year": "int", "acres_affected": "text"},
        [],
    ),
    "538_bechdel_movies_mixed.csv": (
        "utf-8",
        ",",
        1794,
        0,
        0,
        {"year": "int", "domgross": "int", "budget_2013$": "int", "binary": "text"},
        [],
    ),
    "538_cabinet_turnover_bom.csv": (
        "utf-8-sig",
        ",",
        379,
        0,
        0,
        # "Aug. 1981", "Reagan admin", "977 combined": no value is dropped any more.
        {"start_date": "text", "end_date": "text", "length": "text", "departure_day": "int"},
        [],
    ),
    "538_congress_data_aging.csv": (
        "utf-8",
        ",",
        29120,
        0,
        0,
        {"start_date": "date", "birthday": "date", "age_years": "float", "party_code": "int"},
        [],
    ),
    "538_mayweather_mcgregor_tweets.csv": (
        "utf-8",
        ",",
        12118,
        0,
        0,
        {"created_at": "datetime", "emojis": "bool", "id": "int", "text": "text"},
        [],
    ),
    # 0.857 among whole numbers: float for the whole column, so all 54 rows load.
    "538_nutrition_very_wide.csv": ("utf-8", ",", 54, 0, 0, {"ID": "int"}, []),
    "538_poll_of_pollsters_cr_only.tsv": (
        "utf-8",
        "\t",
        27,
        0,
        0,
        {"Do you release raw data to the Roper Archives?": "bool"},
        [],
    ),
    "538_pollster_raw_polls_2014.tsv": (
        "utf-8",
        "\t",
        6614,
        0,
        0,
        {"polldate": "date", "cand1_pct": "float", "margin_actual": "float", "year": "int"},
        [],
    ),
    "538_state_polls_2024_crlf.csv": (
        "utf-8",
        ",",
        1700,
        0,
        0,
        {"start_date": "date", "2024_pollster_rating": "float", "tracking": "bool"},
        ["two_digit_years", "two_digit_years"],
    ),
    "csvkit_bad_ragged_fixture.csv": (
        "utf-8",
        ",",
        1,
        2,
        2,
        {"column_a": "int", "column_b": "text", "column_c": "int"},
        [],
    ),
    "duckdb_fdic_banklist_cp1252.csv": (
        "cp1252",
        ",",
        568,
        0,
        0,
        {"Closing Date": "date", "Cert": "int", "Fund": "int"},
        ["two_digit_years"],
    ),
    "duckdb_header_only_bom.csv": (
        "utf-8-sig",
        ",",
        0,
        0,
        0,
        {"partnerName": "text"},
        ["no_data_rows"],
    ),
    "plotly_gapminder_pipe_decimal_comma.csv": (
        "utf-8",
        "|",
        1704,
        0,
        0,
        {"lifeExp": "float", "pop": "int", "year": "int"},
        [],
    ),
    "plotly_olympic_winners_bom_dmy.csv": (
        "utf-8-sig",
        ",",
        8618,
        0,
        0,
        {"date": "date", "age": "int"},
        [],
    ),
    "plotly_temp_data_header_short.csv": (
        "utf-8",
        ",",
        109,
        0,
        0,
        # "@!#F" among the temperatures.
        {"column_1": "int", "time": "date", "temp": "text", "column_4": "text"},
        ["header_shorter_than_rows"],
    ),
    "plotly_volcano_db_latin1.csv": (
        "latin-1",
        ",",
        1571,
        0,
        0,
        {"Latitude": "float", "Elev": "int", "Number": "text"},
        [],
    ),
}


def test_every_shared_file_has_an_outcome() -> None:
    assert {p.name for p in DATA.iterdir() if p.name != "SOURCES.tsv"} == set(OUTCOMES)


def original_rows(data: bytes, encoding: str, delimiter: str) -> list[list[str]]:
    """The file's data rows by an independent reader: Python's csv module, whole text."""
    text = data.decode(encoding)
    return [r for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if r][1:]


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_shared_file_outcome_and_round_trip(
    db: psycopg.Connection, redis_client: redis.Redis, name: str
) -> None:
    encoding, delimiter, valid, invalid, errors, types, warnings = OUTCOMES[name]
    data = (DATA / name).read_bytes()
    originals = original_rows(data, encoding, delimiter)
    upload_id, row = imported(db, redis_client, data)
    assert row["status"] == "completed", row["error"]
    result = row["result"]
    assert result["format"] == {"encoding": encoding, "delimiter": delimiter}
    assert counts(row) == (len(originals), valid, invalid)
    assert len(error_rows(db, upload_id)) == errors
    assert {k: v for k, v in types_of(row).items() if k in types} == types
    assert [w["code"] for w in result["warnings"]] == warnings
    # Every loaded cell reads back as its original text, up to its type's canonical form.
    columns = result["columns"]
    loaded = table_rows(db, upload_id)
    assert len(loaded) == valid
    for stored in loaded:
        fields = originals[stored[0] - 1]
        fields = fields + [""] * (len(columns) - len(fields))  # the short-header case
        if result["storage"] == "jsonb":
            values = [stored[1][c["name"]] for c in columns]
        else:
            values = list(stored[1:])
        for col, text, value in zip(columns, fields, values, strict=False):
            assert same_value(text, value, col["type"]), (stored[0], col["name"], text, value)


NULLS = {"", "na", "n/a", "#n/a", "null", "none", "nan", "-", "--", "nil", "nat", "n.a."}
TRUE, FALSE = {"true", "t", "yes", "y"}, {"false", "f", "no", "n"}


def same_value(text: str, value: Any, col_type: str) -> bool:
    """Is `value` what `text` says, in `col_type`'s canonical form? Independent of the
    importer's parsers: number spellings are compared as exact decimals, dates by parts."""
    t = text.strip()
    if col_type == "text":
        return value == text if t else value is None
    if t.lower() in NULLS:
        return value is None
    if col_type == "bool":
        return value is (t.lower() in TRUE) and t.lower() in TRUE | FALSE
    if col_type in ("int", "float"):
        plain = t.replace("\u00a0", "").replace("\u202f", "").replace(" ", "").lstrip("+")
        if re.match(r"-?0[0-9]", plain):
            return False  # an identifier's leading zero would have been lost
        spellings = {plain.replace(",", ""), plain.replace(".", "").replace(",", ".")}
        got = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
        return any(_decimal(s) == got for s in spellings)
    if col_type == "date":
        day = dt.date.fromisoformat(value) if isinstance(value, str) else value
        return _date_parts(t, day)
    stamp = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ].*", t):
        written = dt.datetime.fromisoformat(t.replace("Z", "+00:00"))
        if written.tzinfo is None:
            written = written.replace(tzinfo=dt.UTC)
        return bool(written == stamp)
    return _date_parts(t, stamp.date())


def _decimal(text: str) -> Decimal | None:
    try:
        return Decimal(text)
    except ArithmeticError:
        return None


MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]


def _date_parts(text: str, day: dt.date) -> bool:
    numbers = [int(n) for n in re.findall(r"[0-9]+", text)]
    month = day.month in numbers or MONTHS[day.month - 1] in text.lower()
    year = day.year in numbers or any(
        len(n) == 2 and int(n) == day.year % 100 for n in re.findall(r"[0-9]+", text)
    )
    return day.day in numbers and month and year


def test_event_sequence_and_rerun_is_a_no_op(
    db: psycopg.Connection, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "UPLOAD_BATCH_ROWS", 500)
    monkeypatch.setattr(settings, "UPLOAD_PROGRESS_INTERVAL_SECONDS", 1e-9)
    data = "a,b\n" + "".join(f"{i},v{i}\n" for i in range(5000))
    upload_id, user = stage(db, data.encode(), chunk=4096)
    run_import(redis_client, upload_id)
    seen = user_events(redis_client, user)
    assert seen == upload_events(redis_client, upload_id)  # both streams got every event
    kinds = [e if e != "upload.status" else d["status"] for e, d in seen]
    assert kinds[:2] == ["validating", "processing"]
    assert kinds[-2:] == ["completed", "upload.done"]
    progress = [d for e, d in seen if e == "upload.progress"]
    assert len(progress) >= 5 and kinds[-3] == "upload.progress"
    assert progress[-1] == {"upload_id": upload_id, "percent": 100, "rows_processed": 5000}
    assert [p["percent"] for p in progress] == sorted(p["percent"] for p in progress)
    assert all(p["percent"] < 100 for p in progress[:-1])
    row = upload_row(db, upload_id)
    assert seen[-1][1] == {"upload_id": upload_id, "result": row["result"]}
    assert (row["progress_percent"], row["rows_processed"]) == (100, 5000)
    # A re-run (RQ retry, or by hand) finds it completed: same rows, no new events.
    job = run_import(redis_client, upload_id)
    assert job.return_value() is None
    assert len(table_rows(db, upload_id)) == 5000
    assert len(user_events(redis_client, user)) == len(seen)


# "oops" every 1000 rows would make `amount` text; forced to int, those rows are rejected.
FORCED = {"amount": "int"}


def large_file(rows: int) -> bytes:
    out = io.StringIO()
    out.write("id,name,amount,day,flag\n")
    for i in range(rows):
        bad = "oops" if i % 1000 == 999 else str(i * 3)
        out.write(f"{i},name {i},{bad},2024-{i % 12 + 1:02d}-{i % 28 + 1:02d},{i % 2 == 0}\n")
    return out.getvalue().encode()


def start_worker() -> subprocess.Popen[bytes]:
    """A real worker process (SimpleWorker, burst) on the upload queue."""
    code = (
        "import redis\n"
        "from rq import Queue, SimpleWorker\n"
        "from core import settings\n"
        "c = redis.Redis.from_url(settings.REDIS_URL)\n"
        "SimpleWorker([Queue(settings.UPLOAD_QUEUE, connection=c)], connection=c)"
        ".work(burst=True)\n"
        "c.close()\n"
    )
    env = {**os.environ, "UPLOAD_PROGRESS_INTERVAL_SECONDS": "0.01", "UPLOAD_BATCH_ROWS": "2000"}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env)


def kill_worker_mid_load(db: psycopg.Connection, redis_client: redis.Redis, upload_id: str) -> None:
    """Enqueue the import, start a worker, SIGKILL it once rows are loading."""
    enqueue(redis_client, upload_id)
    proc = start_worker()
    try:
        wait_until_loading(db, upload_id, proc)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def wait_until_loading(
    db: psycopg.Connection, upload_id: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        row = upload_row(db, upload_id)
        if row["status"] == "processing" and row["rows_processed"] > 0:
            return
        time.sleep(0.01)
    raise AssertionError(f"the worker never got going: {upload_row(db, upload_id)['status']}")


def enqueue(client: redis.Redis, upload_id: str) -> None:
    from rq import Queue

    Queue(settings.UPLOAD_QUEUE, connection=client).enqueue(jobkinds.CSV_IMPORT.target, upload_id)


def test_sigkill_mid_load_then_rerun_leaves_exactly_one_copy(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    total = 200_000
    upload_id, _ = stage(db, large_file(total), columns=FORCED)
    kill_worker_mid_load(db, redis_client, upload_id)
    # Killed mid-load: nothing of it is visible, and the file is still there to re-run.
    assert upload_row(db, upload_id)["status"] == "processing"
    assert not table_exists(db, upload_id)
    assert error_rows(db, upload_id) == []
    assert chunk_count(db, upload_id) > 0
    run_import(redis_client, upload_id)  # the retry
    row = upload_row(db, upload_id)
    assert row["status"] == "completed"
    assert counts(row) == (total, total - total // 1000, total // 1000)
    rows = table_rows(db, upload_id)
    assert len(rows) == len({r[0] for r in rows}) == total - total // 1000
    assert len(error_rows(db, upload_id)) == total // 1000
    run_import(redis_client, upload_id)  # and once more, by hand
    assert len(table_rows(db, upload_id)) == total - total // 1000


def test_postgres_connection_lost_mid_load_is_retried(
    db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    from rq import Queue, Retry

    total = 200_000
    upload_id, _ = stage(db, large_file(total), columns=FORCED)
    Queue(settings.UPLOAD_QUEUE, connection=redis_client).enqueue(
        jobkinds.CSV_IMPORT.target, upload_id, retry=Retry(max=1)
    )
    proc = start_worker()
    try:
        wait_until_loading(db, upload_id, proc)
        # What a PostgreSQL restart does to the job: both its sessions end mid-transaction.
        ended = db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (f"herald-csv-import {upload_id}",),
        ).fetchone()
        assert ended == (2,)
        proc.wait(timeout=120)  # the burst worker runs the retry, then exits
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    row = upload_row(db, upload_id)
    assert row["status"] == "completed"
    assert counts(row) == (total, total - total // 1000, total // 1000)
    rows = table_rows(db, upload_id)
    assert len(rows) == len({r[0] for r in rows}) == total - total // 1000
    assert len(error_rows(db, upload_id)) == total // 1000


@pytest.mark.anyio
async def test_cancel_a_large_import(db: psycopg.Connection, redis_client: redis.Redis) -> None:
    # Forced types with misfits take the Python path, slow enough to be cancelled part-way
    # (the pass-through loads this file in a fraction of a second).
    upload_id, user = stage(db, large_file(300_000), columns=FORCED, org="org-cancel")
    enqueue(redis_client, upload_id)
    proc = start_worker()
    try:
        wait_until_loading(db, upload_id, proc)
        async with running_app() as app:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                auth = {"authorization": f"Bearer {token(user, org='org-cancel')}"}
                response = await client.post(f"/uploads/{upload_id}/cancel", headers=auth)
        assert response.status_code == 200
        assert response.json()["status"] == "cancelled"
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    row = upload_row(db, upload_id)
    assert row["status"] == "cancelled"
    assert 0 < row["rows_processed"] < 300_000  # it stopped part-way
    assert not table_exists(db, upload_id)
    assert error_rows(db, upload_id) == []
    assert chunk_count(db, upload_id) == 0
    statuses = [
        d["status"]
        for e, d in user_events(redis_client, user, "org-cancel")
        if e == "upload.status"
    ]
    assert statuses == ["validating", "processing", "cancelled"]
