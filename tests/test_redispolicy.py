"""core/redispolicy.py: a Redis whose eviction policy would drop queued jobs is named, at
start and in /readyz. The test Redis is only read (CONFIG GET), never reconfigured."""

from __future__ import annotations

import httpx
import pytest
import redis

from core import redispolicy
from tests.support.asgi import running_app

pytestmark = pytest.mark.anyio


def test_policies_that_evict_queued_jobs_are_named(redis_client: redis.Redis) -> None:
    assert "warning" in redispolicy.assess({"maxmemory-policy": "allkeys-lru", "maxmemory": "100"})
    assert "warning" not in redispolicy.assess({"maxmemory-policy": "noeviction", "maxmemory": "1"})
    assert "warning" not in redispolicy.assess(
        {"maxmemory-policy": "volatile-lru", "maxmemory": "1"}
    )
    # No limit: nothing is ever evicted, whatever the policy.
    assert "warning" not in redispolicy.assess(
        {"maxmemory-policy": "allkeys-lru", "maxmemory": "0"}
    )
    assert redispolicy.assess(None) == {"checked": False}
    # The test server answers CONFIG GET (read only: never changed here).
    assert "maxmemory_policy" in redispolicy.check(redis_client)


async def test_readyz_warns_exactly_when_the_policy_would_evict_queued_jobs(
    redis_client: redis.Redis,
) -> None:
    async with (
        running_app() as app,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    expected = redispolicy.check(redis_client)  # read only, never reconfigured
    assert ready.json().get("warnings", []) == (
        [expected["warning"]] if "warning" in expected else []
    )
