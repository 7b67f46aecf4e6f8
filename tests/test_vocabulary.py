"""Event kinds and statuses are defined once (core/eventkinds.py, core/statuses.py);
the browser page, the database schema and /openapi.json must not drift from them."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

from core.eventkinds import EventKind
from core.statuses import VISIBLE_UPLOAD_STATUSES, MessageStatus, UploadStatus

PAGE = (Path(__file__).resolve().parents[1] / "static" / "app.js").read_text()


def page_object(name: str) -> dict[str, str]:
    match = re.search(rf"const {name} = \{{(.*?)\}};", PAGE, re.DOTALL)
    assert match is not None, f"static/app.js defines no {name}"
    return dict(re.findall(r'(\w+): "([^"]*)"', match.group(1)))


def test_page_listens_for_exactly_the_event_kinds() -> None:
    match = re.search(r"const EVENT_TYPES = \[(.*?)\];", PAGE, re.DOTALL)
    assert match is not None
    assert re.findall(r'"([^"]*)"', match.group(1)) == [kind.value for kind in EventKind]


def test_every_event_name_on_the_page_is_an_event_kind() -> None:
    quoted = set(re.findall(r'"((?:chat|upload)\.[a-z_]+)"', PAGE))
    handlers = re.search(r"const HANDLERS = \{(.*?)\n\};", PAGE, re.DOTALL)
    assert handlers is not None
    keys = set(re.findall(r'^  "?([a-z_.]+)"?: ', handlers.group(1), re.MULTILINE))
    assert quoted | keys <= set(EventKind)
    assert keys == set(EventKind)  # a handler for every kind the page listens for


def test_page_statuses_are_the_servers() -> None:
    assert page_object("UPLOAD_STATUS") == {s.name: s.value for s in VISIBLE_UPLOAD_STATUSES}
    assert page_object("MESSAGE_STATUS") == {s.name: s.value for s in MessageStatus}
    # Statuses are compared and set through those tables, never as bare strings.
    assert re.findall(r'status\s*(?:===|!==|==|:)\s*"[^"]*"', PAGE) == []


def test_schema_default_upload_status_is_receiving(db: psycopg.Connection) -> None:
    default = db.execute(
        "SELECT column_default FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = 'uploads'"
        " AND column_name = 'status'"
    ).fetchone()
    assert default == (f"'{UploadStatus.RECEIVING}'::text",)
