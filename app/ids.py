"""Resource ids as clients send them back: exactly the form Herald issued, or nothing.

Ids are opaque strings (API.md "Conventions") that Herald issues as lowercase,
hyphenated UUIDs. Python's ``uuid.UUID`` also reads ``urn:uuid:…``, ``{…}``, upper case
and unhyphenated forms, which PostgreSQL's uuid type partly refuses; an id is therefore
checked by its exact text, and any other spelling names no resource (404).
"""

from __future__ import annotations

import uuid


def parse_id(value: str) -> str | None:
    """``value`` if it is an id in the form Herald issues, else None."""
    if len(value) != 36:
        return None
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        return None
    return value if value == canonical else None
