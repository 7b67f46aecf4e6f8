"""Drafts: the text so far of chat replies still streaming.

The reply row is stored once, when the turn ends (jobs/chat/agent.py ``persist``), so
a client that reloads mid-reply could read nothing of it and had to show the rest of
the reply mid-sentence. The worker therefore keeps each reply's chunks in a Redis list
while it streams (one ``RPUSH`` per ``chat.chunk``, list position = chunk ``index``),
and the web includes the draft in ``GET /chat/conversations/{id}/messages`` as an
assistant message with ``status: "streaming"`` and ``chunks``: the number of chunks its
text holds, so a client resuming the event stream skips ``chat.chunk`` events whose
``index`` is below it. The draft is deleted once the reply row is stored; it expires
on its own after a crashed turn.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import redis
import redis.asyncio

from core import settings
from core.timestamps import rfc3339


def _chunks_key(message_id: str) -> str:
    return f"{settings.REDIS_PREFIX}:chat:draft:{message_id}"


def _started_key(message_id: str) -> str:
    return f"{settings.REDIS_PREFIX}:chat:draft-started:{message_id}"


def _ttl() -> int:
    # No turn outlives its job; a draft left by a killed worker goes with it.
    return max(1, settings.CHAT_JOB_TIMEOUT_SECONDS)


# --- Worker side ----------------------------------------------------------------------------
def draft_keys(message_id: str) -> list[str]:
    """Everything a draft holds: a (re-)run of a turn deletes them to stream from index 0
    again (a non-zero count means an earlier run had streamed: a restart); the end of a
    turn deletes them once the reply row is stored."""
    return [_chunks_key(message_id), _started_key(message_id)]


def add_chunk(
    pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline,
    message_id: str,
    index: int,
    text: str,
) -> None:
    """Queue the chunk on ``pipe``; the caller sends it with the chunk's event, before
    it, so a draft read after a client saw chunk ``i`` holds chunk ``i`` too."""
    key = _chunks_key(message_id)
    pipe.rpush(key, text)
    pipe.expire(key, _ttl())
    if index == 0:
        pipe.set(_started_key(message_id), rfc3339(dt.datetime.now(dt.UTC)), ex=_ttl())


def discard_draft(client: redis.Redis, message_id: str) -> None:
    """Called after the reply row is stored: from then on history has the whole text."""
    client.delete(*draft_keys(message_id))


# --- Web side (asyncio Redis) -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Draft:
    text: str
    chunks: int
    started: str


async def read_drafts(client: redis.asyncio.Redis, message_ids: Sequence[str]) -> dict[str, Draft]:
    """The drafts of these user messages' replies, for those that have one."""
    if not message_ids:
        return {}
    pipe = client.pipeline(transaction=False)
    for message_id in message_ids:
        pipe.lrange(_chunks_key(message_id), 0, -1)
        pipe.get(_started_key(message_id))
    results = await pipe.execute()
    drafts = {}
    for n, message_id in enumerate(message_ids):
        chunks, started = results[2 * n], results[2 * n + 1]
        if not chunks:
            continue
        text = "".join(c.decode() if isinstance(c, bytes) else c for c in chunks)
        stamp = started.decode() if isinstance(started, bytes) else started
        drafts[message_id] = Draft(text, len(chunks), stamp or "")
    return drafts
