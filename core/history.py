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


def invalidate_history(client: redis.Redis, user_id: str, conversation_id: str) -> None:
    """Make cached history of this conversation and user's list unreadable (worker side)."""
    pipe = client.pipeline(transaction=False)
    for kind, owner in (("messages", conversation_id), ("conversations", user_id)):
        pipe.incr(generation_key(kind, owner))
        pipe.expire(generation_key(kind, owner), 86400)
    pipe.execute()


async def ainvalidate_history(
    client: redis.asyncio.Redis, user_id: str, conversation_id: str
) -> None:
    pipe = client.pipeline(transaction=False)
    for kind, owner in (("messages", conversation_id), ("conversations", user_id)):
        pipe.incr(generation_key(kind, owner))
        pipe.expire(generation_key(kind, owner), 86400)
    await pipe.execute()
