"""The event loop an ``AsyncWorker`` runs its jobs on, in a thread of its own.

RQ's work loop stays on the main thread (dequeuing, heartbeats, signals); the jobs run here.
The lifespan's resources (database pool, Redis clients) open on this loop before the first
job and close after the last job's task has ended; helper tasks (the loop-lag probe, the
running-jobs record) start once the lifespan is open and are cancelled at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

logger = logging.getLogger("herald.worker")

Lifespan = Callable[[], contextlib.AbstractAsyncContextManager[Any]]
Helpers = Callable[[], list[asyncio.Task[None]]]
T = TypeVar("T")


class LoopThread:
    def __init__(self, lifespan: Lifespan | None = None, helpers: Helpers | None = None) -> None:
        self._lifespan = lifespan
        self._helpers = helpers
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._job_tasks: set[asyncio.Task[Any]] = set()  # touched on the loop thread only

    def start(self) -> None:
        """Start the thread; return once the lifespan is open (or raise if it failed)."""
        loop = asyncio.new_event_loop()
        self.loop = loop

        def run() -> None:
            try:
                loop.run_until_complete(self._main())
            except BaseException as exc:
                self._error = exc
                logger.exception("the worker's event loop failed")
            finally:
                self._ready.set()
                loop.close()

        self._thread = threading.Thread(target=run, name="rq-async-loop", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError("the worker's event loop did not start") from self._error

    async def _main(self) -> None:
        async with self._lifespan() if self._lifespan else _nothing():
            self._stop = asyncio.Event()
            helpers = self._helpers() if self._helpers else []
            self._ready.set()
            await self._stop.wait()
            for task in helpers:
                task.cancel()
            # Lifespan resources close only after every job's task has ended. Not every
            # task: the lifespan's own (a connection pool's workers) end only when it
            # closes, so waiting for them held shutdown for the thread's 30 s join timeout
            # and left the lifespan unclosed.
            await asyncio.gather(*self._job_tasks, *helpers, return_exceptions=True)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run `coro` as a job's task on the loop (thread-safe); the loop waits for it."""
        assert self.loop is not None, "not started"

        async def tracked() -> T:
            task = asyncio.current_task()
            assert task is not None
            self._job_tasks.add(task)
            task.add_done_callback(self._job_tasks.discard)
            return await coro

        return asyncio.run_coroutine_threadsafe(tracked(), self.loop)

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Thread-safe; a no-op once the loop has closed."""
        if self.loop is not None and not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(callback, *args)

    def stop(self, timeout: float = 30) -> None:
        """Let the running jobs end, close the lifespan, join the thread."""
        if self._thread is None or self._stop is None:
            return
        self.call_soon(self._stop.set)
        self._thread.join(timeout=timeout)


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield
