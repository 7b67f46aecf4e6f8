"""The pass-through's block regex (jobs.csvimport.plainrows): whatever block it accepts, `csv`
reads as whole rows of the header's width that the Checker accepts, row for row; blocks of
plain cells do match (so the fast path is taken); a miss costs one scan."""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from decimal import Decimal

import pytest
import re2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.columntypes import ColumnType
from jobs.csvimport import celltypes, passthrough, plainrows
from jobs.csvimport.celltypes import ColumnSpec
from jobs.csvimport.columntypes import DAY_MONTH_ORDERS, RECORDS

# The columns the pass-through takes (passthrough.eligible).
ELIGIBLE = [
    ColumnSpec("i", "i", ColumnType.INT),
    ColumnSpec("f", "f", ColumnType.FLOAT),
    ColumnSpec("b", "b", ColumnType.BOOL),
    ColumnSpec("d", "d", ColumnType.DATE, "%Y-%m-%d"),
    ColumnSpec("t", "t", ColumnType.DATETIME),
    ColumnSpec("s", "s", ColumnType.TEXT),
    ColumnSpec("u", "u", ColumnType.TEXT, undecided=True),
]
PLAIN_CELLS = {
    ColumnType.INT: st.sampled_from(["", "0", "-3", "+42", "123456789012345678"]),
    ColumnType.FLOAT: st.sampled_from(
        [
            *["", "0.5", "-12.25", ".5", "3.", "12345678901.234", "-1234567890123"],
            *["12345678901234.", "53.7330595482546", "-0.000012345678901234", "0.000000000000000"],
        ]
    ),
    ColumnType.BOOL: st.sampled_from(["", "true", "False", "YES", "no"]),
    ColumnType.DATE: st.dates().map(dt.date.isoformat),
    ColumnType.DATETIME: st.sampled_from(
        ["2024-02-29T23:59:59Z", "1999-12-31 00:00:00+05:30", "0001-01-01T00:00:00", "2024-05-01"]
    ),
    ColumnType.TEXT: st.sampled_from(
        [
            "",
            "x",
            " lead",
            "trail ",
            '"quoted, comma"',
            "é ü",
            "\u3000東京",
            '" x "',
            '"say ""hi"""',
        ],
    ),
}
AWKWARD = st.text(alphabet='09.-+:TZ ae,;"\t\r\n\xa0\u3000', max_size=8) | st.sampled_from(
    [
        *["007", "1e3", "2023-02-29", "2024-04-31", "0000-01-01", "1234567890123456", '""'],
        *["NA", "123456789012345.", "-12345678901234", "-.12345678901234", "0001-01-01T00:00Z"],
        *["0001-01-01T00:00:00+15:59", "9999-12-31 23:00:00-01:00", "\u3000", " \xa0 ", '" "'],
        *['"1"', '"2.5"', '"true"', '"2024-01-31"', '"2024-05-01 10:00:00Z"', '"1e3"', '" 1"'],
        *["1234567890123456", "0.1234567890123456", "0.00000000000000001"],
    ]
)


def quoted_sometimes(cell: str) -> st.SearchStrategy[str]:
    # Quoted, a typed cell is the same text to both readers (but "" is not).
    return (
        st.sampled_from([cell, f'"{cell}"']) if cell and not cell.startswith('"') else st.just(cell)
    )


def csv_rows(block: str, delimiter: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(block, newline=""), delimiter=delimiter))


@pytest.mark.parametrize("multiline", [False, True])
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.lists(st.sampled_from(ELIGIBLE), min_size=2, max_size=4),
    st.sampled_from(sorted(plainrows.DELIMITERS)),
    st.data(),
)
def test_an_accepted_block_is_whole_rows_the_checker_accepts(
    multiline: bool, columns: list[ColumnSpec], delimiter: str, data: st.DataObject
) -> None:
    # Mostly plain cells, so that many blocks match; awkward ones where the two readers differ.
    cells = st.tuples(*((PLAIN_CELLS[c.type] | AWKWARD).flatmap(quoted_sometimes) for c in columns))
    lines = data.draw(st.lists(cells, min_size=1, max_size=5))
    ends = st.sampled_from(["\n", "\r\n"])
    block = "".join(delimiter.join(row) + data.draw(ends) for row in lines)
    matches = plainrows.block_matcher(columns, delimiter, multiline)
    assert matches is not None
    if not matches(block.encode()):
        return
    rows = csv_rows(block, delimiter)
    if multiline:  # rows told apart by the quotes before each line break
        end, count, longest = plainrows.whole_records(block)
        assert (end, count) == (len(block), len(rows))
        assert longest >= max(len(v) for row in rows for v in row)
    else:
        assert len(rows) == plainrows.rows_in(block.encode())
    # The Checker refuses any quote in a text cell: it cannot tell a doubled one inside
    # quotes, which both readers read as one quote and the regex takes, from a stray one.
    undoubled = [
        [v.replace('"', "'") if c.type == ColumnType.TEXT else v for c, v in zip(columns, row)]
        for row in rows
    ]
    passthrough.Checker(columns).check(undoubled)  # raises Unsuitable if it would not take them


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(ELIGIBLE[:-1]), min_size=2, max_size=6),
    st.sampled_from(sorted(plainrows.DELIMITERS)),
    st.data(),
)
def test_plain_rows_match(columns: list[ColumnSpec], delimiter: str, data: st.DataObject) -> None:
    typed = [
        PLAIN_CELLS[c.type]
        if c.type == ColumnType.TEXT
        else PLAIN_CELLS[c.type].flatmap(quoted_sometimes)
        for c in columns
    ]
    rows = data.draw(st.lists(st.tuples(*typed), min_size=1))
    ending = data.draw(st.sampled_from(["\n", "\r\n", ""]))
    lines = [delimiter.join(cells) for cells in rows]
    block = "\n".join(lines) + ending
    matches = plainrows.block_matcher(columns, delimiter)
    assert matches is not None and matches(block.encode())
    assert plainrows.rows_in(block.encode()) == len(csv_rows(block, delimiter)) == len(rows)
    # Numbered for the pass-through's COPY: each row gains its number as a first field.
    first = data.draw(st.integers(1, 10**15))
    numbered = plainrows.numbered(block.encode(), first, delimiter).decode()
    assert csv_rows(numbered, delimiter) == [
        [str(first + i), *row] for i, row in enumerate(csv_rows(block, delimiter))
    ]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(ELIGIBLE[:-1]), min_size=2, max_size=5),
    st.sampled_from(sorted(plainrows.DELIMITERS)),
    st.data(),
)
def test_rows_with_line_breaks_in_quoted_text_match_the_multiline_form(
    columns: list[ColumnSpec], delimiter: str, data: st.DataObject
) -> None:
    spanning = st.sampled_from(['"first\nsecond"', '"a\r\nb ""c"""', '"\n x"', '"é\n\n"'])
    typed = [
        PLAIN_CELLS[c.type] | spanning if c.type == ColumnType.TEXT else PLAIN_CELLS[c.type]
        for c in columns
    ]
    rows = data.draw(st.lists(st.tuples(*typed), min_size=1))
    ending = data.draw(st.sampled_from(["\n", "\r\n", ""]))
    block = "\n".join(delimiter.join(cells) for cells in rows) + ending
    matches = plainrows.block_matcher(columns, delimiter, multiline=True)
    assert matches is not None and matches(block.encode())
    assert plainrows.whole_records(block)[:2] == (len(block), len(rows))
    assert len(csv_rows(block, delimiter)) == len(rows)


@pytest.mark.parametrize("label", sorted(DAY_MONTH_ORDERS))
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 13), st.integers(0, 32), st.integers(0, 10_000), st.booleans(), st.booleans())
def test_a_day_or_month_first_date_in_block_form_is_one_both_readers_take(
    label: str, month: int, day: int, year: int, pad: bool, two_digits: bool
) -> None:
    order, form = DAY_MONTH_ORDERS[label].order, DAY_MONTH_ORDERS[label].date
    sep = label[2]
    width = "02" if pad else ""
    m, d = f"{month:{width}}", f"{day:{width}}"
    y = f"{year % 100:02d}" if two_digits else f"{year:04d}"
    text = sep.join([m, d, y] if order == "MDY" else [d, m, y])
    col = ColumnSpec("d", "d", ColumnType.DATE, label)
    try:
        valid = not two_digits and dt.date(year, month, day) is not None
    except ValueError:
        valid = False
    # Exactly the calendar's dates with four-digit years (two-digit ones take the Python
    # path and its pivot warning); Python reads each as that date, as PostgreSQL does.
    assert (re2.fullmatch(form, text) is not None) is valid, text
    if valid:
        assert celltypes.read_date(text, col) == dt.date(year, month, day)


@pytest.mark.parametrize("label", sorted(DAY_MONTH_ORDERS))
@settings(max_examples=300, deadline=None)
@given(
    st.dates(),
    st.none() | st.tuples(st.integers(0, 25), st.integers(0, 61), st.none() | st.integers(0, 61)),
    st.sampled_from(["", ".5", ".123456", ".1234567"]),
)
def test_a_day_or_month_first_datetime_in_block_form_is_one_python_reads_alike(
    label: str, day: dt.date, clock: tuple[int, int, int | None] | None, fraction: str
) -> None:
    forms = DAY_MONTH_ORDERS[label]
    sep = label[2]
    parts = (
        [str(day.month), str(day.day)] if forms.order == "MDY" else [str(day.day), str(day.month)]
    )
    text = sep.join([*parts, f"{day.year:04d}"])
    if clock is not None:
        hh, mm, ss = clock
        text += f" {hh}:{mm:02d}" + ("" if ss is None else f":{ss:02d}{fraction}")
    col = ColumnSpec("t", "t", ColumnType.DATETIME, label)
    read = celltypes.read_datetime(text, col)
    matched = re2.fullmatch(forms.datetime, text) is not None
    # What the form takes, Python reads (PostgreSQL too, under the DateStyle: e2e tests); it
    # leaves out only clocks Python refuses (24:00, second 60) and 7 fraction digits.
    if matched:
        hh, mm, ss = clock or (0, 0, None)
        micro = int(fraction[1:].ljust(6, "0")) if fraction and ss is not None else 0
        assert read == dt.datetime(day.year, day.month, day.day, hh, mm, ss or 0, micro)
    elif clock is not None and clock[0] < 24 and clock[1] < 60 and (clock[2] or 0) < 60:
        assert fraction == ".1234567", text


def test_a_record_left_open_ends_the_whole_records_before_it() -> None:
    text = 'a,"one\ntwo"\nb,"three\n'
    assert plainrows.whole_records(text) == (len('a,"one\ntwo"\n'), 1, len('a,"one\ntwo"\n'))
    assert plainrows.whole_records('"open\n') == (0, 0, 0)


NUMBERS = st.from_regex(
    r"[+-]?(?:(?:0|[1-9][0-9]{0,19})(?:\.[0-9]{0,19})?|\.[0-9]{1,19})", fullmatch=True
) | st.from_regex(r"-?0?\.0{10,20}[1-9][0-9]{0,3}", fullmatch=True)


def exact_digits(text: str) -> tuple[int, int]:
    """(significant digits, zeros between the point and the first significant digit)."""
    whole, _, fraction = text.lstrip("+-").partition(".")
    if whole.strip("0"):
        return len(whole.lstrip("0") + fraction), 0
    zeros = len(fraction) - len(fraction.lstrip("0"))
    return len(fraction.lstrip("0")), zeros


@given(NUMBERS)
def test_the_float_form_is_every_exact_decimal_of_15_digits(text: str) -> None:
    plain = RECORDS[ColumnType.FLOAT].plain
    assert plain is not None
    digits, zeros = exact_digits(text)
    expected = digits <= 15 and zeros <= 15
    assert (re.fullmatch(plain.cell, text) is not None) is expected, (digits, zeros)
    assert (re2.fullmatch(plain.exact, text) is not None) is expected  # same on RE2
    if expected:  # exact: PostgreSQL's float8 output (shortest) reads back as the decimal
        assert Decimal(repr(float(text))) == Decimal(text)


OFFSETS = st.integers(-(15 * 60 + 59), 15 * 60 + 59).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m))
)


@given(st.datetimes(timezones=st.none() | st.just(dt.UTC) | OFFSETS), st.sampled_from("T "))
def test_a_datetime_in_block_form_is_an_instant_python_reads(value: dt.datetime, sep: str) -> None:
    plain = RECORDS[ColumnType.DATETIME].plain
    assert plain is not None
    text = value.isoformat(sep=sep).replace("+00:00", "Z" if value.tzinfo is dt.UTC else "+00:00")
    if re.fullmatch(plain.exact, text) is None:
        # Only an offset in year 0001 or 9999 is left to the per-cell path.
        assert value.tzinfo not in (None, dt.UTC) and text[:4] in ("0001", "9999"), text
        return
    read = dt.datetime.fromisoformat(text)
    if read.tzinfo is not None:
        read.astimezone(dt.UTC)  # raises OverflowError outside years 1-9999


def test_the_date_pattern_is_the_calendar() -> None:
    safe = RECORDS[ColumnType.DATE].plain
    assert safe is not None and safe.safe is not None
    fullmatch = re.compile(safe.safe).fullmatch
    for year in range(10000):
        for month, day in [(2, 28), (2, 29), (2, 30), (4, 30), (4, 31), (12, 31), (0, 1), (13, 1)]:
            text = f"{year:04d}-{month:02d}-{day:02d}"
            try:
                dt.date.fromisoformat(text)
                real = True
            except ValueError:
                real = False
            assert bool(fullmatch(text)) is real, text


def test_issue_14_lone_cr_rows_with_many_text_cells_miss_in_one_scan() -> None:
    # 538_poll_of_pollsters_cr_only.tsv: rows ended by a lone CR never match; with Python's
    # backtracking `re` and non-atomic text cells that miss was exponential in the cells per
    # row (RE2 is linear by construction; this keeps the shape).
    columns = [ColumnSpec(f"c{i}", f"c{i}", ColumnType.TEXT) for i in range(16)]
    matches = plainrows.block_matcher(columns, "\t")
    assert matches is not None
    row = "\t".join(["some words here " * 4] * 16)
    assert not matches(((row + "\r") * 50).encode())


def test_delimiters_a_plain_cell_can_hold_have_no_block_pattern() -> None:
    for delimiter in ["-", ".", ":", " ", "a"]:
        assert plainrows.block_matcher(ELIGIBLE[:2], delimiter) is None


@pytest.mark.parametrize(
    ("block", "limit", "within"),
    [
        ("", 3, True),
        ("abc\nabc\n", 3, True),
        ("abcd\nab\n", 3, False),
        ("ab\nabcd", 3, False),
        ("ab\nab\nab\nab\n", 3, True),
        ("a" * 10, 10, True),
        ("a" * 11, 10, False),
    ],
)
def test_lines_within(block: str, limit: int, within: bool) -> None:
    assert plainrows.lines_within(block, limit) is within
