"""One Redis subscriber per web process (per shard), fanned out to per-connection mailboxes.

The broadcaster pattern (encode/broadcaster): one pub/sub connection per process,
subscribed only to the channels of the streams this process serves, so adding web
processes adds capacity. Each SSE connection gets a bounded ``Mailbox`` (app/sse/mailbox.py).

On a Redis Cluster (``EVENTS_REDIS_CLUSTER``) announcements are sharded pub/sub, heard
only on the primary owning the channel's slot: the hub keeps one subscriber connection
(a ``Shard``, app/sse/shard.py) per primary it needs, routes each channel by redis-py's
slot map, and looks the map up again after a MOVED reply, a lost node or a slot given
up (failover). A lost shard ends its streams; clients resume from history through the
new owner (docs/design.md "Event bus on a Redis Cluster").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio
import redis.asyncio.cluster
import redis.exceptions
from redis.asyncio.connection import parse_url

from app.sse.mailbox import Mailbox
from app.sse.shard import PLAIN, SHARDED, Shard
from app.sse.shutdown import wait_for_server_exit
from core.eventclients import cluster_nodes, open_async_cluster

logger = logging.getLogger("herald.hub")

# Worth another look at the slot map: the node is gone, not the owner, or not yet known.
_REROUTE = (
    redis.exceptions.ConnectionError,
    redis.exceptions.ClusterError,
    redis.exceptions.RedisClusterException,
    OSError,
)


class Hub:
    def __init__(
        self,
        url: str,
        *,
        queue_size: int,
        health_check_seconds: float = 5.0,
        cluster: bool = False,
        subscribe_timeout: float = 10.0,
    ) -> None:
        # A cluster URL may list several nodes (core/eventclients.py); connections to
        # a node take the first one's credentials and TLS settings.
        self._url = url
        self._node_url = cluster_nodes(url)[0] if cluster else url
        self._cluster = cluster
        self._queue_size = queue_size
        self._health_check = health_check_seconds
        self._subscribe_timeout = subscribe_timeout
        self._shards: dict[str, Shard] = {}  # by node address
        single = parse_url(self._node_url)
        self._single_address = str(
            single.get("path") or f"{single.get('host')}:{single.get('port')}"
        )
        self._shard_lock = asyncio.Lock()
        # Only its slot map is used: redis-py keeps it (CLUSTER SLOTS) and refreshes it.
        self._topology: redis.asyncio.cluster.RedisCluster | None = None
        self._mapped = False
        self._stale = False
        self._closing: set[asyncio.Task[None]] = set()
        self._shutdown_watch: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        if self._cluster:
            # Not connected yet: the web process starts even while the cluster is down.
            self._topology = open_async_cluster(self._url)
        self._shutdown_watch = asyncio.create_task(
            self._close_on_shutdown(), name="herald-hub-shutdown"
        )

    async def _close_on_shutdown(self) -> None:
        # Once per process rather than once per stream (app/sse/response.py, point 3).
        # Closing every mailbox ends each body properly; clients resume elsewhere.
        await wait_for_server_exit()
        for shard in list(self._shards.values()):
            shard.drop_all("shutdown")

    async def stop(self) -> None:
        self._stopping = True
        if self._shutdown_watch is not None:
            self._shutdown_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._shutdown_watch
        shards, self._shards = list(self._shards.values()), {}
        for shard in shards:
            await shard.close("shutdown")
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._topology is not None:
            await self._topology.aclose()

    @property
    def connections(self) -> int:
        return sum(shard.connections for shard in self._shards.values())

    @property
    def channels(self) -> int:
        return sum(shard.channels for shard in self._shards.values())

    @property
    def shards(self) -> list[Shard]:
        return list(self._shards.values())

    async def subscribe(self, channel: str) -> Mailbox:
        """A mailbox that receives every frame announced on ``channel`` from now on.

        Returns once Redis has confirmed the subscription, so a history read made
        afterwards cannot miss an event announced in between. On a cluster, keeps
        looking for the channel's owner (a failover in progress) for up to
        ``HUB_SUBSCRIBE_TIMEOUT_SECONDS``; then a 503 (app/errors.py).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._subscribe_timeout
        backoff = 0.05
        while True:
            try:
                shard = await self._shard_for(channel)
                mailbox = await shard.subscribe(channel, max(0.01, deadline - loop.time()))
            except _REROUTE as exc:
                if not self._cluster or self._stopping or loop.time() + backoff >= deadline:
                    if isinstance(exc, redis.exceptions.RedisError):
                        raise
                    raise redis.exceptions.ConnectionError(str(exc)) from exc
                logger.info("no owner for %s yet (%s); looking again", channel, exc)
                self._stale = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            mailbox.owner = shard
            return mailbox

    def unsubscribe(self, mailbox: Mailbox) -> None:
        if isinstance(mailbox.owner, Shard):
            mailbox.owner.unsubscribe(mailbox)

    async def _shard_for(self, channel: str) -> Shard:
        address, host, port = self._single_address, None, None
        if self._topology is not None:
            if not self._mapped:
                # The client's own initialize, so that its aclose() closes what it opened.
                await self._topology.initialize()
                self._mapped, self._stale = True, False
            elif self._stale:
                self._stale = False
                await self._topology.nodes_manager.initialize()
            node = self._topology.get_node_from_key(channel)
            if node is None:
                raise redis.exceptions.SlotNotCoveredError(f"no node for {channel!r}")
            address, host, port = node.name, node.host, int(node.port)
        shard = self._shards.get(address)
        if shard is not None and not shard.lost:
            return shard
        async with self._shard_lock:
            shard = self._shards.get(address)
            if shard is None or shard.lost:
                shard = Shard(
                    address,
                    self._pool(host, port),
                    SHARDED if self._cluster else PLAIN,
                    queue_size=self._queue_size,
                    health_check_seconds=self._health_check,
                    on_change=self._changed,
                )
                try:
                    await shard.open()
                except BaseException:
                    await shard.close()
                    raise
                self._shards[address] = shard
        return shard

    def _pool(self, host: str | None, port: int | None) -> redis.asyncio.ConnectionPool:
        # RESP2 on purpose: under RESP3 (redis-py's default from 8.0) pub/sub messages
        # arrive as push frames that a plain read_response does not return. The URL's
        # credentials and TLS settings apply to every node of a cluster.
        kwargs = {**parse_url(self._node_url), "protocol": 2, "socket_connect_timeout": 5}
        if host is not None:
            kwargs.update(host=host, port=port, db=0)
        return redis.asyncio.ConnectionPool(**kwargs)  # type: ignore[arg-type]

    def _changed(self, shard: Shard) -> None:
        self._stale = True
        if shard.lost and self._shards.get(shard.address) is shard:
            del self._shards[shard.address]
            task = asyncio.get_running_loop().create_task(shard.close("redis_reconnect"))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
