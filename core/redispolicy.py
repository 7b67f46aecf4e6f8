"""Does the Redis in use keep queued jobs? Checked at start (web and worker) and by /readyz.

RQ's queued jobs are keys without a TTL. Under ``maxmemory`` with an ``allkeys-*``
policy Redis evicts any key when it fills up, queued jobs included, silently (Redis docs,
"Key eviction"); ``noeviction`` refuses writes instead, and ``volatile-*`` evicts only
keys with a TTL (event history, caches), never a queued job. The reconciler enqueues
lost work again from PostgreSQL (jobs/worker/reconciler.py), but only after a pass, and
attempts are bounded: an evicting Redis is a misconfiguration worth saying out loud.
Managed Redis services often refuse ``CONFIG GET``; then the check says it could not tell.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
import redis.asyncio

logger = logging.getLogger("herald.redis")

_KEYS = ("maxmemory-policy", "maxmemory")


def assess(config: dict[str, Any] | None) -> dict[str, Any]:
    """``{"maxmemory_policy", "maxmemory", "warning"?}``, or ``{"checked": False}`` when
    the server would not say (``config`` None)."""
    if config is None:
        return {"checked": False}
    policy = str(config.get("maxmemory-policy", ""))
    try:
        maxmemory = int(config.get("maxmemory", 0))
    except (TypeError, ValueError):
        maxmemory = 0
    report: dict[str, Any] = {"maxmemory_policy": policy, "maxmemory": maxmemory}
    # maxmemory 0: no limit (64-bit), so no policy ever evicts anything.
    if maxmemory > 0 and policy.startswith("allkeys-"):
        report["warning"] = (
            f"Redis maxmemory-policy is {policy}: when it fills up it evicts queued jobs"
            " without a word. Use noeviction (docs/deploy.md)."
        )
    return report


def _decoded(raw: dict[Any, Any]) -> dict[str, Any]:
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): (
            v.decode() if isinstance(v, bytes) else v
        )
        for k, v in raw.items()
    }


def check(client: redis.Redis) -> dict[str, Any]:
    try:
        raw = {**client.config_get(_KEYS[0]), **client.config_get(_KEYS[1])}
    except redis.ResponseError:  # CONFIG disabled or not permitted (managed Redis)
        return assess(None)
    return assess(_decoded(raw))


async def acheck(client: redis.asyncio.Redis) -> dict[str, Any]:
    try:
        raw = {**await client.config_get(_KEYS[0]), **await client.config_get(_KEYS[1])}
    except redis.ResponseError:
        return assess(None)
    return assess(_decoded(raw))


def log_assessment(report: dict[str, Any]) -> None:
    if "warning" in report:
        logger.warning(report["warning"])
    elif not report.get("checked", True):
        logger.info("could not read Redis's maxmemory-policy (CONFIG GET refused)")
