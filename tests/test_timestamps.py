"""core.timestamps.rfc3339: every time stamp a client sees, one spelling."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest

from core.timestamps import rfc3339


def test_utc_is_written_with_z() -> None:
    assert rfc3339(dt.datetime(2024, 5, 1, 10, 0, tzinfo=dt.UTC)) == "2024-05-01T10:00:00Z"


def test_other_zones_are_converted_to_utc_keeping_microseconds() -> None:
    oslo = dt.datetime(2024, 5, 1, 12, 0, 0, 250, tzinfo=zoneinfo.ZoneInfo("Europe/Oslo"))
    assert rfc3339(oslo) == "2024-05-01T10:00:00.000250Z"


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="zone"):
        rfc3339(dt.datetime(2024, 5, 1, 10, 0))
