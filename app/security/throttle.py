"""Throttle token guessing: too many failed authentications from one address → 429.

Failures are counted per client address in Redis (the ``limits`` library, moving
window), so every web process sees the same count. Once an address is over
``AUTH_FAILURE_LIMIT`` its requests are refused *before* the token is verified: a
flood costs a dictionary lookup per request instead of a signature check (or a JWKS
fetch), and a guessed token cannot be confirmed while the address is blocked (OWASP
Authentication Cheat Sheet, "Protect against automated attacks").

Only presented-and-rejected tokens count: a request with no credentials at all is a
browser before login, not a guess.
"""

from __future__ import annotations

import logging
import math
import time

import redis.exceptions
from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from starlette.requests import HTTPConnection

from app import metrics
from app.errors import RateLimited
from app.security.ratelimit import close_storage, open_storage
from core import settings

security_log = logging.getLogger("herald.security")
_MAX_BLOCKED = 10_000


def client_address(conn: HTTPConnection) -> str:
    # Behind a proxy, app/proxy.py has already put the address the trusted proxy saw
    # here (TRUSTED_PROXY_HOPS); the entries a client writes itself are never used, or
    # any client could pick a fresh address per request, or a victim's.
    return conn.client.host if conn.client else "unknown"


class AuthThrottle:
    """One per web process (lifespan); the counts live in Redis."""

    def __init__(self, redis_url: str, key_prefix: str, limit: str) -> None:
        self.limit: RateLimitItem = parse(limit)
        self._storage = open_storage(redis_url, key_prefix)
        self._limiter = MovingWindowRateLimiter(self._storage)
        # Addresses known to be over the limit, and until when: repeat offenders are
        # refused without even the Redis round trip.
        self._blocked: dict[str, float] = {}

    @classmethod
    def from_settings(cls) -> AuthThrottle:
        return cls(
            settings.REDIS_URL, f"{settings.REDIS_PREFIX}:authfail", settings.AUTH_FAILURE_LIMIT
        )

    async def aclose(self) -> None:
        await close_storage(self._storage)

    def check(self, address: str) -> None:
        """Raise ``RateLimited`` when ``address`` is known to be over its failures.

        In memory only, so a good request costs no Redis round trip (under 1,000 SSE
        connects at once a Redis check per request exhausted the client pool). Another
        process learns of a block on that address's next failure there: at most one
        more verification per process, then 429 without verifying.
        """
        until = self._blocked.get(address)
        if until is None:
            return
        now = time.time()
        if until > now:
            self._refuse(until - now)
        del self._blocked[address]

    async def record_failure(self, address: str) -> None:
        """Count one rejected token; raises ``RateLimited`` once over the limit."""
        try:
            allowed = await self._limiter.hit(self.limit, "auth", address)
            if allowed:
                return
            reset_at, _ = await self._limiter.get_window_stats(self.limit, "auth", address)
        except (redis.exceptions.RedisError, OSError) as exc:
            # Fail open: the throttle is a defence in depth, and refusing every login
            # while Redis restarts would turn a blip into an outage.
            security_log.warning("auth throttle unavailable: %s", exc)
            return
        now = time.time()
        if address not in self._blocked:
            security_log.warning(
                "authentication failures over the limit; address blocked",
                extra={"address": address, "limit": str(self.limit)},
            )
        if len(self._blocked) >= _MAX_BLOCKED:  # many addresses: forget the lapsed ones
            self._blocked = {a: t for a, t in self._blocked.items() if t > now}
        self._blocked[address] = max(reset_at, now + 1)
        self._refuse(reset_at - now)

    async def clear(self, address: str) -> None:
        self._blocked.pop(address, None)
        await self._limiter.clear(self.limit, "auth", address)

    def _refuse(self, retry_in: float) -> None:
        metrics.RATE_LIMITED.labels("auth_failures").inc()
        seconds = max(1, math.ceil(retry_in))
        raise RateLimited(
            f"Too many failed authentications; retry in {seconds} s.",
            details={"retry_after_seconds": seconds},
            headers={"Retry-After": str(seconds)},
        )
