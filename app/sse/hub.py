"""One Redis subscriber per web process, fanned out to per-connection mailboxes.

The broadcaster pattern (encode/broadcaster): a single pub/sub connection per process,
SUBSCRIBEd only to the channels of the streams this process serves, so adding web
processes adds capacity. Each SSE connection gets a bounded ``Mailbox``; a client too
slow to drain it is cut off (it resumes from its Last-Event-ID) instead of being
buffered without bound.

The reader speaks RESP on a plain redis-py ``Connection`` rather than through
``PubSub``: ``PubSub.handle_message`` builds a dict and awaits observability hooks for
every message, which costs about a third of the fan-out rate at saturation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque

import redis.asyncio
import redis.exceptions
from redis.asyncio.connection import AbstractConnection

from app import metrics
from app.sse.shutdown import wait_for_server_exit

logger = logging.getLogger("herald.hub")


class Mailbox:
    """Frames waiting for one SSE connection; ``closed`` says why it must end."""

    __slots__ = ("_frames", "_loop", "_maxsize", "_waiter", "channel", "closed")

    def __init__(self, channel: str, maxsize: int) -> None:
        self.channel = channel
        self.closed: str | None = None
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


class _Channel:
    __slots__ = ("mailboxes", "pending", "ready")

    def __init__(self) -> None:
        self.mailboxes: set[Mailbox] = set()
        self.pending = 0  # SUBSCRIBE commands sent and not yet confirmed
        self.ready = asyncio.Event()


class Hub:
    def __init__(self, url: str, *, queue_size: int, health_check_seconds: float = 5.0) -> None:
        # RESP2 on purpose: under RESP3 (redis-py's default from 8.0) pub/sub messages
        # arrive as push frames that a plain read_response does not return.
        self._client = redis.asyncio.Redis.from_url(url, protocol=2, socket_connect_timeout=5)
        self._queue_size = queue_size
        self._channels: dict[str, _Channel] = {}
        self._conn: AbstractConnection | None = None
        self._connected = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._shutdown_watch: asyncio.Task[None] | None = None
        self._health_check = health_check_seconds
        self._last_seen = 0.0  # loop time of the last frame read from the connection
        self._watchdog: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._reader = asyncio.create_task(self._read_loop(), name="herald-hub-reader")
        self._watchdog = asyncio.create_task(self._watch(), name="herald-hub-watchdog")
        self._shutdown_watch = asyncio.create_task(
            self._close_on_shutdown(), name="herald-hub-shutdown"
        )

    async def _close_on_shutdown(self) -> None:
        # Once per process rather than once per stream (app/sse/response.py, point 3).
        # Closing every mailbox ends each body properly; clients resume elsewhere.
        await wait_for_server_exit()
        self._drop_all("shutdown")

    async def stop(self) -> None:
        self._stopping = True
        self._drop_all("shutdown")
        if self._shutdown_watch is not None:
            self._shutdown_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._shutdown_watch
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._conn is not None:
            await self._conn.disconnect()
        await self._client.aclose()

    @property
    def connections(self) -> int:
        return sum(len(c.mailboxes) for c in self._channels.values())

    @property
    def channels(self) -> int:
        return len(self._channels)

    async def subscribe(self, channel_name: str) -> Mailbox:
        """A mailbox that receives every frame announced on ``channel_name`` from now on.

        Returns once Redis has confirmed the subscription, so a history read made
        afterwards cannot miss an event announced in between.
        """
        conn = await self._connection()
        mailbox = Mailbox(channel_name, self._queue_size)
        channel = self._channels.get(channel_name)
        if channel is None:
            channel = self._channels[channel_name] = _Channel()
        channel.mailboxes.add(mailbox)
        if not channel.ready.is_set() and channel.pending == 0:
            channel.pending += 1
            try:
                await conn.send_command("SUBSCRIBE", channel_name)
            except BaseException:
                channel.pending -= 1
                self.unsubscribe(mailbox)
                raise
        try:
            await asyncio.wait_for(channel.ready.wait(), timeout=10)
        except TimeoutError:
            self.unsubscribe(mailbox)
            # A 503 naming Redis (app/errors.py), not a 500: the client may retry.
            raise redis.exceptions.TimeoutError("SUBSCRIBE not confirmed") from None
        except BaseException:
            self.unsubscribe(mailbox)
            raise
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
        if channel.ready.is_set() and self._conn is not None:
            task = asyncio.get_running_loop().create_task(self._send_unsubscribe(name))
            task.add_done_callback(_log_failure)

    async def _send_unsubscribe(self, name: str) -> None:
        conn = self._conn
        if name in self._channels or conn is None:  # a new client arrived meanwhile
            return
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            await conn.send_command("UNSUBSCRIBE", name)

    async def _connection(self) -> AbstractConnection:
        if self._conn is not None and self._connected.is_set():
            return self._conn
        async with self._connect_lock:
            if self._conn is None or not self._connected.is_set():
                conn = self._client.connection_pool.make_connection()  # type: ignore[no-untyped-call]
                await conn.connect()
                self._last_seen = asyncio.get_running_loop().time()
                self._conn = conn
                self._connected.set()
        assert self._conn is not None
        return self._conn

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = 0.05
        while True:
            await self._connected.wait()
            conn = self._conn
            assert conn is not None
            try:
                while True:
                    # math.inf: block without the socket timeout (redis-py read_response).
                    response = await conn.read_response(timeout=math.inf)
                    self._last_seen = loop.time()
                    self._dispatch(response)
                    backoff = 0.05
            except asyncio.CancelledError:
                raise
            except (redis.exceptions.RedisError, OSError) as exc:
                if self._stopping:
                    return
                logger.warning("pub/sub connection lost: %s", exc)
                metrics.HUB_RECONNECTS.inc()
                self._connected.clear()
                self._conn = None
                with contextlib.suppress(Exception):
                    await conn.disconnect()
                self._drop_all("redis_reconnect")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _watch(self) -> None:
        """A blocking read never notices a connection that died without being closed
        (network partition, a NAT or load balancer dropping an idle flow): publishes
        would vanish silently. After a silent interval ask Redis for a PONG (allowed in
        subscribe mode); after two, drop the connection, so the read loop reconnects and
        every stream resumes from history (tests/faults/test_redis_restart.py)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._health_check / 2)
            conn = self._conn
            if conn is None or not self._connected.is_set():
                continue
            silent = loop.time() - self._last_seen
            if silent >= 2 * self._health_check:
                logger.warning("pub/sub connection silent for %.1f s; reconnecting", silent)
                self._last_seen = loop.time()
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            elif silent >= self._health_check:
                with contextlib.suppress(redis.exceptions.RedisError, OSError):
                    await conn.send_command("PING")

    def _dispatch(self, response: list[bytes] | bytes) -> None:
        # The watchdog's PING is answered [b"pong", b""] while subscribed, but b"PONG"
        # once the last channel is gone (Redis docs, PING), which is no list to index
        # (tests/test_streams.py test_hub_survives_idle_ping).
        if not isinstance(response, list) or response[0] == b"pong":
            return
        kind = response[0]
        raw_name, payload = response[1], response[2]
        channel = self._channels.get(raw_name.decode())
        if channel is None:
            return
        if kind == b"message":
            assert isinstance(payload, bytes)
            overflowed = []
            for mailbox in channel.mailboxes:
                mailbox.put(payload)
                if mailbox.closed is not None:
                    overflowed.append(mailbox)
            # A dropped slow client stops costing memory now, even while its
            # connection is still blocked in a send.
            for mailbox in overflowed:
                self.unsubscribe(mailbox)
        elif kind == b"subscribe":
            channel.pending -= 1
            channel.ready.set()
            self._release_if_idle(raw_name.decode(), channel)

    def _drop_all(self, reason: str) -> None:
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
