"""Reply pieces into ``chat.chunk`` events: ``ChunkPublisher``, one per reply.

Pieces that arrive within ``CHAT_CHUNK_COALESCE_SECONDS`` of the last event go out as one
``chat.chunk`` (the text is the same, the Redis and SSE work per piece is not); the first
piece is never held back. Each event's text is also appended to the reply's draft
(core/drafts.py) in the same write, so a page that reloads mid-reply finds it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from redis.asyncio.client import Pipeline

from core import settings
from core.drafts import add_chunk
from core.eventclients import AsyncEventsClient
from core.eventkinds import EventKind
from core.events import apublish_event, aqueue_event
from core.jobmetrics import metric_field
from jobs.chat.outbox import Outbox


class ChunkPublisher:
    """Publishes reply pieces as ``chat.chunk`` events, coalescing within a window.

    The first piece goes out at once. After it, a piece never waits for an event to be
    written: it joins the pending text, and the next event leaves when the window since the
    last one has passed and that one is written, carrying everything that came meanwhile.
    So a busy loop, whose writes take longer than the window, sends fewer, larger events
    instead of one per piece (an awaited write per piece held the reading of the stream
    back and made every piece its own event under load). Events leave one at a time, in
    order (one lock), so indexes are gapless; a write that failed fails the next ``add``
    or ``close``, as an awaited one would have. A window of 0 sends one event per piece.
    """

    def __init__(
        self,
        outbox: Outbox,
        bus: AsyncEventsClient | None,
        owner: str,
        base: dict[str, Any],
        started: float,
        labels: dict[str, str],
    ) -> None:
        self.outbox, self.bus, self.owner, self.base = outbox, bus, owner, base
        self.started, self.labels = started, labels
        self.window = settings.CHAT_CHUNK_COALESCE_SECONDS
        self.events = 0
        self._pending: list[str] = []
        self._last = float("-inf")
        self._lock = asyncio.Lock()
        self._due = False  # a flush is scheduled or waiting for the lock: it takes new pieces
        self._timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._error: BaseException | None = None

    async def add(self, text: str) -> None:
        if self._error is not None:
            raise self._error
        self._pending.append(text)
        if self._due:
            return
        if self.window <= 0 or (self.events == 0 and not self._lock.locked()):
            await self.flush()  # the first piece, or no coalescing: at once
            return
        self._due = True
        loop = asyncio.get_running_loop()
        wait = self._last + self.window - loop.time()
        if wait > 0:
            self._timer = loop.call_later(wait, self._flush_later)
        else:
            self._flush_later()

    def _flush_later(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.flush())
        self._flushes.add(task)
        task.add_done_callback(self._flushed)

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushes.discard(task)
        if not task.cancelled() and task.exception() is not None and self._error is None:
            self._error = task.exception()

    async def flush(self) -> None:
        async with self._lock:
            self._due = False  # pieces from now on need another flush
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            self._last = asyncio.get_running_loop().time()
            index = self.events
            self.events += 1
            data = {**self.base, "index": index, "text": text}
            # The draft before the event, in one round trip where the bus is the same
            # Redis (else two): whoever saw the event and reloads finds the chunk in
            # the draft (core/drafts.py).
            shared = self.bus is None

            async def write(pipe: Pipeline) -> None:
                add_chunk(pipe, self.base["message_id"], index, text)
                if shared:
                    await aqueue_event(pipe, EventKind.CHAT_CHUNK, data, owner=self.owner)
                if index == 0:
                    self._first(pipe)

            await self.outbox.send(write)
            if self.bus is not None:
                await apublish_event(self.bus, EventKind.CHAT_CHUNK, data, owner=self.owner)

    def _first(self, pipe: Pipeline) -> None:
        first = max(0.0, time.time() - self.started)
        for name, amount in (
            ("herald_chat_first_chunk_seconds_sum_total", first),
            ("herald_chat_first_chunk_seconds_count_total", 1.0),
        ):
            pipe.hincrbyfloat(*metric_field(name, self.labels), amount)
        pipe.hset(*metric_field("herald_chat_first_chunk_seconds_last", self.labels), first)

    async def close(self) -> None:
        """Send what is pending now, after the events on their way; raises a failed write."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
        if self._error is not None:
            raise self._error
        await self.flush()
