"""Header cleaning for CSV imports: display names plus PostgreSQL-safe column identifiers."""

from __future__ import annotations

import re
import unicodedata
from typing import Final

PG_IDENTIFIER_MAX_BYTES: Final = 63  # NAMEDATALEN - 1 (PostgreSQL docs, 4.1.1 Identifiers)

# SQL key words reserved in PostgreSQL (PostgreSQL docs, Appendix C, "reserved" column) plus
# the system column names, which no user column may use even when quoted (docs 5.6). Kept as
# prose-like text for review against the docs table.
_PG_RESERVED: Final = frozenset(
    """all analyse analyze and any array as asc asymmetric both case cast check collate column
    constraint create current_catalog current_date current_role current_time current_timestamp
    current_user default deferrable desc distinct do else end except false fetch for foreign
    from grant group having in initially intersect into lateral leading limit localtime
    localtimestamp not null offset on only or order placing primary references returning
    select session_user some symmetric system_user table then to trailing true union unique
    user using variadic when where window with authorization binary collation concurrently
    cross current_schema freeze full ilike inner is isnull join left like natural notnull
    outer overlaps right similar tablesample verbose
    tableoid xmin cmin xmax cmax ctid oid""".split()  # noqa: SIM905
)
_NON_IDENT: Final = re.compile(r"[^a-z0-9_]+")


# Letters NFKD does not decompose to ASCII but that have a conventional ASCII spelling.
_TRANSLIT: Final = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "Æ": "AE",
        "ø": "o",
        "Ø": "O",
        "œ": "oe",
        "Œ": "OE",
        "ł": "l",
        "Ł": "L",
        "đ": "d",
        "Đ": "D",
        "þ": "th",
        "Þ": "TH",
        "€": "eur",
        "%": "pct",
        "#": "num",
    }
)


def _slug(name: str, position: int) -> str:
    folded = unicodedata.normalize("NFKD", name.translate(_TRANSLIT))
    ascii_name = folded.encode("ascii", "ignore").decode("ascii")
    s = _NON_IDENT.sub("_", ascii_name.lower()).strip("_")
    if not s:
        s = f"column_{position}"
    if s[0].isdigit():
        s = "c_" + s  # unquoted identifiers must start with a letter or underscore
    if s in _PG_RESERVED:
        s += "_"
    return s[:PG_IDENTIFIER_MAX_BYTES]


def _dedupe(names: list[str], max_len: int | None = None) -> list[str]:
    seen: set[str] = set()
    out = []
    for name in names:
        candidate, n = name, 1
        while candidate.lower() in seen:  # PostgreSQL folds nothing here, but people do
            n += 1
            suffix = f"_{n}"
            base = name if max_len is None else name[: max_len - len(suffix)]
            candidate = base + suffix
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def clean_header(raw: list[str]) -> list[tuple[str, str]]:
    """Return (display name, sql_name) per column: stripped (BOM and NBSP too), empty ->
    column_N, duplicates -> name_2; sql_name is a unique lowercase slug <= 63 bytes."""
    names = []
    for i, h in enumerate(raw, start=1):
        h = h.replace("\ufeff", "").strip()
        names.append(h or f"column_{i}")
    names = _dedupe(names)
    slugs = _dedupe([_slug(n, i) for i, n in enumerate(names, start=1)], PG_IDENTIFIER_MAX_BYTES)
    return list(zip(names, slugs, strict=True))
