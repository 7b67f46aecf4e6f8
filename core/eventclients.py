"""Clients for the event bus's Redis: ``EVENTS_REDIS_URL``, one server or a Redis Cluster.

The event bus (history streams and their announcements, core/events.py) is the load
that grows with connected users; queues, rate limits, leases and caches stay on
``REDIS_URL``. Callers own what these functions open and close it themselves (the web
lifespan, a worker process). When the bus is the very same Redis as ``REDIS_URL``
callers keep using their one client, so a single-Redis deployment opens nothing more.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from core import settings
from core.redisdriver import driver_info

EventsClient: TypeAlias = redis.Redis | redis.cluster.RedisCluster
AsyncEventsClient: TypeAlias = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def separate() -> bool:
    """Whether the bus needs clients of its own (another server, or a cluster)."""
    return settings.EVENTS_REDIS_CLUSTER or settings.EVENTS_REDIS_URL != settings.REDIS_URL


def is_cluster(client: object) -> bool:
    return isinstance(
        client,
        redis.cluster.RedisCluster
        | redis.asyncio.cluster.RedisCluster
        | redis.cluster.ClusterPipeline
        | redis.asyncio.cluster.ClusterPipeline,
    )


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """A cluster's ``EVENTS_REDIS_URL`` may list several nodes, comma-separated: a client
    learns the cluster from the first that answers, so one node down at start-up (a
    failover in progress) does not keep it from starting. The first URL's credentials
    and TLS settings apply to every node. Returns that URL and the other nodes."""
    first, *others = [part.strip() for part in url.split(",") if part.strip()]
    nodes = []
    for other in others:
        parsed = urlsplit(other)
        nodes.append((parsed.hostname or "127.0.0.1", parsed.port or 6379))
    return first, nodes


def open_events_client() -> EventsClient:
    """A synchronous client for the bus (workers)."""
    if settings.EVENTS_REDIS_CLUSTER:
        first, others = cluster_nodes(settings.EVENTS_REDIS_URL)
        return redis.cluster.RedisCluster.from_url(
            first,
            startup_nodes=[
                redis.cluster.ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in others
            ],
            socket_connect_timeout=5,
            driver_info=driver_info(),
        )
    return redis.Redis.from_url(
        settings.EVENTS_REDIS_URL, socket_connect_timeout=5, driver_info=driver_info()
    )


def open_async_cluster(url: str) -> redis.asyncio.cluster.RedisCluster:
    """An asyncio cluster client from a (comma-separated) cluster URL; connects lazily."""
    first, others = cluster_nodes(url)
    return redis.asyncio.cluster.RedisCluster.from_url(
        first,
        startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in others],
        socket_connect_timeout=5,
        driver_info=driver_info(),
    )


@contextmanager
def events_client_for(client: redis.Redis) -> Iterator[EventsClient]:
    """The bus's client for as long as the block runs: ``client`` (a client of
    ``REDIS_URL``) itself when the bus lives there too, else one opened and closed here."""
    if not separate():
        yield client
        return
    own = open_events_client()
    try:
        yield own
    finally:
        own.close()


def open_async_events_client(**pool: Any) -> AsyncEventsClient:
    """An asyncio client for the bus (the web process, async workers). ``pool`` holds
    the single-server pool's limits (``max_connections``, ``timeout``)."""
    if settings.EVENTS_REDIS_CLUSTER:
        return open_async_cluster(settings.EVENTS_REDIS_URL)
    return redis.asyncio.Redis.from_pool(
        redis.asyncio.BlockingConnectionPool.from_url(
            settings.EVENTS_REDIS_URL,
            health_check_interval=30,
            socket_connect_timeout=5,
            driver_info=driver_info(),
            **pool,
        )
    )
