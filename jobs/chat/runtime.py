"""What a chat worker process keeps between jobs: one event loop, and the connections
that live on it (PostgreSQL, the upstream HTTP client with its keep-alive pool).

A job would otherwise connect to PostgreSQL (~2 ms on loopback) and open a new HTTPS
connection to the model (a TLS handshake: tens of milliseconds to a real provider)
before its first token. RQ runs one job at a time per process (``SimpleWorker``), so
nothing here is shared by two jobs at once. After a job that escaped with an exception
(a job timeout, a crash) everything is closed and rebuilt by the next job: its state is
unknown. Keyed by process id (a forked horse never uses its parent's sockets) and by
thread (tests call jobs from threads).
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row

from core import settings
from jobs.chat.llm import ProviderHandle, open_provider

logger = logging.getLogger("herald.runtime")
T = TypeVar("T")


def provider_key() -> tuple[Any, ...]:
    # Everything open_provider reads: a changed setting (tests) means a new client.
    return (
        settings.LLM_PROVIDER,
        settings.LLM_BASE_URL,
        str(settings.LLM_API_KEY),
        settings.LLM_MODEL,
        settings.LLM_CONNECT_TIMEOUT_SECONDS,
        settings.LLM_TIMEOUT_SECONDS,
        settings.LLM_FIRST_TOKEN_TIMEOUT_SECONDS,
        settings.LLM_IDLE_TIMEOUT_SECONDS,
        settings.LLM_MAX_TOKENS,
        settings.DEMO_WORD_DELAY_SECONDS,
    )


class ProcessRuntime:
    def __init__(self) -> None:
        self.runner = asyncio.Runner()
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._handle: ProviderHandle | None = None
        self._handle_key: tuple[Any, ...] | None = None

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        conn = self._conn
        healthy = (
            conn is not None
            and not conn.closed
            and not conn.broken
            and conn.info.transaction_status == TransactionStatus.IDLE
        )
        if not healthy:
            if conn is not None:
                await conn.close()
            # prepare_threshold=0 and dict rows: what the LangGraph checkpointer expects
            # of a connection it is given (langgraph-checkpoint-postgres README).
            self._conn = conn = await psycopg.AsyncConnection.connect(
                str(settings.DATABASE_URL),
                autocommit=True,
                prepare_threshold=0,
                row_factory=dict_row,
            )
        assert conn is not None
        return conn

    async def provider(self) -> ProviderHandle:
        key = provider_key()
        if self._handle is None or self._handle_key != key:
            if self._handle is not None:
                await self._handle.aclose()
            self._handle, self._handle_key = open_provider(), key
        return self._handle

    async def _aclose(self) -> None:
        if self._handle is not None:
            await self._handle.aclose()
            self._handle = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    def close(self) -> None:
        try:
            self.runner.run(self._aclose())
        except Exception:
            logger.warning("closing a chat runtime failed", exc_info=True)
        finally:
            self.runner.close()


_runtimes: dict[tuple[int, int], ProcessRuntime] = {}
_lock = threading.Lock()


def run(job: Callable[[ProcessRuntime], Coroutine[Any, Any, T]]) -> T:
    """Run ``job(runtime)`` on this process's (and thread's) loop."""
    key = (os.getpid(), threading.get_ident())
    with _lock:
        runtime = _runtimes.get(key)
        if runtime is None:
            runtime = _runtimes[key] = ProcessRuntime()
    try:
        # asyncio.Runner keeps the context it captured when it was created (during the
        # first job) unless given one: without a fresh copy, RQ's get_current_job()
        # (a ContextVar) would answer that first job for every later one.
        return runtime.runner.run(job(runtime), context=contextvars.copy_context())
    except BaseException:
        with _lock:
            _runtimes.pop(key, None)
        runtime.close()
        raise


@atexit.register
def close_all() -> None:
    with _lock:
        mine = [k for k in _runtimes if k[0] == os.getpid()]
        runtimes = [_runtimes.pop(k) for k in mine]
    for runtime in runtimes:
        runtime.close()
