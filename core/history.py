"""Keys of the chat history cache, and their invalidation by generation number.

The web caches a conversation's messages and a user's conversation list; the worker
changes both when a reply is stored. Rather than delete cached bodies, each writer
bumps a generation counter that is part of the cache key, so a stale body can never be
read again and simply expires.
"""

from __future__ import annotations

import redis
import redis.asyncio

from core import settings


def generation_key(kind: str, owner: str) -> str:
    return f"{settings.REDIS_PREFIX}:chat:gen:{kind}:{owner}"


def cache_key(kind: str, owner: str, generation: bytes | str | None) -> str:
    gen = generation.decode() if isinstance(generation, bytes) else (generation or "0")
    return f"{settings.REDIS_PREFIX}:chat:cache:{kind}:{owner}:{gen}"


def queue_invalidation(
    pipe: redis.client.Pipeline | redis.asyncio.client.Pipeline, owner: str, conversation_id: str
) -> None:
    """Add the invalidation to a pipeline that another write is sending anyway."""
    for kind, part in (("messages", conversation_id), ("conversations", owner)):
        pipe.incr(generation_key(kind, part))
        pipe.expire(generation_key(kind, part), 86400)


def invalidate_history(client: redis.Redis, owner: str, conversation_id: str) -> None:
    """Make cached history of this conversation and its owner's list unreadable (worker
    side). ``owner`` is ``Identity.key`` (core/principal.py), never ``sub`` alone."""
    pipe = client.pipeline(transaction=False)
    queue_invalidation(pipe, owner, conversation_id)
    pipe.execute()


async def ainvalidate_history(
    client: redis.asyncio.Redis, owner: str, conversation_id: str
) -> None:
    pipe = client.pipeline(transaction=False)
    queue_invalidation(pipe, owner, conversation_id)
    await pipe.execute()
