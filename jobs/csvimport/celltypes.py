"""Column typing for CSV imports: null tokens, type inference over a sample, per-cell parsing.

Pure and per-cell hot: every regex is compiled at import time and each column carries the one
date pattern / number style chosen at inference, so `parse_cell` does one or two
`fullmatch` calls and a constructor per cell.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

TYPES: Final = ("int", "float", "bool", "date", "datetime", "text")

# A column gets type X when at least this share of its non-null sample values parse as X;
# the rest become per-cell errors at import time. 95% tolerates a few stray notes such as
# "408,301 sq. miles" in an otherwise numeric column without letting a mixed column through.
TYPE_THRESHOLD: Final = 0.95

# Spreadsheet / pandas / R spellings of "no value". Only typed columns treat them as NULL:
# in a text column "NA" may be Namibia and "-" may be meaningful, so text keeps them verbatim
# and only an empty (or all-whitespace) cell is NULL there.
NULL_TOKENS: Final = frozenset(
    {
        "",
        "na",
        "n/a",
        "n.a.",
        "#n/a",
        "null",
        "none",
        "nil",
        "nan",
        "nat",
        "-",
        "--",
        "#value!",
        "#div/0!",
        "#ref!",
        "#name?",
        "#num!",
        "#null!",
    }
)
_NULL_MAX_LEN: Final = max(len(t) for t in NULL_TOKENS)

_TRUE: Final = frozenset({"true", "t", "yes", "y"})
_FALSE: Final = frozenset({"false", "f", "no", "n"})

# PostgreSQL bigint range: an integer outside it would need numeric, and as float it would
# silently lose digits (ids), so such values do not count as int or float.
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    name: str  # cleaned header, for display
    sql_name: str  # unique slug, safe as a PostgreSQL identifier (<= 63 bytes)
    type: str  # one of TYPES
    date_format: str | None = None  # strptime-style label of the chosen date pattern
    decimal_comma: bool = False
    thousands_sep: str | None = None  # "," "." or " " (space also matches NBSP / U+202F)


# --- numbers -------------------------------------------------------------------------------

_SPACES: Final = " \u00a0\u202f"  # space, NBSP, narrow NBSP (French / SI digit grouping)


@dataclass(frozen=True, slots=True)
class _NumberStyle:
    decimal_comma: bool
    thousands_sep: str | None
    int_re: re.Pattern[str]
    float_re: re.Pattern[str]


def _style(decimal_comma: bool, sep: str | None) -> _NumberStyle:
    dec = "," if decimal_comma else r"\."
    sep_re = {None: None, ",": ",", ".": r"\.", " ": f"[{_SPACES}]"}[sep]
    # Grouping must be exact (1-3 digits then groups of 3) or absent; "12,34" is not a
    # thousands-grouped number, which keeps "3,14" from being read as 314.
    grouped = f"(?:[0-9]{{1,3}}(?:{sep_re}[0-9]{{3}})+|[0-9]+)"
    whole = "[0-9]+" if sep_re is None else grouped
    int_re = re.compile(f"[+-]?{whole}")
    frac = f"(?:{whole}(?:{dec}[0-9]*)?|{dec}[0-9]+)"
    float_re = re.compile(f"[+-]?{frac}(?:[eE][+-]?[0-9]+)?")
    return _NumberStyle(decimal_comma, sep, int_re, float_re)


_STYLES: Final = {
    (dc, sep): _style(dc, sep)
    for dc, sep in [
        (False, None),
        (False, ","),
        (False, " "),
        (True, None),
        (True, "."),
        (True, " "),
    ]
}
_LEADING_ZERO: Final = re.compile(r"[+-]?0[0-9]")
_STRIP_SEP: Final = {None: None, ",": ",", ".": ".", " ": None}
_SPACE_SEP_RE: Final = re.compile(f"[{_SPACES}]")


def _number_style_order(delimiter: str) -> list[tuple[bool, str | None]]:
    # Decimal commas are only plausible when the comma is not the field delimiter (a ';' or
    # '|' file, typical of European spreadsheet exports); in a tab file "1,234" is more often a
    # US thousands separator, so there grouping styles are preferred on a tie.
    if delimiter in ";|":
        return [(False, None), (True, None), (True, "."), (True, " "), (False, ","), (False, " ")]
    if delimiter == "\t":
        return [(False, None), (False, ","), (False, " "), (True, None), (True, "."), (True, " ")]
    return [(False, None), (False, ","), (False, " ")]


def _normalize_number(v: str, style: _NumberStyle) -> str:
    if style.thousands_sep == " ":
        v = _SPACE_SEP_RE.sub("", v)
    elif style.thousands_sep is not None:
        v = v.replace(style.thousands_sep, "")
    if style.decimal_comma:
        v = v.replace(",", ".")
    return v


def _parse_int(v: str, style: _NumberStyle) -> int | None:
    if style.int_re.fullmatch(v) is None:
        return None
    n = int(_normalize_number(v, style))
    return n if _INT64_MIN <= n <= _INT64_MAX else None


def _parse_float(v: str, style: _NumberStyle) -> float | None:
    if style.float_re.fullmatch(v) is None:
        return None
    return float(_normalize_number(v, style))


# --- dates ---------------------------------------------------------------------------------

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
class _DatePattern:
    label: str  # strptime-style, 4-digit-year form; the %y twin maps to the same pattern
    regex: re.Pattern[str]
    order: str  # positions of year/month/day in the three groups: "ymd", "mdy", "dmy", ...


_Y = r"([0-9]{4}|[0-9]{2})"
_D = r"([0-9]{1,2})"
_B = r"([A-Za-z]{3,9})\.?"
_DATE_PATTERNS: Final = [
    _DatePattern("%Y-%m-%d", re.compile(r"([0-9]{4})-([0-9]{1,2})-([0-9]{1,2})"), "ymd"),
    _DatePattern("%Y/%m/%d", re.compile(r"([0-9]{4})/([0-9]{1,2})/([0-9]{1,2})"), "ymd"),
    _DatePattern("%m/%d/%Y", re.compile(f"{_D}/{_D}/{_Y}"), "mdy"),
    _DatePattern("%d/%m/%Y", re.compile(f"{_D}/{_D}/{_Y}"), "dmy"),
    _DatePattern("%m-%d-%Y", re.compile(f"{_D}-{_D}-{_Y}"), "mdy"),
    _DatePattern("%d-%m-%Y", re.compile(f"{_D}-{_D}-{_Y}"), "dmy"),
    _DatePattern("%d.%m.%Y", re.compile(rf"{_D}\.{_D}\.{_Y}"), "dmy"),
    _DatePattern("%b %d, %Y", re.compile(f"{_B} {_D},? {_Y}"), "bdy"),
    _DatePattern("%d-%b-%Y", re.compile(f"{_D}-{_B}-{_Y}"), "dby"),
    _DatePattern("%d %b %Y", re.compile(f"{_D} {_B} {_Y}"), "dby"),
]
_DATE_BY_LABEL: Final = {p.label: p for p in _DATE_PATTERNS} | {
    p.label.replace("%Y", "%y"): p for p in _DATE_PATTERNS
}
_ISO_DATE: Final = _DATE_PATTERNS[0]


def _parse_date(v: str, pat: _DatePattern) -> dt.date | None:
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


def _parse_datetime(v: str, pat: _DatePattern | None) -> dt.datetime | None:
    if pat is None or pat is _ISO_DATE:
        if _ISO_DATETIME.fullmatch(v) is None:
            return None
        try:
            return dt.datetime.fromisoformat(v)
        except ValueError:
            return None
    # Non-ISO datetimes: "<column date pattern> H:MM[:SS[.ffffff]]", or a bare date.
    date_part, _, time_part = v.rpartition(" ")
    if not date_part:
        d = _parse_date(v, pat)
        return None if d is None else dt.datetime(d.year, d.month, d.day)
    d = _parse_date(date_part, pat)
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


# --- cell parsing --------------------------------------------------------------------------

Value = int | float | bool | dt.date | dt.datetime | str


def is_null(value: str, col_type: str) -> bool:
    v = value.strip()
    if col_type == "text":
        return not v
    return len(v) <= _NULL_MAX_LEN and v.lower() in NULL_TOKENS


def parse_cell(value: str, col: ColumnSpec) -> tuple[Value | None, str | None]:
    """Returns (value, None), (None, None) for NULL, or (None, reason) for an invalid cell."""
    t = col.type
    if t == "text":
        return (value, None) if value.strip() else (None, None)
    v = value.strip()
    if len(v) <= _NULL_MAX_LEN and v.lower() in NULL_TOKENS:
        return None, None
    if t == "int":
        n = _parse_int(v, _STYLES[col.decimal_comma, col.thousands_sep])
        return (n, None) if n is not None else (None, "not an integer")
    if t == "float":
        f = _parse_float(v, _STYLES[col.decimal_comma, col.thousands_sep])
        return (f, None) if f is not None else (None, "not a number")
    if t == "bool":
        low = v.lower()
        if low in _TRUE:
            return True, None
        if low in _FALSE:
            return False, None
        return None, "not a boolean"
    pat = _DATE_BY_LABEL.get(col.date_format or "", _ISO_DATE)
    if t == "date":
        d = _parse_date(v, pat)
        if d is None and pat is not _ISO_DATE:
            d = _parse_date(v, _ISO_DATE)  # ISO is unambiguous, so always acceptable
        return (d, None) if d is not None else (None, "not a date")
    if t == "datetime":
        ts = _parse_datetime(v, pat)
        if ts is None and pat is not _ISO_DATE:
            ts = _parse_datetime(v, None)
        return (ts, None) if ts is not None else (None, "not a datetime")
    raise ValueError(f"unknown column type {t!r}")


# --- inference -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inferred:
    type: str
    date_format: str | None = None
    decimal_comma: bool = False
    thousands_sep: str | None = None


def _best_number(
    values: Sequence[str], delimiter: str, forced: str | None
) -> tuple[float, Inferred]:
    # The style (decimal mark, grouping) is chosen by how many values read as numbers at all,
    # so "1.234" in a ';' file stays the float 1.234 instead of the grouped int 1234 (earlier,
    # plainer styles win ties); only then is int preferred over float within that style.
    # Values with leading zeros ("02134", "0803") are identifiers whose zeros matter: they count
    # against numeric types so such columns stay text.
    n = len(values)
    candidates = [v for v in values if not _LEADING_ZERO.match(v)]
    best = (-1.0, Inferred(forced or "float"))
    for dc, sep in _number_style_order(delimiter):
        style = _STYLES[dc, sep]
        ints = sum(1 for v in candidates if _parse_int(v, style) is not None)
        if forced == "int":
            share, want = ints / n, "int"
        else:
            share = sum(1 for v in candidates if _parse_float(v, style) is not None) / n
            want = "int" if forced is None and ints >= TYPE_THRESHOLD * n else "float"
        if share > best[0]:
            best = (share, Inferred(want, decimal_comma=dc, thousands_sep=sep))
    return best


def _best_date(values: Sequence[str], want: str) -> tuple[float, Inferred]:
    best = (0.0, Inferred(want, date_format=_ISO_DATE.label))
    for pat in _DATE_PATTERNS:
        parse = _parse_date if want == "date" else _parse_datetime
        share = sum(1 for v in values if parse(v, pat) is not None) / len(values)
        # Strict ">" with month-first listed before day-first: an all-ambiguous column
        # ("1/2/2024" only) is read month-first; any day > 12 in the first position makes
        # day-first the better share, so the choice is made per column from its evidence.
        if share > best[0]:
            best = (share, Inferred(want, date_format=pat.label))
    # Label the column "%y" when most of its years are written with two digits (display only:
    # both labels parse 2- and 4-digit years, with the POSIX pivot for the former).
    label = best[1].date_format or _ISO_DATE.label
    pat = _DATE_BY_LABEL[label]
    if pat.order != "ymd":
        two_digit = 0
        for v in values:
            m = pat.regex.fullmatch(v if want == "date" else v.rpartition(" ")[0] or v)
            two_digit += m is not None and len(m.group(3)) == 2
        if two_digit * 2 > len(values):
            best = (best[0], Inferred(want, date_format=label.replace("%Y", "%y")))
    return best


def infer_column(values: Sequence[str], delimiter: str, forced: str | None = None) -> Inferred:
    """Infer a column's type from sample cells; `forced` fixes the type but still picks the
    best date pattern / number style for it from the sample."""
    present = [s for v in values if not is_null(v, "int") for s in (v.strip(),)]
    if forced == "text" or (forced is None and not present):
        return Inferred("text")
    if forced is not None and not present:
        return Inferred(forced, date_format=_ISO_DATE.label if "date" in forced else None)
    candidates = [forced] if forced is not None else ["bool", "number", "date", "datetime"]
    for want in candidates:
        if want == "bool":
            share = sum(1 for v in present if v.lower() in _TRUE or v.lower() in _FALSE)
            result = (share / len(present), Inferred("bool"))
        elif want in ("number", "int", "float"):
            result = _best_number(present, delimiter, None if want == "number" else want)
        else:
            result = _best_date(present, want)
        if forced is not None or result[0] >= TYPE_THRESHOLD:
            return result[1]
    return Inferred("text")
