"""The upstream HTTP transport: keep-alive pools sized for hundreds of streams at once.

httpx's default pool (``httpx.Limits``: 100 connections, 20 kept alive) would queue the
101st concurrent reply until the pool time-out and reconnect after every burst. And
httpcore's pool scans every connection for every queued request each time a request
starts or a response closes (``AsyncConnectionPool._assign_requests_to_connections``),
so one pool of n streaming connections costs O(n) per event, O(n²) per burst: at 500
streams it was a third of the chat worker's loop (docs/benchmarks.md). Here requests
are spread round-robin over pools of about ``SHARD_SIZE`` connections each; the total
is bounded by ``LLM_MAX_CONCURRENCY`` (the semaphore in ``ChatRuntime``), so a shard
never makes a request wait for a connection while another has room.
"""

from __future__ import annotations

import itertools
import math
import ssl

import httpx

SHARD_SIZE = 32


class SpreadTransport(httpx.AsyncBaseTransport):
    """Round-robin over several ``httpx.AsyncHTTPTransport`` pools."""

    def __init__(self, max_concurrency: int, verify: ssl.SSLContext) -> None:
        shards = max(1, math.ceil(max_concurrency / SHARD_SIZE))
        # Each pool may open as many connections as the whole cap allows (round-robin is
        # even in requests, not in their lengths) but keeps only its share alive.
        limits = httpx.Limits(
            max_connections=max_concurrency,
            max_keepalive_connections=math.ceil(max_concurrency / shards),
        )
        self._pools = [
            httpx.AsyncHTTPTransport(verify=verify, limits=limits) for _ in range(shards)
        ]
        self._next = itertools.cycle(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
