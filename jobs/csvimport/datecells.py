"""Date and date-time cells: the patterns a date column may have (ISO first, then month- and
day-first, then month names), two-digit years read with the POSIX pivot, and one parser each.
Calendar-invalid dates (31/02, month 13) are not dates."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

_MONTHS: Final = {
    name: i
    for i, names in enumerate(
        [
            ("jan", "january"),
            ("feb", "february"),
            ("mar", "march"),
            ("apr", "april"),
            ("may",),
            ("jun", "june"),
            ("jul", "july"),
            ("aug", "august"),
            ("sep", "sept", "september"),
            ("oct", "october"),
            ("nov", "november"),
            ("dec", "december"),
        ],
        start=1,
    )
    for name in names
}


def _year(text: str) -> int:
    y = int(text)
    if len(text) == 2:
        # POSIX strptime %y: "values in the range [69,99] refer to years 1969 to 1999 inclusive
        # and values in the range [00,68] refer to years 2000 to 2068 inclusive".
        return y + (1900 if y >= 69 else 2000)
    return y


@dataclass(frozen=True, slots=True)
class DatePattern:
    label: str  # strptime-style, 4-digit-year form; the %y twin maps to the same pattern
    regex: re.Pattern[str]
    order: str  # positions of year/month/day in the three groups: "ymd", "mdy", "dmy", ...


_Y = r"([0-9]{4}|[0-9]{2})"
_D = r"([0-9]{1,2})"
_B = r"([A-Za-z]{3,9})\.?"
DATE_PATTERNS: Final = [
    DatePattern("%Y-%m-%d", re.compile(r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})"), "ymd"),
    DatePattern("%Y/%m/%d", re.compile(r"([0-9]{4})/([0-9]{1,2})/([0-9]{1,2})"), "ymd"),
    DatePattern("%m/%d/%Y", re.compile(f"{_D}/{_D}/{_Y}"), "mdy"),
    DatePattern("%d/%m/%Y", re.compile(f"{_D}/{_D}/{_Y}"), "dmy"),
    DatePattern("%m-%d-%Y", re.compile(f"{_D}-{_D}-{_Y}"), "mdy"),
    DatePattern("%d-%m-%Y", re.compile(f"{_D}-{_D}-{_Y}"), "dmy"),
    DatePattern("%d.%m.%Y", re.compile(rf"{_D}\.{_D}\.{_Y}"), "dmy"),
    DatePattern("%b %d, %Y", re.compile(f"{_B} {_D},? {_Y}"), "bdy"),
    DatePattern("%d-%b-%Y", re.compile(f"{_D}-{_B}-{_Y}"), "dby"),
    DatePattern("%d %b %Y", re.compile(f"{_D} {_B} {_Y}"), "dby"),
]
DATE_BY_LABEL: Final = {p.label: p for p in DATE_PATTERNS} | {
    p.label.replace("%Y", "%y"): p for p in DATE_PATTERNS
}
ISO_DATE: Final = DATE_PATTERNS[0]


def parse_date(v: str, pat: DatePattern) -> dt.date | None:
    m = pat.regex.fullmatch(v)
    if m is None:
        return None
    a, b, c = m.groups()
    try:
        if pat.order == "ymd":
            return dt.date(int(a), int(b), int(c))
        if pat.order == "mdy":
            return dt.date(_year(c), int(a), int(b))
        if pat.order == "dmy":
            return dt.date(_year(c), int(b), int(a))
        if pat.order == "bdy":
            month = _MONTHS.get(a.lower())
            return None if month is None else dt.date(_year(c), month, int(b))
        month = _MONTHS.get(b.lower())
        return None if month is None else dt.date(_year(c), month, int(a))
    except ValueError:  # 31/02, month 13: a calendar-invalid date is not a date
        return None


# ISO 8601 date-time with "T" or " " (RFC 3339 section 5.6 allows the space), optional seconds,
# fraction and zone. The regex gates datetime.fromisoformat, which on 3.11 also accepts
# forms like "20240131" that should not make a column a datetime.
_ISO_DATETIME: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]{1,6})?)?"
    r"(?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?"
)
_TIME: Final = re.compile(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]{1,6}))?)?")


def parse_datetime(v: str, pat: DatePattern | None) -> dt.datetime | None:
    if pat is None or pat is ISO_DATE:
        if _ISO_DATETIME.fullmatch(v) is None:
            return None
        try:
            ts = dt.datetime.fromisoformat(v)
            if ts.tzinfo is not None:
                # An instant before year 1 or after 9999 in UTC (0001-01-01T00:00+01:00) is
                # no Python datetime; PostgreSQL would store it as BC, which cannot be read.
                ts.astimezone(dt.UTC)
        except (ValueError, OverflowError):
            return None
        return ts
    # Non-ISO datetimes: "<column date pattern> H:MM[:SS[.ffffff]]", or a bare date.
    date_part, _, time_part = v.rpartition(" ")
    if not date_part:
        d = parse_date(v, pat)
        return None if d is None else dt.datetime(d.year, d.month, d.day)
    d = parse_date(date_part, pat)
    t = _TIME.fullmatch(time_part)
    if d is None or t is None:
        return None
    hh, mm, ss, frac = t.groups()
    try:
        return dt.datetime(
            d.year,
            d.month,
            d.day,
            int(hh),
            int(mm),
            int(ss or 0),
            int((frac or "0").ljust(6, "0")),
        )
    except ValueError:
        return None
