"""Per-user limit on open SSE streams, shared by every web process through Redis.

A user is the pair (tenant, user): leases are keyed by ``Identity.key``
(core/principal.py). Each open stream holds a lease: a member of the user's sorted set
whose score is the time it lapses. Live processes renew their leases in one pipeline
every few seconds; a crashed process stops renewing, so its slots free themselves
within ``ttl`` seconds. The set's own key TTL (twice the lease TTL) only reclaims a user
nobody renews any more: every renewal extends it too, or the whole set would lapse
under live streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio
import redis.exceptions

from core import settings

logger = logging.getLogger("herald.leases")

# Drop lapsed leases, then take a slot only if one is free: atomic, so two web
# processes cannot both grant the last slot.
_ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def leases_key(owner: str) -> str:
    return f"{settings.REDIS_PREFIX}:streams:{owner}"


class StreamLeases:
    def __init__(self, client: redis.asyncio.Redis, *, limit: int, ttl: float) -> None:
        self._client = client
        self._limit = limit
        self._ttl = ttl
        self._key_ttl_ms = int(ttl * 2000)
        self._held: dict[str, str] = {}  # lease id -> owner key
        self._script = client.register_script(_ACQUIRE_LUA)
        self._renewer: asyncio.Task[None] | None = None
        self._releasing: list[tuple[str, str]] = []  # (key, lease id) awaiting ZREM
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._renewer = asyncio.create_task(self._renew_loop(), name="herald-lease-renewer")

    async def stop(self) -> None:
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        with contextlib.suppress(redis.exceptions.RedisError, OSError):
            async with self._client.pipeline(transaction=False) as pipe:
                for lease_id, owner in self._held.items():
                    pipe.zrem(leases_key(owner), lease_id)
                await pipe.execute()
        self._held.clear()

    async def acquire(self, owner: str, lease_id: str) -> bool:
        now = time.time()
        granted = await self._script(
            keys=[leases_key(owner)],
            args=[now, now + self._ttl, self._limit, lease_id, self._key_ttl_ms],
        )
        if granted:
            self._held[lease_id] = owner
        return bool(granted)

    async def release(self, lease_id: str) -> None:
        """Free a slot. Releases are batched: when thousands of streams end at once
        (a proxy restart, a network blip), one pipelined ZREM per loop turn replaces
        a round trip per stream, which queued past the pool timeout and raised inside
        each response's cleanup (scripts/bench_sse.py, 10,000 disconnects)."""
        owner = self._held.pop(lease_id, None)
        if owner is None:
            return
        self._releasing.append((leases_key(owner), lease_id))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        # Wait for the batch, so a caller sees its slot free when this returns.
        await asyncio.shield(self._flusher)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other streams ending this turn join the batch
        while self._releasing:
            batch, self._releasing = self._releasing, []
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    for key, lease_id in batch:
                        pipe.zrem(key, lease_id)
                    await pipe.execute()
            except (redis.exceptions.RedisError, OSError) as exc:
                # Not fatal: an unrenewed lease lapses within the lease TTL by itself.
                logger.warning("could not release %d stream leases: %s", len(batch), exc)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                await self.renew()
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.warning("could not renew stream leases: %s", exc)

    async def renew(self) -> None:
        if not self._held:
            return
        until = time.time() + self._ttl
        held = list(self._held.items())
        async with self._client.pipeline(transaction=False) as pipe:
            for lease_id, owner in held:
                # XX: renew only; a lease another process's cleanup already dropped
                # stays dropped rather than silently exceeding the limit.
                pipe.zadd(leases_key(owner), {lease_id: until}, xx=True)
            for owner in {owner for _, owner in held}:
                pipe.pexpire(leases_key(owner), self._key_ttl_ms)
            await pipe.execute()
