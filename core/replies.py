"""The assistant's reply row: one per user message, written by the chat job when the
reply ends and by the web when a reply is cancelled before it started.

The reply's id is derived from the user's message, so a retried or restarted job
rewrites the same row instead of adding a second one, and the web can find the row
without asking the worker.
"""

from __future__ import annotations

import uuid
from typing import Any

from psycopg import AsyncConnection

from core.statuses import FINAL_REPLY_STATUSES, MessageStatus

_REPLY_NAMESPACE = uuid.UUID("5b8f1f5e-4d7a-4b8e-9a51-6f0c7a1d2e3b")


def reply_id(message_id: str) -> str:
    """The assistant row's id: derived from the user's message, so a retry reuses it."""
    return str(uuid.uuid5(_REPLY_NAMESPACE, message_id))


async def store_reply(
    conn: AsyncConnection[Any],
    *,
    message_id: str,
    conversation_id: str,
    text: str = "",
    model: str | None = None,
    error_code: str = "",
    flagged: bool = False,
    cancelled: bool = False,
) -> bool:
    """Store how a turn ended, atomically: the assistant's row (upserted under
    its fixed id), the user message's status and the conversation's recency.

    ``flagged``: the guard flagged the message in GUARD_MODE=flag and the reply went
    ahead. ``cancelled``: a stop on request; it never overwrites a reply that already
    ended (a stop racing the reply's own end), and returns whether it wrote anything.
    """
    if cancelled:
        reply_status, user_status = MessageStatus.CANCELLED, MessageStatus.CANCELLED
    elif error_code:
        reply_status = MessageStatus.FAILED
        blocked = error_code == "message_blocked"
        user_status = MessageStatus.BLOCKED if blocked else MessageStatus.FAILED
    else:
        reply_status = MessageStatus.COMPLETED
        user_status = MessageStatus.FLAGGED if flagged else MessageStatus.ANSWERED
    # One statement, so one round trip and atomic on its own: the two UPDATEs run only
    # when the upsert wrote a row (data-modifying CTEs share one snapshot and touch
    # different rows here; PostgreSQL docs, "Data-Modifying Statements in WITH").
    cur = await conn.execute(
        "WITH reply AS ("
        " INSERT INTO messages (id, conversation_id, role, text, status, model, error_code,"
        " reply_to) VALUES (%s, %s, 'assistant', %s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, status = EXCLUDED.status,"
        " model = EXCLUDED.model, error_code = EXCLUDED.error_code"
        " WHERE NOT %s OR messages.status <> ALL(%s)"
        " RETURNING id),"
        " asked AS (UPDATE messages SET status = %s"
        " WHERE id = %s AND EXISTS (SELECT FROM reply)),"
        " recent AS (UPDATE conversations SET updated_at = now()"
        " WHERE id = %s AND EXISTS (SELECT FROM reply))"
        " SELECT count(*) AS written FROM reply",
        (
            reply_id(message_id),
            conversation_id,
            text,
            reply_status,
            model,
            error_code or None,
            message_id,
            cancelled,
            list(FINAL_REPLY_STATUSES),
            user_status,
            message_id,
            conversation_id,
        ),
    )
    row = await cur.fetchone()
    return bool(row and _first(row))


def _first(row: Any) -> Any:
    # Rows are tuples or dicts, depending on the connection's row factory.
    return row["written"] if isinstance(row, dict) else row[0]
