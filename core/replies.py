"""The assistant's reply row: one per user message, written by the chat job when the
reply ends and by the web when a queued reply is cancelled.

The reply's id is derived from the user's message, so a retried or restarted job
rewrites the same row instead of adding a second one, and the web can find the row
without asking the worker.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from psycopg import AsyncConnection

_REPLY_NAMESPACE = uuid.UUID("5b8f1f5e-4d7a-4b8e-9a51-6f0c7a1d2e3b")


class ReplyStatus(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = tuple(ReplyStatus)

# What the user's own message says once its reply ended (API.md: messages have a status).
_USER_STATUS = {
    ReplyStatus.COMPLETED: "answered",
    ReplyStatus.FAILED: "failed",
    ReplyStatus.CANCELLED: "cancelled",
}


def reply_id(message_id: str) -> str:
    """The assistant row's id: derived from the user's message, so a retry reuses it."""
    return str(uuid.uuid5(_REPLY_NAMESPACE, message_id))


def chat_job_id(message_id: str) -> str:
    """The RQ job id of a message's reply: deterministic, so a second enqueue of the
    same message (a retry, a reconciler) can never make two replies."""
    return f"chat-{message_id}"


async def store_reply(
    conn: AsyncConnection[Any],
    *,
    message_id: str,
    conversation_id: str,
    status: ReplyStatus,
    text: str = "",
    model: str | None = None,
    error_code: str | None = None,
    user_status: str | None = None,
    unless_final: bool = False,
) -> bool:
    """Write the reply row and the user message's status in one transaction.

    ``unless_final``: leave a reply that already ended alone (a cancel racing the
    reply's own end); returns whether this call wrote it.
    """
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO messages (id, conversation_id, role, text, status, model, error_code,"
            " reply_to) VALUES (%s, %s, 'assistant', %s, %s, %s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, status = EXCLUDED.status,"
            " model = EXCLUDED.model, error_code = EXCLUDED.error_code"
            " WHERE NOT %s OR messages.status NOT IN ('completed', 'failed', 'cancelled')"
            " RETURNING id",
            (
                reply_id(message_id),
                conversation_id,
                text,
                str(status),
                model,
                error_code,
                message_id,
                unless_final,
            ),
        )
        if await cur.fetchone() is None:
            return False
        await conn.execute(
            "UPDATE messages SET status = %s WHERE id = %s",
            (user_status or _USER_STATUS[status], message_id),
        )
        await conn.execute(
            "UPDATE conversations SET updated_at = now() WHERE id = %s", (conversation_id,)
        )
    return True
