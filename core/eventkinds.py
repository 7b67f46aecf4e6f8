"""The names of Server-Sent Events (API.md "Event streams"), defined once.

Workers publish the ``chat.*`` and ``upload.*`` kinds through the event bus
(core/events.py); the web process itself sends ``resync`` and ``token_expired`` on a
stream. The browser page (static/app.js) and /openapi.json use exactly these names;
tests/test_vocabulary.py checks the page.
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    CHAT_CHUNK = "chat.chunk"
    CHAT_DONE = "chat.done"
    CHAT_ERROR = "chat.error"
    # A reply starts over (a retry after a crash, a job handed back at shutdown): drop
    # the partial text shown so far; the chunks that follow start at index 0.
    CHAT_RESTART = "chat.restart"
    UPLOAD_STATUS = "upload.status"
    UPLOAD_PROGRESS = "upload.progress"
    UPLOAD_DONE = "upload.done"
    UPLOAD_ERROR = "upload.error"
    # Control events of the stream itself, never stored in history.
    RESYNC = "resync"
    TOKEN_EXPIRED = "token_expired"  # noqa: S105  # nosec B105 - an event name, not a secret
    # Sent, without an id, only to streams opened with ?heartbeat=event (docs/api.md).
    HEARTBEAT = "heartbeat"
