"""How CSV cells are read: null tokens, number styles (decimal comma, digit grouping), date
patterns (`jobs.csvimport.datecells`), and one parser per column type
(`jobs.csvimport.columntypes` ties each to its type).

Pure and per-cell hot: every regex is compiled at import time and each column carries the one
date pattern / number style chosen at inference, so a parser does one or two `fullmatch`
calls and a constructor per cell.

Strict parsing is for inferred types, which must not change a value: a number with a leading
zero (``01400``, ``007``: an identifier whose zeros matter) or a decimal that a float cannot
hold exactly (more than 15 significant digits, out of range) is not a number there. A type the
user forced reads such cells leniently, as they asked.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from core.columntypes import ColumnType
from jobs.csvimport.datecells import (
    DATE_BY_LABEL,
    DATE_PATTERNS,
    ISO_DATE,
    parse_date,
    parse_datetime,
)

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
    type: ColumnType
    date_format: str | None = None  # strptime-style label of the chosen date pattern
    decimal_comma: bool = False
    thousands_sep: str | None = None  # "," "." or " " (space also matches NBSP / U+202F)
    # Forced by the user's `columns`: cells that do not fit are rejected. Otherwise the type
    # was inferred and is checked strictly; a cell that does not fit means it was guessed
    # wrong (jobs.csvimport.inference), never a rejected cell.
    forced: bool = False
    # Inferred as text only because the sample held no value: decided while loading.
    undecided: bool = False

    @property
    def strict(self) -> bool:
        return not self.forced


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


def number_styles(delimiter: str) -> list[tuple[bool, str | None]]:
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


def _parse_int(v: str, style: _NumberStyle, strict: bool = False) -> int | None:
    if style.int_re.fullmatch(v) is None:
        return None
    text = _normalize_number(v, style)
    if strict and _LEADING_ZERO.match(text):
        return None
    n = int(text)
    return n if _INT64_MIN <= n <= _INT64_MAX else None


def _parse_float(v: str, style: _NumberStyle, strict: bool = False) -> float | None:
    if style.float_re.fullmatch(v) is None:
        return None
    text = _normalize_number(v, style)
    f = float(text)
    # Exact: the decimal written is the decimal the double reads back as (shortest repr),
    # which holds for up to 15 significant digits (C11 DBL_DIG) and fails on overflow (inf)
    # and underflow (1e-400 -> 0.0).
    if strict and (
        _LEADING_ZERO.match(text) or not math.isfinite(f) or Decimal(text) != Decimal(repr(f))
    ):
        return None
    return f


# --- one parser per column type -------------------------------------------------------------

Value = int | float | bool | dt.date | dt.datetime | str


def is_null(value: str, col_type: str) -> bool:
    v = value.strip()
    if col_type == ColumnType.TEXT:
        return not v
    return len(v) <= _NULL_MAX_LEN and v.lower() in NULL_TOKENS


def is_null_token(v: str) -> bool:
    """`v` (stripped) spells "no value" in a typed column."""
    return len(v) <= _NULL_MAX_LEN and v.lower() in NULL_TOKENS


# Each takes a stripped, non-null cell and returns its value or None when it does not fit.


def read_int(v: str, col: ColumnSpec) -> int | None:
    return _parse_int(v, _STYLES[col.decimal_comma, col.thousands_sep], col.strict)


def read_float(v: str, col: ColumnSpec) -> float | None:
    return _parse_float(v, _STYLES[col.decimal_comma, col.thousands_sep], col.strict)


def read_bool(v: str, col: ColumnSpec) -> bool | None:
    low = v.lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    return None


def read_date(v: str, col: ColumnSpec) -> dt.date | None:
    pat = DATE_BY_LABEL.get(col.date_format or "", ISO_DATE)
    d = parse_date(v, pat)
    if d is None and pat is not ISO_DATE:
        d = parse_date(v, ISO_DATE)  # ISO is unambiguous, so always acceptable
    return d


def read_datetime(v: str, col: ColumnSpec) -> dt.datetime | None:
    pat = DATE_BY_LABEL.get(col.date_format or "", ISO_DATE)
    ts = parse_datetime(v, pat)
    if ts is None and pat is not ISO_DATE:
        ts = parse_datetime(v, None)
    return ts


def read_text(v: str, col: ColumnSpec) -> str:
    return v


def two_digit_year(value: str, col: ColumnSpec) -> bool:
    """Does this date/datetime cell write its year with two digits (read with the pivot)?"""
    pat = DATE_BY_LABEL.get(col.date_format or "", ISO_DATE)
    if pat.order == "ymd":
        return False
    v = value.strip()
    if col.type == ColumnType.DATETIME:
        v = v.rpartition(" ")[0] or v
    m = pat.regex.fullmatch(v)
    return m is not None and len(m.group(3)) == 2


# --- the candidates inference chooses from ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inferred:
    type: ColumnType
    date_format: str | None = None
    decimal_comma: bool = False
    thousands_sep: str | None = None


def candidates(delimiter: str, only: ColumnType | None = None) -> list[Inferred]:
    """Every (type, style) a column may have, in order of preference: the first one every
    value fits is the column's type. Styles before int over float (see `number_styles`);
    ISO dates first, and month-first before day-first, so an all-ambiguous column ("1/2/2024"
    only) is read month-first while any day > 12 in the first place makes it day-first."""
    out = [Inferred(ColumnType.BOOL)]
    for dc, sep in number_styles(delimiter):
        out += [
            Inferred(ColumnType.INT, decimal_comma=dc, thousands_sep=sep),
            Inferred(ColumnType.FLOAT, decimal_comma=dc, thousands_sep=sep),
        ]
    out += [Inferred(ColumnType.DATE, date_format=p.label) for p in DATE_PATTERNS]
    out += [Inferred(ColumnType.DATETIME, date_format=p.label) for p in DATE_PATTERNS]
    if only is not None:
        return [c for c in out if c.type == only] or [Inferred(only)]
    return out


def year_label(inferred: Inferred, values: list[str]) -> Inferred:
    """Label a date column "%y" when most of its years are written with two digits (display
    only: both labels parse 2- and 4-digit years, with the POSIX pivot for the former)."""
    if inferred.date_format is None or DATE_BY_LABEL[inferred.date_format].order == "ymd":
        return inferred
    spec = ColumnSpec("", "", inferred.type, inferred.date_format)
    two = sum(1 for v in values if two_digit_year(v, spec))
    if two * 2 <= len(values):
        return inferred
    label = inferred.date_format.replace("%Y", "%y")
    return Inferred(inferred.type, date_format=label)
