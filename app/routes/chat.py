"""``POST /chat/messages`` (API.md "Chat"): accept a message and enqueue its reply.

The reply itself is made by the ``CHAT`` job kind (core/jobkinds.py) on a worker and
streamed as ``chat.*`` events; history is read by app/routes/conversations.py.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import BadRequest, InvalidJSON, NotFound, PayloadTooLarge
from app.ids import parse_id
from app.openapi import STRING, Schema, errors, json_body, obj, operation
from app.routes.conversations import owns
from app.security import ratelimit
from app.security.auth import authenticate
from core import history, jobkinds, settings
from core.statuses import MessageStatus

# Room for JSON escapes: a message of CHAT_MAX_CHARS characters is at most 12 bytes
# each as "\\uXXXX\\uXXXX" surrogate pairs; anything bigger is refused unread.
_BODY_OVERHEAD = 4096


async def read_message(request: Request) -> tuple[str, str | None]:
    limit = settings.CHAT_MAX_CHARS * 12 + _BODY_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidJSON() from None
    if not isinstance(data, dict):
        raise BadRequest("The body must be a JSON object.")
    message = data.get("message")
    if not isinstance(message, str):
        raise BadRequest("'message' must be a string.", details={"field": "message"})
    if not message.strip():
        raise BadRequest("'message' must not be empty.", details={"field": "message"})
    if len(message) > settings.CHAT_MAX_CHARS:
        raise _too_large()
    if "\x00" in message:
        # PostgreSQL text cannot hold NUL; refuse it here rather than fail at INSERT.
        raise BadRequest("'message' must not contain NUL characters.", details={"field": "message"})
    conversation_id = data.get("conversation_id")
    if conversation_id is not None and not isinstance(conversation_id, str):
        raise BadRequest(
            "'conversation_id' must be a string.", details={"field": "conversation_id"}
        )
    return message, conversation_id


def _too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"A message may hold at most {settings.CHAT_MAX_CHARS} characters.",
        code="message_too_large",
        details={"max_chars": settings.CHAT_MAX_CHARS},
    )


CHAT_MESSAGE = Schema(
    "ChatMessage",
    obj(["message"], {"message": {"type": "string", "minLength": 1}, "conversation_id": STRING}),
)
CHAT_ACCEPTED = Schema(
    "ChatAccepted",
    obj(
        ["conversation_id", "message_id", "job_id"],
        {"conversation_id": STRING, "message_id": STRING, "job_id": STRING},
    ),
)


@operation(
    "Send a chat message; the reply streams on /events",
    {"202": json_body(CHAT_ACCEPTED, "Accepted")} | errors(400, 401, 404, 413, 422, 429, 503),
    body={"required": True, "content": {"application/json": {"schema": CHAT_MESSAGE}}},
)
async def post_message(request: Request) -> Response:
    principal = await authenticate(request)
    message, conversation_id = await read_message(request)
    if conversation_id is not None:
        conversation_id = parse_id(conversation_id)
        if conversation_id is None or not await owns(request, conversation_id, principal):
            raise NotFound("No such conversation.")
    limiter: ratelimit.RateLimiter = request.app.state.ratelimiter
    limit = settings.CHAT_RATE_LIMIT
    if not await limiter.acquire("chat", limit, principal.key):
        headers = await limiter.headers("chat", limit, principal.key)
        raise ratelimit.refusal("chat", limit, headers)
    message_id = str(uuid.uuid4())
    if conversation_id is None:
        conversation_id = str(uuid.uuid4())
        parent = _NEW_CONVERSATION
        params: tuple[Any, ...] = (
            conversation_id,
            principal.user_id,
            principal.tenant,
            _title(message),
        )
    else:
        parent, params = _TOUCH_CONVERSATION, (conversation_id,)

    async def store() -> None:
        async with request.app.state.pool.connection() as conn:
            # One statement, one round trip, atomic on its own (autocommit): the
            # conversation row and the message row; the foreign key is checked at the
            # statement's end, when the CTE's row exists (PostgreSQL docs,
            # "Data-Modifying Statements in WITH").
            cur = await conn.execute(
                parent + _INSERT_MESSAGE, (*params, message_id, message, MessageStatus.QUEUED)
            )
            if cur.rowcount != 1:  # the conversation was deleted after the ownership check
                raise NotFound("No such conversation.")

    # The request is counted; reading the window back for the headers need not hold up
    # the job, so it runs beside the write.
    headers, _ = await asyncio.gather(limiter.headers("chat", limit, principal.key), store())
    # The worker never reads the history cache, so its invalidation runs beside the
    # enqueue rather than before it (both are done before the 202).
    job_id, _ = await asyncio.gather(
        request.app.state.jobs.enqueue(
            jobkinds.CHAT,
            message_id,
            job_id=jobkinds.chat_job_id(message_id),
            # Fairness: one user's replies in flight are capped; the rest wait their turn.
            limit=(f"chat-user:{principal.identity.key}", settings.CHAT_USER_CONCURRENCY),
        ),
        history.ainvalidate_history(request.app.state.redis, principal.key, conversation_id),
    )
    body = {"conversation_id": conversation_id, "message_id": message_id, "job_id": job_id}
    return JSONResponse(body, status_code=202, headers=headers)


_NEW_CONVERSATION = (
    "WITH parent AS (INSERT INTO conversations (id, user_id, tenant, title)"
    " VALUES (%s, %s, %s, %s) RETURNING id)"
)
_TOUCH_CONVERSATION = (
    "WITH parent AS (UPDATE conversations SET updated_at = now() WHERE id = %s RETURNING id)"
)
_INSERT_MESSAGE = (
    " INSERT INTO messages (id, conversation_id, role, text, status)"
    " SELECT %s, parent.id, 'user', %s, %s FROM parent"
)


def _title(message: str) -> str:
    first = " ".join(message.split())
    return first if len(first) <= 80 else first[:79] + "…"


routes = [
    Route("/chat/messages", post_message, methods=["POST"]),
]
