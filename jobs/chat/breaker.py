"""A circuit breaker for the LLM, shared by every worker process through Redis.

Closed: calls pass; ``LLM_BREAKER_FAILURES`` consecutive failures open it. Open: calls
fail fast (``llm_unavailable``) with no upstream request, for ``LLM_BREAKER_RESET_SECONDS``.
Then exactly one caller wins ``SET NX`` on the probe key and makes the half-open trial
call; its result closes the breaker or opens it for another period (Nygard, "Release
It!", Circuit Breaker; Fowler, "CircuitBreaker").

Why not ``pybreaker.CircuitRedisStorage``: it keeps state and counter in Redis, but each
process decides on its own clock when the open period is over and every process then
lets a trial call through (no single probe), and its transitions are read-then-write
from Python, so two workers can interleave them. Here each transition is one Lua script,
atomic in Redis, timed by the Redis server's clock (``TIME``) so workers on machines with
skewed clocks agree. The calls are awaited on the worker's loop (redis.asyncio): a
round trip must not stall the other replies streaming on it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

import redis.asyncio

from core import settings
from core.jobmetrics import metric_field

logger = logging.getLogger("herald.breaker")

STATE_VALUES = {"closed": 0, "open": 1, "half_open": 2}

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
"""

# KEYS: state hash, probe key. ARGV: probe token, probe ttl ms.
_ACQUIRE = (
    _NOW
    + """
if state == 'closed' then return {'allow', state, state} end
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if now < open_until then return {'reject', state, state} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('HSET', KEYS[1], 'state', 'half_open')
  return {'probe', state, 'half_open'}
end
return {'reject', state, state}
"""
)

# KEYS: state hash, probe key. ARGV: probe token ('' if none).
_SUCCESS = (
    _NOW
    + """
if state == 'closed' then
  redis.call('HSET', KEYS[1], 'failures', 0)
  return {state, state}
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0)
  return {state, 'closed'}
end
return {state, state}
"""
)

# KEYS: state hash, probe key. ARGV: probe token, failure threshold, reset ms.
_FAILURE = (
    _NOW
    + """
if state == 'closed' then
  local n = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if n >= tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[3]))
    return {state, 'open'}
  end
  return {state, state}
end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + tonumber(ARGV[3]))
  return {state, 'open'}
end
return {state, state}
"""
)

# A probe that ended without a verdict (crash, cancelled) frees the slot at once.
_RELEASE = """
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) return 1 end
return 0
"""


class BreakerOpen(Exception):
    """The breaker refused the call; no upstream request was made."""


@dataclass(frozen=True, slots=True)
class Permit:
    probe_token: str  # "" for an ordinary call while closed

    @property
    def is_probe(self) -> bool:
        return bool(self.probe_token)


class Breaker:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        name: str,
        *,
        failures: int,
        reset_seconds: float,
        probe_ttl_seconds: float,
        labels: dict[str, str] | None = None,
    ) -> None:
        self._client = client
        self._keys = [
            f"{settings.REDIS_PREFIX}:breaker:{name}",
            f"{settings.REDIS_PREFIX}:breaker:{name}:probe",
        ]
        self._failures = failures
        self._reset_ms = int(reset_seconds * 1000)
        self._probe_ttl_ms = max(1000, int(probe_ttl_seconds * 1000))
        self._labels = labels or {}
        self._acquire = client.register_script(_ACQUIRE)
        self._success = client.register_script(_SUCCESS)
        self._failure = client.register_script(_FAILURE)
        self._release = client.register_script(_RELEASE)

    @classmethod
    def for_llm(cls, client: redis.asyncio.Redis, provider: str, model: str) -> Breaker:
        return cls(
            client,
            f"llm:{provider}",
            failures=settings.LLM_BREAKER_FAILURES,
            reset_seconds=settings.LLM_BREAKER_RESET_SECONDS,
            # A probe that dies holds the slot at most as long as a call may last.
            probe_ttl_seconds=settings.LLM_TIMEOUT_SECONDS + 5,
            labels={"provider": provider, "model": model},
        )

    async def before_call(self) -> Permit:
        token = uuid.uuid4().hex
        verdict, before, after = _text(
            await self._acquire(keys=self._keys, args=[token, self._probe_ttl_ms])
        )
        await self._note(before, after)
        if verdict == "reject":
            raise BreakerOpen("The LLM circuit breaker is open.")
        return Permit(token if verdict == "probe" else "")

    async def succeeded(self, permit: Permit) -> None:
        before, after = _text(await self._success(keys=self._keys, args=[permit.probe_token]))
        await self._note(before, after)

    async def failed(self, permit: Permit) -> None:
        args: list[str | int] = [permit.probe_token, self._failures, self._reset_ms]
        before, after = _text(await self._failure(keys=self._keys, args=args))
        await self._note(before, after)

    async def release(self, permit: Permit) -> None:
        if permit.is_probe:
            await self._release(keys=self._keys, args=[permit.probe_token])

    async def state(self) -> str:
        raw = await self._client.hget(self._keys[0], "state")
        return raw.decode() if isinstance(raw, bytes) else "closed"

    async def _note(self, before: str, after: str) -> None:
        if before == after:
            return
        logger.warning("llm circuit breaker %s -> %s", before, after, extra=self._labels)
        counter = metric_field(
            "herald_llm_breaker_transitions_total", {**self._labels, "to": after}
        )
        gauge = metric_field("herald_llm_breaker_state", self._labels)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.hincrbyfloat(*counter, 1)
            pipe.hset(*gauge, STATE_VALUES[after])
            await pipe.execute()


def _text(values: list[bytes | str]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
