"""One subscriber connection to one Redis node, and the channels this process needs there.

A single Redis is one shard; on a Redis Cluster the hub (app/sse/hub.py) keeps one of
these per primary that owns a channel it needs, subscribed with ``SSUBSCRIBE`` (sharded
pub/sub is delivered only within the shard that owns the channel's slot, Redis docs
"Sharded Pub/Sub").

The reader speaks RESP on a plain redis-py ``Connection`` rather than through
``PubSub``: ``PubSub.handle_message`` builds a dict and awaits observability hooks for
every message, which costs about a third of the fan-out rate at saturation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio
import redis.exceptions
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot

from app import metrics
from app.sse.mailbox import Mailbox

logger = logging.getLogger("herald.hub")


@dataclass(frozen=True, slots=True)
class Commands:
    """The pub/sub dialect: classic (any Redis) or sharded (Redis >= 7.0 cluster)."""

    subscribe: str
    unsubscribe: str
    message: bytes
    subscribed: bytes
    unsubscribed: bytes


PLAIN = Commands("SUBSCRIBE", "UNSUBSCRIBE", b"message", b"subscribe", b"unsubscribe")
SHARDED = Commands("SSUBSCRIBE", "SUNSUBSCRIBE", b"smessage", b"ssubscribe", b"sunsubscribe")


class SlotMoved(redis.exceptions.ConnectionError):
    """This node does not (or no longer) serve the channel's slot: ask the hub again."""


class _Channel:
    __slots__ = ("error", "mailboxes", "pending", "ready")

    def __init__(self) -> None:
        self.mailboxes: set[Mailbox] = set()
        self.pending = 0  # subscribe commands sent and not yet confirmed
        self.ready = asyncio.Event()
        self.error: redis.exceptions.RedisError | None = None


class Shard:
    """Subscriptions on one node. Once its connection is lost it is done: every mailbox
    is closed (clients resume from history). ``on_change`` tells the hub to look the
    cluster's slot map up again: the shard was lost, or gave up a slot."""

    def __init__(
        self,
        address: str,
        pool: redis.asyncio.ConnectionPool,
        commands: Commands,
        *,
        queue_size: int,
        health_check_seconds: float,
        on_change: Callable[[Shard], None],
    ) -> None:
        self.address = address
        self._pool = pool
        self._commands = commands
        self._queue_size = queue_size
        self._health_check = health_check_seconds
        self._on_change = on_change
        self._channels: dict[str, _Channel] = {}
        self._unsubscribing: Counter[str] = Counter()  # our own unsubscribes in flight
        self._conn: AbstractConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._last_seen = 0.0  # loop time of the last frame read from the connection
        self.lost = False

    async def open(self) -> None:
        conn = self._pool.make_connection()  # type: ignore[no-untyped-call]
        await conn.connect()
        self._conn = conn
        self._last_seen = asyncio.get_running_loop().time()
        self._reader = asyncio.create_task(self._read_loop(), name=f"herald-hub-{self.address}")
        self._watchdog = asyncio.create_task(self._watch(), name=f"herald-hub-watch-{self.address}")

    async def close(self, reason: str = "shutdown") -> None:
        self.lost = True
        self.drop_all(reason)
        for task in (self._watchdog, self._reader):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.disconnect()
        await self._pool.aclose()

    @property
    def reading(self) -> bool:
        return self._reader is not None and not self._reader.done()

    @property
    def connections(self) -> int:
        return sum(len(c.mailboxes) for c in self._channels.values())

    @property
    def channels(self) -> int:
        return len(self._channels)

    async def subscribe(self, name: str, timeout: float) -> Mailbox:
        """A mailbox that receives every frame announced on ``name`` from now on;
        returns once Redis has confirmed the subscription."""
        conn = self._conn
        if self.lost or conn is None:
            raise redis.exceptions.ConnectionError("pub/sub connection lost")
        mailbox = Mailbox(name, self._queue_size)
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel()
        channel.mailboxes.add(mailbox)
        if not channel.ready.is_set() and channel.pending == 0:
            channel.pending += 1
            try:
                await conn.send_command(self._commands.subscribe, name)
            except BaseException:
                channel.pending -= 1
                self.unsubscribe(mailbox)
                raise
        try:
            await asyncio.wait_for(channel.ready.wait(), timeout=timeout)
        except TimeoutError:
            self.unsubscribe(mailbox)
            # A 503 naming Redis (app/errors.py), not a 500: the client may retry.
            raise redis.exceptions.TimeoutError("subscription not confirmed") from None
        except BaseException:
            self.unsubscribe(mailbox)
            raise
        if channel.error is not None:
            raise channel.error
        if mailbox.closed is not None:
            self.unsubscribe(mailbox)
            raise redis.exceptions.ConnectionError("pub/sub connection lost")
        return mailbox

    def unsubscribe(self, mailbox: Mailbox) -> None:
        channel = self._channels.get(mailbox.channel)
        if channel is None:
            return
        channel.mailboxes.discard(mailbox)
        self._release_if_idle(mailbox.channel, channel)

    def _release_if_idle(self, name: str, channel: _Channel) -> None:
        if channel.mailboxes or channel.pending:
            return
        del self._channels[name]
        if channel.ready.is_set() and channel.error is None and not self.lost:
            task = asyncio.get_running_loop().create_task(self._send_unsubscribe(name))
            task.add_done_callback(_log_failure)

    async def _send_unsubscribe(self, name: str) -> None:
        conn = self._conn
        if name in self._channels or conn is None or self.lost:  # a new client arrived
            return
        self._unsubscribing[name] += 1
        try:
            await conn.send_command(self._commands.unsubscribe, name)
        except (redis.exceptions.RedisError, OSError):
            self._forget_unsubscribe(name)

    def _forget_unsubscribe(self, name: str) -> None:
        self._unsubscribing[name] -= 1
        if self._unsubscribing[name] <= 0:
            del self._unsubscribing[name]

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        conn = self._conn
        assert conn is not None
        try:
            while True:
                try:
                    # math.inf: block without the socket timeout (redis-py read_response).
                    response = await conn.read_response(timeout=math.inf)
                except redis.exceptions.ResponseError as exc:
                    # An error reply (MOVED, CLUSTERDOWN) refuses one command; the
                    # connection itself is fine.
                    self._last_seen = loop.time()
                    self._refuse(exc)
                    continue
                self._last_seen = loop.time()
                self._dispatch(response)
        except (redis.exceptions.RedisError, OSError) as exc:
            if self.lost:
                return
            logger.warning("pub/sub connection to %s lost: %s", self.address, exc)
            metrics.HUB_RECONNECTS.inc()
            self._lose("redis_reconnect")

    def _lose(self, reason: str) -> None:
        self.lost = True
        self.drop_all(reason)
        self._on_change(self)

    async def _watch(self) -> None:
        """A blocking read never notices a connection that died without being closed
        (network partition, a NAT or load balancer dropping an idle flow): publishes
        would vanish silently. After a silent interval ask Redis for a PONG (allowed in
        subscribe mode); after two, drop the connection, so every stream resumes from
        history (tests/faults/test_redis_restart.py)."""
        loop = asyncio.get_running_loop()
        while not self.lost:
            await asyncio.sleep(self._health_check / 2)
            conn = self._conn
            if conn is None:
                continue
            silent = loop.time() - self._last_seen
            if silent >= 2 * self._health_check:
                logger.warning(
                    "pub/sub connection to %s silent for %.1f s; dropping", self.address, silent
                )
                self._last_seen = loop.time()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            elif silent >= self._health_check:
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await conn.send_command("PING")

    def _refuse(self, exc: redis.exceptions.ResponseError) -> None:
        """Fail the subscriptions an error reply was for: on MOVED those of its slot,
        otherwise every one still waiting (replies come in command order)."""
        slot = exc.slot_id if isinstance(exc, redis.exceptions.AskError) else None
        error: redis.exceptions.RedisError = (
            SlotMoved(str(exc)) if slot is not None else redis.exceptions.ConnectionError(str(exc))
        )
        refused = [
            name
            for name, channel in self._channels.items()
            if channel.pending and (slot is None or key_slot(name.encode()) == slot)
        ]
        if not refused:
            logger.info("pub/sub reply from %s ignored: %s", self.address, exc)
        for name in refused:
            channel = self._channels.pop(name)
            channel.pending = 0
            channel.error = error
            channel.ready.set()

    def _dispatch(self, response: list[bytes] | bytes) -> None:
        # The watchdog's PING is answered [b"pong", b""] while subscribed, but b"PONG"
        # once the last channel is gone (Redis docs, PING), which is no list to index
        # (tests/test_streams.py test_hub_survives_idle_ping).
        if not isinstance(response, list) or response[0] == b"pong":
            return
        kind = response[0]
        name = response[1].decode()
        channel = self._channels.get(name)
        if kind == self._commands.message:
            if channel is None:
                return
            payload = response[2]
            overflowed = []
            for mailbox in channel.mailboxes:
                mailbox.put(payload)
                if mailbox.closed is not None:
                    overflowed.append(mailbox)
            # A dropped slow client stops costing memory now, even while its
            # connection is still blocked in a send.
            for mailbox in overflowed:
                self.unsubscribe(mailbox)
        elif kind == self._commands.subscribed:
            if channel is None:
                return
            channel.pending -= 1
            channel.ready.set()
            self._release_if_idle(name, channel)
        elif kind == self._commands.unsubscribed:
            if self._unsubscribing[name] > 0:
                self._forget_unsubscribe(name)
            elif channel is not None and not channel.pending:
                # Unasked: the node gave up the channel's slot (a failover demoted it,
                # or the slot migrated) and sent SUNSUBSCRIBE. Its streams would
                # silently go quiet: end them so their clients resume via the new owner.
                logger.warning("%s dropped channel %s; ending its streams", self.address, name)
                del self._channels[name]
                for mailbox in channel.mailboxes:
                    mailbox.close("redis_reconnect")
                self._on_change(self)
            else:
                self._unsubscribing.pop(name, None)

    def drop_all(self, reason: str) -> None:
        """After a lost connection any client may have missed events: end every stream
        so clients reconnect with Last-Event-ID and replay (or resync) from history."""
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            for mailbox in channel.mailboxes:
                mailbox.close(reason)
            channel.ready.set()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("pub/sub unsubscribe failed: %s", task.exception())
