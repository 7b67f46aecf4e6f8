"""What chat jobs on one event loop share: a PostgreSQL pool, the upstream HTTP client
with its keep-alive pool and concurrency cap, the circuit breaker, and Redis clients.

A chat worker (``jobs.worker.asyncworker.AsyncWorker``) opens one ``ChatRuntime`` as the
lifespan of its loop, so a job starts streaming without connecting anywhere first (a TLS
handshake to a real provider costs tens of milliseconds). A job run elsewhere (RQ's
``SimpleWorker`` runs each coroutine job under its own ``asyncio.run``; tests; benches)
finds no runtime for its loop and opens one for itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from core import eventclients, settings
from core.eventclients import AsyncEventsClient
from core.redisdriver import driver_info
from jobs.chat.breaker import Breaker
from jobs.chat.llm import ProviderHandle, configured_model, open_provider
from jobs.chat.outbox import Outbox

_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ChatRuntime] = (
    weakref.WeakKeyDictionary()
)


class ChatRuntime:
    def __init__(
        self,
        pool: AsyncConnectionPool[AsyncConnection[dict[str, Any]]],
        handle: ProviderHandle,
        aredis: redis.asyncio.Redis,
        events: AsyncEventsClient | None = None,
    ) -> None:
        self.pool = pool
        self.handle = handle
        self.redis = aredis
        # The event bus (EVENTS_REDIS_URL): the same client unless it is another Redis.
        self.events: AsyncEventsClient = aredis if events is None else events
        # Chunk and event writes of every reply on the loop, batched (jobs/chat/outbox.py).
        self.outbox = Outbox(aredis)
        # One breaker per process, shared by its replies (its state lives in Redis).
        self.breaker = Breaker.for_llm(aredis, handle.provider.name, configured_model())
        # Replies streaming from the upstream at once, per process: real APIs rate-limit
        # concurrent requests. Beyond it a reply waits here, inside its job timeout.
        self.upstream = asyncio.Semaphore(max(1, settings.LLM_MAX_CONCURRENCY))


async def _configure(conn: AsyncConnection[Any]) -> None:
    # What the LangGraph checkpointer expects of a connection it is given (autocommit,
    # dict rows, no prepared statements: langgraph-checkpoint-postgres README).
    await conn.set_autocommit(True)


@contextlib.asynccontextmanager
async def open_runtime(pool_size: int | None = None) -> AsyncIterator[ChatRuntime]:
    """Open everything a chat job needs on the running loop, and close it after."""
    size = max(1, pool_size or settings.CHAT_DB_POOL_MAX)
    pool: AsyncConnectionPool[AsyncConnection[dict[str, Any]]] = AsyncConnectionPool(
        str(settings.DATABASE_URL),
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "prepare_threshold": None, "row_factory": dict_row},
        configure=_configure,
        open=False,
        timeout=settings.CHAT_DB_POOL_TIMEOUT_SECONDS,
        reconnect_timeout=settings.DB_RECONNECT_SECONDS,
    )
    await pool.open()
    # A blocking pool: a burst of replies past REDIS_POOL_MAX waits for a connection
    # (redis-py's default pool refuses at once past its size, 100 when none is given).
    aredis = redis.asyncio.Redis.from_pool(
        redis.asyncio.BlockingConnectionPool.from_url(
            settings.REDIS_URL,
            socket_connect_timeout=5,
            max_connections=settings.REDIS_POOL_MAX,
            timeout=settings.REDIS_POOL_TIMEOUT_SECONDS,
            driver_info=driver_info(),
        )
    )
    events = (
        eventclients.open_async_events_client(
            max_connections=settings.REDIS_POOL_MAX, timeout=settings.REDIS_POOL_TIMEOUT_SECONDS
        )
        if eventclients.separate()
        else aredis
    )
    handle = open_provider()
    runtime = ChatRuntime(pool, handle, aredis, events)
    loop = asyncio.get_running_loop()
    _by_loop[loop] = runtime
    try:
        yield runtime
    finally:
        _by_loop.pop(loop, None)
        await handle.aclose()
        if events is not aredis:
            await events.aclose()
        await aredis.aclose()
        await pool.close()


@contextlib.asynccontextmanager
async def chat_runtime() -> AsyncIterator[ChatRuntime]:
    """The loop's shared runtime if a worker opened one, else one for this job only."""
    shared = _by_loop.get(asyncio.get_running_loop())
    if shared is not None:
        yield shared
        return
    async with open_runtime(pool_size=2) as own:
        yield own
