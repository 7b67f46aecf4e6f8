"""The statuses of uploads and chat messages, defined once.

They are stored as text in PostgreSQL (app/migrations/001_initial.sql), sent in
``upload.status`` events and REST bodies, and listed as enums in /openapi.json.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class UploadStatus(StrEnum):
    # The body is still streaming in; such a row is never shown to clients.
    RECEIVING = "receiving"
    QUEUED = "queued"
    VALIDATING = "validating"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# What a client can see (API.md "CSV uploads": `status` is one of these).
VISIBLE_UPLOAD_STATUSES: Final = tuple(s for s in UploadStatus if s is not UploadStatus.RECEIVING)
# An import may still run (and be cancelled) in these.
ACTIVE_UPLOAD_STATUSES: Final = (
    UploadStatus.QUEUED,
    UploadStatus.VALIDATING,
    UploadStatus.PROCESSING,
)


class MessageStatus(StrEnum):
    # A user's message: waiting for its reply, answered, refused by the guard, or
    # answered though the guard flagged it (GUARD_MODE=flag, docs/guard.md).
    QUEUED = "queued"
    ANSWERED = "answered"
    BLOCKED = "blocked"
    FLAGGED = "flagged"
    # An assistant's reply: stored whole, or ended in an error (either side may fail),
    # or stopped on request (POST /chat/messages/{id}/cancel) with what it had; the user's
    # message of a stopped reply is CANCELLED too.
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # An assistant's reply still streaming: never stored, only shown in the message
    # read-back with its text so far (core/drafts.py).
    STREAMING = "streaming"


# A reply in one of these has ended: it is stored, and nothing will change it.
FINAL_REPLY_STATUSES: Final = (
    MessageStatus.COMPLETED,
    MessageStatus.FAILED,
    MessageStatus.CANCELLED,
)
