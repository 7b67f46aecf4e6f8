"""Chat history over HTTP (API.md "Chat"): the caller's conversations and their messages.

History is read from PostgreSQL through a short-lived Redis cache; every write bumps a
generation number that is part of the cache key (core/history.py), so a reader that
raced a writer caches under a key nobody reads again (no stale window beyond a read).
A reply still streaming is shown from its draft (core/drafts.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import redis.asyncio
from psycopg.rows import dict_row
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.errors import NotFound
from app.ids import parse_id
from app.openapi import INTEGER, STRING, TIME, Schema, enum, errors, json_body, obj, operation
from app.security.auth import Principal, authenticate
from core import drafts, history, replies, settings
from core.statuses import MessageStatus
from core.timestamps import rfc3339

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
    Route("/chat/conversations", list_conversations, methods=["GET"]),
    Route("/chat/conversations/{conversation_id}/messages", list_messages, methods=["GET"]),
]
