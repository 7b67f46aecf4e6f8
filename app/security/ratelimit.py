"""Per-user request limits shared by every web process through Redis.

Built on the ``limits`` library (moving-window strategy: exact counts over the last
window, not fixed clock buckets, so a burst at a bucket edge cannot double the limit).
Answers carry the IETF RateLimit header fields (draft-ietf-httpapi-ratelimit-headers:
``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` in delta seconds) on success and on
refusal, and ``Retry-After`` (RFC 9110 section 10.2.3) on refusal.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import redis.asyncio
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.requests import Request

from app import metrics
from app.errors import RateLimited
from core import settings
from core.redisdriver import driver_info

RateLimitHeaders = dict[str, str]


@functools.cache
def parse_limit(limit_string: str) -> RateLimitItem:
    # "50/hour", "10 per minute", ...: the limits library's notation. A bad setting
    # fails at first use with a ValueError naming the string.
    return parse(limit_string)


def open_storage(redis_url: str, key_prefix: str) -> RedisStorage:
    # limits takes "async+redis://..." and, with implementation="redispy", a redis.asyncio
    # connection pool of ours (limits/aio/storage/redis/redispy.py, use_basic). A blocking
    # one, as the web's own (app/resources.py): redis-py's default pool refuses at once
    # past max_connections, so a burst of POSTs beyond REDIS_POOL_MAX got 503s
    # (scripts/bench_chat_concurrency.py, K=500); waiting for a connection is right.
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        redis_url,
        max_connections=settings.REDIS_POOL_MAX,
        timeout=settings.REDIS_POOL_TIMEOUT_SECONDS,
        socket_connect_timeout=5,
        driver_info=driver_info(),
    )
    # limits types its options as scalars; it hands them to redis-py as they are.
    options: dict[str, Any] = {"connection_pool": pool}
    return RedisStorage(
        "async+" + redis_url, implementation="redispy", key_prefix=key_prefix, **options
    )


async def close_storage(storage: RedisStorage) -> None:
    # limits has no close(); its redis-py client is the bridge's ``storage``
    # (limits/aio/storage/redis/redispy.py, untyped on the base bridge). A client given
    # a pool does not close it.
    bridge: Any = storage.bridge
    await bridge.storage.aclose()
    await bridge.storage.connection_pool.disconnect()


class RateLimiter:
    """One per web process (lifespan); the counters themselves live in Redis."""

    def __init__(self, redis_url: str, key_prefix: str) -> None:
        self._storage = open_storage(redis_url, key_prefix)
        self._limiter = MovingWindowRateLimiter(self._storage)

    @classmethod
    def from_settings(cls) -> RateLimiter:
        return cls(settings.REDIS_URL, f"{settings.REDIS_PREFIX}:ratelimit")

    async def aclose(self) -> None:
        await close_storage(self._storage)

    async def hit(self, limit_name: str, limit_string: str, identity: str) -> RateLimitHeaders:
        """Count one request; returns the headers, or raises ``RateLimited`` with them."""
        allowed = await self.acquire(limit_name, limit_string, identity)
        headers = await self.headers(limit_name, limit_string, identity)
        if not allowed:
            raise refusal(limit_name, limit_string, headers)
        return headers

    async def acquire(self, limit_name: str, limit_string: str, identity: str) -> bool:
        """Count one request if it is within the limit; True when it was."""
        return await self._limiter.hit(parse_limit(limit_string), limit_name, identity)

    async def headers(self, limit_name: str, limit_string: str, identity: str) -> RateLimitHeaders:
        """The ``RateLimit-*`` headers of the current window (after ``acquire``). A
        second round trip, so a caller may run it beside its own work."""
        item = parse_limit(limit_string)
        reset_at, remaining = await self._limiter.get_window_stats(item, limit_name, identity)
        return {
            "RateLimit-Limit": str(item.amount),
            "RateLimit-Remaining": str(max(0, remaining)),
            "RateLimit-Reset": str(max(0, math.ceil(reset_at - time.time()))),
        }

    async def clear(self, limit_name: str, limit_string: str, identity: str) -> None:
        await self._limiter.clear(parse_limit(limit_string), limit_name, identity)


def refusal(limit_name: str, limit_string: str, headers: RateLimitHeaders) -> RateLimited:
    """The 429 for a request ``acquire`` refused, for the caller to raise; ``headers``
    are that window's, from ``RateLimiter.headers``. Counts the refusal."""
    metrics.RATE_LIMITED.labels(limit_name).inc()
    item = parse_limit(limit_string)
    retry_after = max(1, int(headers["RateLimit-Reset"]))
    return RateLimited(
        f"At most {item.amount} per {_period(item)}; retry in {retry_after} s.",
        details={"limit": limit_string, "retry_after_seconds": retry_after},
        headers={**headers, "Retry-After": str(retry_after)},
    )


def _period(item: RateLimitItem) -> str:
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"


async def hit(
    request: Request, limit_name: str, limit_string: str, user_id: str
) -> RateLimitHeaders:
    """Count one request of ``user_id`` against ``limit_string`` (e.g. ``"50/hour"``).

    ``limit_name`` keeps limits apart ("chat", "upload") and labels the metric. Raises
    ``RateLimited`` (429, with ``Retry-After`` and ``RateLimit-*``) when over; else
    returns the ``RateLimit-*`` headers for the success response.
    """
    limiter: RateLimiter = request.app.state.ratelimiter
    return await limiter.hit(limit_name, limit_string, user_id)
