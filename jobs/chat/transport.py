"""The upstream HTTP transport: keep-alive pools sized for hundreds of streams at once.

httpx's default pool (``httpx.Limits``: 100 connections, 20 kept alive) would queue the
101st concurrent reply until the pool time-out and reconnect after every burst. And
httpcore's pool scans every connection for every queued request each time a request
starts or a response closes (``AsyncConnectionPool._assign_requests_to_connections``),
so one pool of n streaming connections costs O(n) per event, O(n²) per burst: at 500
streams it was a third of the chat worker's loop (docs/benchmarks.md). Its idle check is
itself O(n) per idle connection (httpcore 1.0.9 builds the whole ``is_idle`` list for each
one), so a pool of n mostly idle keep-alive connections costs O(n²) per event: with 32 per
pool that was ~20 % of a reply's CPU. Here requests go to pools of ``SHARD_SIZE`` streams
each (4: 6.5 -> 5.0 ms of worker CPU per reply against 32, 200 replies at once), filling
the first pool with room, so a quiet worker keeps reusing one warm connection; the total
is bounded by ``LLM_MAX_CONCURRENCY`` (the semaphore in ``ChatRuntime``).
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator, Callable

import httpx

SHARD_SIZE = 4


class SpreadTransport(httpx.AsyncBaseTransport):
    """Several ``httpx.AsyncHTTPTransport`` pools; a request goes to the first with
    fewer than ``SHARD_SIZE`` open responses (else to the least busy)."""

    def __init__(self, max_concurrency: int, verify: ssl.SSLContext) -> None:
        shards = max(1, math.ceil(max_concurrency / SHARD_SIZE))
        # A pool may open more than its share when the others are full; it keeps its
        # share alive.
        limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=SHARD_SIZE)
        self._pools = [
            httpx.AsyncHTTPTransport(verify=verify, limits=limits) for _ in range(shards)
        ]
        self._open = [0] * shards

    def _pick(self) -> int:
        for i, n in enumerate(self._open):
            if n < SHARD_SIZE:
                return i
        return min(range(len(self._open)), key=self._open.__getitem__)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = self._pick()
        self._open[i] += 1
        try:
            response = await self._pools[i].handle_async_request(request)
        except BaseException:
            self._open[i] -= 1
            raise

        def closed() -> None:
            self._open[i] -= 1

        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Counted(response.stream, closed)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()


class _Counted(httpx.AsyncByteStream):
    """A response body that reports its close once."""

    def __init__(self, stream: httpx.AsyncByteStream, closed: Callable[[], None]) -> None:
        self._stream = stream
        self._closed: Callable[[], None] | None = closed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            closed, self._closed = self._closed, None
            if closed is not None:
                closed()
