"""Herald's Redis connections share one ``DriverInfo`` (core/redisdriver.py): redis-py
otherwise reads the package metadata for every new connection. The server is still told
the library's name and version (``CLIENT SETINFO``, Redis 7.2+), on real Redis."""

from __future__ import annotations

from importlib import metadata

import pytest

from core.redisdriver import driver_info
from jobs.chat.runtime import open_runtime

pytestmark = pytest.mark.anyio


async def test_chat_connections_share_one_driver_info_and_still_name_the_library() -> None:
    async with open_runtime() as runtime:
        shared = runtime.redis.connection_pool.connection_kwargs["driver_info"]
        assert shared is driver_info()
        assert (shared.formatted_name, shared.lib_version) == (
            "redis-py",
            metadata.version("redis"),
        )
        info = await runtime.redis.client_info()
        server = await runtime.redis.info("server")
    if tuple(map(int, server["redis_version"].split(".")[:2])) >= (7, 2):
        assert (info["lib-name"], info["lib-ver"]) == ("redis-py", metadata.version("redis"))
    else:  # CLIENT SETINFO is new in Redis 7.2; older servers do not keep it
        assert "lib-name" not in info
