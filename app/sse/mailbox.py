"""A bounded queue of SSE frames for one connection, filled by the hub's readers.

A client too slow to drain it is cut off (it resumes from its Last-Event-ID) instead of
being buffered without bound.
"""

from __future__ import annotations

import asyncio
from collections import deque

from app import metrics


class Mailbox:
    """Frames waiting for one SSE connection; ``closed`` says why it must end."""

    __slots__ = ("_frames", "_loop", "_maxsize", "_waiter", "channel", "closed", "owner")

    def __init__(self, channel: str, maxsize: int) -> None:
        self.channel = channel
        self.closed: str | None = None
        self.owner: object = None  # the hub's shard that fills it
        self._frames: deque[bytes] = deque()
        self._maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    def put(self, frame: bytes) -> None:
        if self.closed is not None:
            return
        if len(self._frames) >= self._maxsize:
            self._frames.clear()
            self.close("slow_client")
            metrics.SLOW_CLIENTS_DROPPED.inc()
            return
        self._frames.append(frame)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self, reason: str) -> None:
        if self.closed is None:
            self.closed = reason
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def drain(self) -> list[bytes]:
        frames = list(self._frames)
        self._frames.clear()
        return frames

    async def wait(self, timeout: float) -> list[bytes]:
        """Everything queued, waiting up to ``timeout`` seconds for at least one frame."""
        if not self._frames and self.closed is None:
            # A bare future plus call_later is far cheaper per connection than
            # asyncio.wait_for, which wraps every wait in a new Task.
            waiter = self._loop.create_future()
            self._waiter = waiter
            timer = self._loop.call_later(timeout, _resolve, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self._waiter = None
        return self.drain()


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
