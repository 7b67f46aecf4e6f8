"""``POST /chat/messages/{message_id}/cancel``: stop a reply, queued or streaming.

A flag in Redis is set first, then the job is cancelled where it is: a waiting job
never runs (RQ's cancel), a running one is stopped on its worker (RQ's ``stop-job``
command; the job stores its partial reply as ``cancelled`` and sends ``chat.done`` with
``"cancelled": true``). The flag closes the race with a worker that dequeues the job in
between: the job reads it before it streams (jobs/chat/job.py). Whoever stores the
``cancelled`` row first announces it; the other finds the reply final and stays quiet.
"""

from __future__ import annotations

from typing import Any

from psycopg.rows import dict_row
from rq.job import JobStatus
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import Conflict, NotFound
from app.ids import parse_id
from app.openapi import STRING, Schema, errors, json_body, obj, operation
from app.security.auth import Principal, authenticate
from core import history, settings
from core.eventkinds import EventKind
from core.events import apublish_event
from core.jobkinds import chat_job_id
from core.replies import reply_id, store_reply
from core.statuses import FINAL_REPLY_STATUSES

# The flag outlives any job timeout; the job deletes nothing, it only reads it.
_CANCEL_FLAG_SECONDS = 86400


CANCEL_ACCEPTED = Schema(
    "CancelAccepted",
    obj(["message_id", "status"], {"message_id": STRING, "status": {"enum": ["cancelling"]}}),
)


@operation(
    "Stop a reply, queued or streaming; it ends with chat.done carrying cancelled: true",
    {"202": json_body(CANCEL_ACCEPTED, "Accepted")} | errors(401, 404, 409),
)
async def cancel_reply(request: Request) -> Response:
    principal = await authenticate(request)
    message_id = parse_id(request.path_params["message_id"])
    row = await _load(request, message_id, principal) if message_id else None
    if row is None or message_id is None:
        raise NotFound("No such message.")
    if row["reply_status"] in FINAL_REPLY_STATUSES:
        raise Conflict(
            "This reply has already ended.",
            code="reply_finished",
            details={"status": row["reply_status"]},
        )
    redis = request.app.state.redis
    await redis.set(f"{settings.REDIS_PREFIX}:chat:cancel:{message_id}", 1, ex=_CANCEL_FLAG_SECONDS)
    status = await request.app.state.jobs.cancel(chat_job_id(message_id))
    if status != JobStatus.STARTED:
        # It will not run (or Redis lost it): the web ends the reply itself.
        await _store_cancelled(request, principal.identity.key, message_id, row)
    return JSONResponse({"message_id": message_id, "status": "cancelling"}, status_code=202)


async def _load(request: Request, message_id: str, principal: Principal) -> dict[str, Any] | None:
    # Both halves of the owner: the same `sub` in another tenant is another person.
    async with request.app.state.pool.connection() as conn:
        cur = conn.cursor(row_factory=dict_row)
        await cur.execute(
            "SELECT m.conversation_id, r.status AS reply_status"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            " LEFT JOIN messages r ON r.id = %s"
            " WHERE m.id = %s AND m.role = 'user' AND c.tenant = %s AND c.user_id = %s",
            (reply_id(message_id), message_id, principal.tenant, principal.user_id),
        )
        row: dict[str, Any] | None = await cur.fetchone()
        return row


async def _store_cancelled(
    request: Request, owner: str, message_id: str, row: dict[str, Any]
) -> None:
    conversation_id = str(row["conversation_id"])
    async with request.app.state.pool.connection() as conn:
        stored = await store_reply(
            conn,
            message_id=message_id,
            conversation_id=conversation_id,
            cancelled=True,
        )
    if stored:
        redis = request.app.state.redis
        await history.ainvalidate_history(redis, owner, conversation_id)
        data = {
            "conversation_id": conversation_id,
            "message_id": message_id,
            "text": "",
            "model": None,
            "cancelled": True,
        }
        await apublish_event(request.app.state.events, EventKind.CHAT_DONE, data, owner=owner)


routes = [
    Route("/chat/messages/{message_id}/cancel", cancel_reply, methods=["POST"]),
]
