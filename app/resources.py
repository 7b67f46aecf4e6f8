"""The lifespan: every client the web process uses is opened here and closed here."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
import redis.asyncio
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from app.jobqueue import JobQueue
from app.security.auth import TokenVerifier
from app.security.ratelimit import RateLimiter
from app.security.throttle import AuthThrottle
from app.sse.hub import Hub
from app.sse.leases import StreamLeases
from core import eventclients, redispolicy, settings
from core.collector import gen0_threshold
from core.redisdriver import driver_info

logger = logging.getLogger("herald.resources")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    state = app.state
    state.verifier = TokenVerifier.from_settings()
    # A blocking pool: redis-py 8's default pool raises MaxConnectionsError at once past
    # 100 connections, so a burst of SSE connects (each a lease round trip) got 503s.
    # Waiting for a free connection is what a burst needs (scripts/bench_sse.py).
    state.redis = redis.asyncio.Redis.from_pool(
        redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            max_connections=settings.REDIS_POOL_MAX,
            timeout=settings.REDIS_POOL_TIMEOUT_SECONDS,
            health_check_interval=30,
            socket_connect_timeout=5,
            driver_info=driver_info(),
        )
    )
    # RQ is synchronous; it gets its own small pool, used from worker threads.
    state.sync_redis = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=5, driver_info=driver_info()
    )
    state.jobs = JobQueue(state.sync_redis)
    state.ratelimiter = RateLimiter.from_settings()
    state.auth_throttle = AuthThrottle.from_settings()
    # open(wait=False): the web process starts (and /healthz answers) even while
    # PostgreSQL is down; requests that need it get 503 until it is back.
    state.pool = AsyncConnectionPool(
        str(settings.DATABASE_URL),
        min_size=settings.DB_POOL_MIN,
        max_size=settings.DB_POOL_MAX,
        timeout=5,
        # psycopg_pool retries a lost connection with backoff (1, 2, 4, 8 s...) for up to
        # reconnect_timeout (default 300 s); after a PostgreSQL restart that backoff, not
        # PostgreSQL, set the recovery time (9-13 s in tests/faults). Giving up early lets
        # the next request grow the pool with an immediate attempt instead.
        reconnect_timeout=settings.DB_RECONNECT_SECONDS,
        open=False,
        kwargs={"autocommit": True},
    )
    await state.pool.open(wait=False)
    # The event bus: history reads and the web's own publishes (core/events.py).
    state.events = (
        eventclients.open_async_events_client(
            max_connections=settings.REDIS_POOL_MAX, timeout=settings.REDIS_POOL_TIMEOUT_SECONDS
        )
        if eventclients.separate()
        else state.redis
    )
    state.hub = Hub(
        settings.EVENTS_REDIS_URL,
        cluster=settings.EVENTS_REDIS_CLUSTER,
        queue_size=settings.SSE_QUEUE_SIZE,
        health_check_seconds=settings.HUB_HEALTH_CHECK_SECONDS,
        subscribe_timeout=settings.HUB_SUBSCRIBE_TIMEOUT_SECONDS,
    )
    await state.hub.start()
    state.leases = StreamLeases(
        state.redis,
        limit=settings.SSE_MAX_CONNECTIONS_PER_USER,
        ttl=settings.SSE_LEASE_SECONDS,
    )
    await state.leases.start()
    await _warn_of_eviction(state.redis)
    try:
        with gen0_threshold(settings.GC_GEN0_THRESHOLD):  # core/collector.py
            yield
    finally:
        await state.leases.stop()
        await state.hub.stop()
        await state.pool.close()
        await state.ratelimiter.aclose()
        await state.auth_throttle.aclose()
        if state.events is not state.redis:
            await state.events.aclose()
        await state.redis.aclose()
        state.sync_redis.close()


async def _warn_of_eviction(client: redis.asyncio.Redis) -> None:
    """Say at start when Redis would silently evict queued jobs (core/redispolicy.py)."""
    try:
        redispolicy.log_assessment(await redispolicy.acheck(client))
    except (redis.RedisError, OSError) as exc:
        logger.warning("could not check Redis's eviction policy: %s", exc)
