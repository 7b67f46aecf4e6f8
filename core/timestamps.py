"""How every time stamp a client sees is written: RFC 3339, in UTC, with ``Z``.

API.md asks for ISO 8601 with a zone; RFC 3339 section 5.6 is the profile of it that
JSON APIs use, and one spelling of UTC (``Z``, not ``+00:00``) keeps chat and upload
bodies alike.
"""

from __future__ import annotations

import datetime as dt


def rfc3339(value: dt.datetime) -> str:
    """``value`` (zone-aware; PostgreSQL timestamptz is) as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    if value.tzinfo is None:
        raise ValueError("a time stamp needs a zone")
    return value.astimezone(dt.UTC).isoformat().removesuffix("+00:00") + "Z"
