"""Chat over HTTP (API.md "Chat"): accept a message, enqueue the reply, read history.

The reply itself is made by the ``CHAT`` job kind (core/jobkinds.py) on a worker and streamed as
``chat.*`` events. History is read from PostgreSQL through a short-lived Redis cache;
every write bumps a generation number that is part of the cache key, so a reader that
raced a writer caches under a key nobody reads again (no stale window beyond a read).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from typing import Any

import orjson
import redis
import redis.asyncio
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.errors import BadRequest, InvalidJSON, NotFound, PayloadTooLarge
from app.ids import parse_id
from app.openapi import INTEGER, STRING, TIME, Schema, enum, errors, json_body, obj, operation
from app.security import ratelimit
from app.security.auth import Principal, authenticate
from core import drafts, history, jobkinds, replies, settings
from core.statuses import MessageStatus
from core.timestamps import rfc3339

# Room for JSON escapes: a message of CHAT_MAX_CHARS characters is at most 12 bytes
# each as "\\uXXXX\\uXXXX" surrogate pairs; anything bigger is refused unread.
_BODY_OVERHEAD = 4096


async def cached(request: Request, kind: str, owner: str, load: Any) -> bytes:
    client: redis.asyncio.Redis = request.app.state.redis
    generation = await client.get(history.generation_key(kind, owner))
    key = history.cache_key(kind, owner, generation)
    hit = await client.get(key)
    if hit is not None:
        return hit if isinstance(hit, bytes) else hit.encode()
    body: bytes = orjson.dumps(await load())
    await client.set(key, body, ex=max(1, settings.CHAT_HISTORY_CACHE_SECONDS))
    return body


# --- Input ---------------------------------------------------------------------------------


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


# --- Routes -----------------------------------------------------------------------------------
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
CONVERSATION_LIST = Schema(
    "ConversationList",
    obj(
        ["conversations"],
        {
            "conversations": {
                "type": "array",
                "items": obj(
                    ["conversation_id", "title", "created_at", "updated_at"],
                    {
                        "conversation_id": STRING,
                        "title": STRING,
                        "created_at": TIME,
                        "updated_at": TIME,
                    },
                ),
            }
        },
    ),
)
MESSAGE_LIST = Schema(
    "MessageList",
    obj(
        ["conversation_id", "messages"],
        {
            "conversation_id": STRING,
            "messages": {
                "type": "array",
                "items": obj(
                    ["message_id", "role", "text", "status", "created_at"],
                    {
                        "message_id": STRING,
                        "role": enum(["user", "assistant"]),
                        "text": STRING,
                        "status": enum(MessageStatus),
                        "created_at": TIME,
                        "model": STRING,
                        "error_code": STRING,
                        # The user message a reply answers (the id chat.* events carry).
                        "reply_to": STRING,
                        # A streaming reply's text holds chat.chunk indexes 0..chunks-1.
                        "chunks": INTEGER,
                    },
                ),
            },
        },
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


async def owns(request: Request, conversation_id: str, principal: Principal) -> bool:
    # Both halves of the owner: the same `sub` in another tenant is another person.
    async with request.app.state.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT 1 FROM conversations WHERE id = %s AND tenant = %s AND user_id = %s",
            (conversation_id, principal.tenant, principal.user_id),
        )
        return await cur.fetchone() is not None


@operation(
    "The caller's conversations, newest first",
    {"200": json_body(CONVERSATION_LIST)} | errors(401),
)
async def list_conversations(request: Request) -> Response:
    principal = await authenticate(request)

    async def load() -> dict[str, Any]:
        async with request.app.state.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "SELECT id, title, created_at, updated_at FROM conversations"
                " WHERE tenant = %s AND user_id = %s"
                " ORDER BY updated_at DESC, id DESC LIMIT %s",
                (principal.tenant, principal.user_id, settings.CHAT_CONVERSATIONS_PAGE_MAX),
            )
            rows = await cur.fetchall()
        return {
            "conversations": [
                {
                    "conversation_id": str(r["id"]),
                    "title": r["title"],
                    "created_at": rfc3339(r["created_at"]),
                    "updated_at": rfc3339(r["updated_at"]),
                }
                for r in rows
            ]
        }

    body = await cached(request, "conversations", principal.key, load)
    return Response(body, media_type="application/json")


@operation(
    "A conversation's messages in order",
    {"200": json_body(MESSAGE_LIST)} | errors(401, 404),
)
async def list_messages(request: Request) -> Response:
    principal = await authenticate(request)
    conversation_id = parse_id(request.path_params["conversation_id"])
    if conversation_id is None or not await owns(request, conversation_id, principal):
        raise NotFound("No such conversation.")

    async def load() -> dict[str, Any]:
        async with request.app.state.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            # The newest CHAT_HISTORY_MAX_MESSAGES, returned oldest first.
            await cur.execute(
                "SELECT * FROM (SELECT id, role, text, status, model, error_code, reply_to,"
                " created_at"
                " FROM messages WHERE conversation_id = %s"
                " ORDER BY created_at DESC, id DESC LIMIT %s) recent"
                " ORDER BY created_at, id",
                (conversation_id, settings.CHAT_HISTORY_MAX_MESSAGES),
            )
            rows = await cur.fetchall()
        return {
            "conversation_id": conversation_id,
            "messages": [
                {
                    "message_id": str(r["id"]),
                    "role": r["role"],
                    "text": r["text"],
                    "status": r["status"],
                    "created_at": rfc3339(r["created_at"]),
                    **({"model": r["model"]} if r["model"] else {}),
                    **({"error_code": r["error_code"]} if r["error_code"] else {}),
                    **({"reply_to": str(r["reply_to"])} if r["reply_to"] else {}),
                }
                for r in rows
            ],
        }

    # Tenancy was checked above, before the cache: a cached body never skips it.
    body = await cached(request, "messages", conversation_id, load)
    if b'"%s"' % MessageStatus.QUEUED.encode() in body:  # a reply may be streaming
        body = await with_drafts(request, body)
    return Response(body, media_type="application/json")


async def with_drafts(request: Request, body: bytes) -> bytes:
    """Each reply still streaming, as an assistant message holding its text so far,
    right after the user message it answers (core/drafts.py)."""
    data = orjson.loads(body)
    messages: list[dict[str, Any]] = data["messages"]
    answered = {m.get("reply_to") for m in messages if m["role"] == "assistant"}
    waiting = [
        m["message_id"]
        for m in messages
        if m["role"] == "user"
        and m["status"] == MessageStatus.QUEUED
        and m["message_id"] not in answered
    ]
    found = await drafts.read_drafts(request.app.state.redis, waiting)
    if not found:
        return body
    merged: list[dict[str, Any]] = []
    for m in messages:
        merged.append(m)
        draft = found.get(m["message_id"]) if m["role"] == "user" else None
        if draft is not None:
            merged.append(
                {
                    "message_id": replies.reply_id(m["message_id"]),
                    "role": "assistant",
                    "text": draft.text,
                    "status": MessageStatus.STREAMING,
                    "created_at": draft.started or rfc3339(dt.datetime.now(dt.UTC)),
                    "reply_to": m["message_id"],
                    "chunks": draft.chunks,
                }
            )
    return orjson.dumps({**data, "messages": merged})


routes = [
    Route("/chat/messages", post_message, methods=["POST"]),
    Route("/chat/conversations", list_conversations, methods=["GET"]),
    Route("/chat/conversations/{conversation_id}/messages", list_messages, methods=["GET"]),
]
