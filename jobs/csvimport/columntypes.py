"""What each CSV column type is to the importer, one record per type (the names themselves
are `core.columntypes.ColumnType`, shared with the web side): its PostgreSQL type, how a cell
is read, the plain text PostgreSQL reads as written, and how it is profiled. Adding a type is
one entry in `RECORDS` (plus its name in the enum and a reader in `celltypes`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from core.columntypes import ColumnType
from jobs.csvimport.celltypes import (
    ColumnSpec,
    Value,
    is_null_token,
    read_bool,
    read_date,
    read_datetime,
    read_float,
    read_int,
    read_text,
)

# Plain forms: cells PostgreSQL's input function reads to exactly the value the reader gives,
# so they go to COPY as written. Integers of at most 18 digits (always inside bigint) without
# a leading zero; decimals without exponent or leading zero, of at most FLOAT_EXACT_DIGITS
# significant digits (so exact) and at most as many zeros after the point before the first
# (so far inside float8's range); ISO dates; ISO date-times (or bare dates) with zones up to
# +-15:59, the range PostgreSQL's timestamptz input accepts (datetime.c). No look-arounds:
# the same regexes run on RE2 (jobs.csvimport.plainrows).
_INT: Final = r"[+-]?(?:0|[1-9][0-9]{0,17})"
# A decimal of at most this many significant digits is exact in a double (C11 DBL_DIG).
FLOAT_EXACT_DIGITS: Final = 15


def _exact_float(digits: int) -> str:
    """Decimals (no exponent, no leading zero) of at most `digits` significant digits."""
    whole = "|".join(rf"[1-9][0-9]{{{k}}}(?:\.[0-9]{{0,{digits - 1 - k}}})?" for k in range(digits))
    fraction = rf"0?\.0{{0,{digits}}}[1-9][0-9]{{0,{digits - 1}}}"
    zero = rf"0(?:\.0{{0,{digits}}})?|\.0{{1,{digits}}}"
    return rf"[+-]?(?:{whole}|{fraction}|{zero})"


_FLOAT: Final = _exact_float(FLOAT_EXACT_DIGITS)
# Bool spellings PostgreSQL's boolean input reads as the Python path does (docs 8.6), each
# with the value's plain text.
BOOL_PLAIN: Final = {
    spelling: "t" if word in ("true", "yes") else "f"
    for word in ("true", "false", "yes", "no")
    for spelling in (word, word.upper(), word.capitalize())
}


def _ymd(year: str) -> str:
    return rf"{year}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"


_YMD: Final = _ymd("[0-9]{4}")
_YEAR: Final = r"(?:000[1-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-9][0-9]{3})"  # 0001-9999
# Years 0002-9998: no offset up to +-15:59 moves an instant out of 0001-9999 in UTC.
_INNER_YEAR: Final = (
    r"(?:000[2-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])"
)
# The Gregorian calendar itself (years 0001-9999 in both Python and PostgreSQL; 29 February
# when the year divides by 4, and by 400 if it ends in 00), so a match needs no calendar check.
_LEAP_YEAR: Final = (
    r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)"
)


def _month_days(zero: str) -> list[tuple[str, str]]:
    """(months, their days) of the calendar, 29 February aside; `zero` before one-digit
    numbers: "0" (ISO) or "0?" (1/2/2024)."""
    day = rf"{zero}[1-9]|[12][0-9]"
    return [
        (rf"{zero}[13578]|1[02]", rf"{day}|3[01]"),
        (rf"{zero}[469]|11", rf"{day}|30"),
        (f"{zero}2", rf"{zero}[1-9]|1[0-9]|2[0-8]"),
    ]


def _calendar_dates(order: str, sep: str, year: str, zero: str) -> str:
    """Dates in field `order` ("ymd", "mdy", "dmy") joined by `sep`, on the calendar itself."""

    def date(y: str, m: str, d: str) -> str:
        fields = {"y": y, "m": f"(?:{m})", "d": f"(?:{d})"}
        return sep.join(fields[f] for f in order)

    forms = [date(year, m, d) for m, d in _month_days(zero)]
    return "(?:" + "|".join([*forms, date(_LEAP_YEAR, f"{zero}2", "29")]) + ")"


def _calendar(year: str) -> str:
    return _calendar_dates("ymd", "-", year, "0")


_YMD_SAFE: Final = _calendar(_YEAR)


def _numeric_calendar(order: str, sep: str) -> str:
    """Dates written month or day first with a 4-digit year (1/2/2024, 31.12.1999), each of
    month and day with or without its zero."""
    return _calendar_dates(order, "\\" + sep, _YEAR, "0?")


_TIME: Final = r"[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,6})?"
_OFFSET: Final = r"[+-](?:0[0-9]|1[0-5]):[0-5][0-9]"


def _datetime(ymd: str, inner_ymd: str) -> str:
    """A date, or a date-time in UTC (naive or Z); with a numeric offset only in years
    0002-9998, since an offset in year 1 or 9999 could put the instant outside them in UTC
    (celltypes reads those as no datetime): such cells take the per-cell path."""
    return rf"(?:{ymd}(?:{_TIME}Z?)?|{inner_ymd}{_TIME}{_OFFSET})"


@dataclass(frozen=True, slots=True)
class DayMonth:
    """A date pattern written month or day first, as PostgreSQL reads it under DateStyle."""

    order: str  # DateStyle's field order: "MDY" or "DMY"
    date: str  # block form of a date column with this pattern (ISO dates too)
    datetime: str  # of a date-time column: such a date, then " H:MM[:SS[.ffffff]]" or not; ISO


# What celltypes reads after such a date in a date-time column, within the clock's ranges
# (PostgreSQL would also take 24:00 and second 60, which Python does not).
_CLOCK: Final = r"(?:[01]?[0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,6})?)?"
_ISO_DATETIME_SAFE: Final = _datetime(_YMD_SAFE, _calendar(_INNER_YEAR))

DATED: Final = (ColumnType.DATE, ColumnType.DATETIME)
# Date patterns (celltypes' labels) that PostgreSQL reads as written once DateStyle names
# their field order (docs, 8.5.1.1 and B.1). Four-digit years only: two-digit ones take the
# Python path, its pivot and its warning.
DAY_MONTH_ORDERS: Final = {
    label: DayMonth(
        order.upper(),
        f"(?:{_YMD_SAFE}|{_numeric_calendar(order, sep)})",
        f"(?:{_ISO_DATETIME_SAFE}|{_numeric_calendar(order, sep)}(?: {_CLOCK})?)",
    )
    for label, order, sep in [
        ("%m/%d/%Y", "mdy", "/"),
        ("%d/%m/%Y", "dmy", "/"),
        ("%m-%d-%Y", "mdy", "-"),
        ("%d-%m-%Y", "dmy", "-"),
        ("%d.%m.%Y", "dmy", "."),
    ]
}


@dataclass(frozen=True, slots=True)
class Plain:
    cell: str  # regex of one plain cell
    safe: str | None = None  # a stricter regex whose matches need no `calendar` check
    calendar: Callable[[str], object] | None = None  # raises ValueError off the calendar

    @property
    def exact(self) -> str:
        """A regex whose every match is plain, no `calendar` check needed: `safe` or `cell`."""
        return self.safe or self.cell


@dataclass(frozen=True, slots=True)
class TypeRecord:
    name: ColumnType
    pg_type: str
    # Bytes per value in a heap tuple (docs, chapter 8); 0 for variable length, which
    # counts as a TOAST pointer when deciding whether a row fits (jobs.csvimport.table).
    fixed_bytes: int
    read: Callable[[str, ColumnSpec], Value | None]
    error: str  # why a cell that does not fit is rejected (forced types only)
    plain: Plain | None
    # Profile: min/max/mean over this SQL expression of the column (None: top values).
    mean_key: str | None


RECORDS: Final = {
    r.name: r
    for r in [
        TypeRecord(
            ColumnType.INT,
            "bigint",
            8,
            read_int,
            "not an integer",
            Plain(_INT),
            mean_key="{}",
        ),
        TypeRecord(
            ColumnType.FLOAT,
            "double precision",
            8,
            read_float,
            "not a number",
            Plain(_FLOAT),
            mean_key="{}",
        ),
        TypeRecord(ColumnType.BOOL, "boolean", 1, read_bool, "not a boolean", None, None),
        TypeRecord(
            ColumnType.DATE,
            "date",
            4,
            read_date,
            "not a date",
            Plain(_YMD, _YMD_SAFE, dt.date.fromisoformat),
            # Days since 0001-01-01, as date.toordinal counts them.
            mean_key="{} - DATE '0001-01-01' + 1",
        ),
        TypeRecord(
            ColumnType.DATETIME,
            "timestamptz",
            8,
            read_datetime,
            "not a datetime",
            # A bare date is midnight UTC to both readers (the import's time zone is UTC).
            Plain(
                _datetime(_YMD, _ymd(_INNER_YEAR)),
                _ISO_DATETIME_SAFE,
                dt.datetime.fromisoformat,
            ),
            mean_key="extract(epoch FROM {})",
        ),
        TypeRecord(ColumnType.TEXT, "text", 0, read_text, "", None, None),
    ]
}


def parse_cell(value: str, col: ColumnSpec) -> tuple[Value | None, str | None]:
    """Returns (value, None), (None, None) for NULL, or (None, reason) for a cell that does
    not fit. Text keeps a cell verbatim (NULL only when empty or all whitespace: "NA" may be
    Namibia); typed columns also read the null tokens as NULL."""
    if col.type == ColumnType.TEXT:
        return (value, None) if value.strip() else (None, None)
    v = value.strip()
    if is_null_token(v):
        return None, None
    record = RECORDS[col.type]
    got = record.read(v, col)
    return (got, None) if got is not None else (None, record.error)
