"""The chat worker's outbox (jobs/chat/outbox.py): writes of many replies queued while a
batch is in flight leave together, in order, and one bad write fails only its caller.

On real Redis: the keys are under the test run's prefix.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest
import redis
import redis.asyncio
from redis.asyncio.client import Pipeline

from core import settings
from jobs.chat.outbox import Outbox, Write

pytestmark = pytest.mark.anyio


def _key(name: str) -> str:
    return f"{settings.REDIS_PREFIX}:outbox-test:{name}"


def _append(key: str, value: str) -> Write:
    async def write(pipe: Pipeline) -> None:
        pipe.rpush(key, value)

    return write


async def test_concurrent_writes_share_batches_and_keep_each_callers_order(
    aredis: redis.asyncio.Redis, redis_client: redis.Redis
) -> None:
    outbox = Outbox(aredis)
    keys = [_key(f"reply{i}") for i in range(50)]

    async def reply(key: str) -> None:
        for n in range(20):
            await outbox.send(_append(key, str(n)))

    await asyncio.gather(*(reply(k) for k in keys))

    for key in keys:
        assert [v.decode() for v in redis_client.lrange(key, 0, -1)] == [str(n) for n in range(20)]
    assert outbox.writes == 50 * 20
    # 50 replies writing at once: far fewer round trips than writes.
    assert outbox.batches <= outbox.writes // 10
    redis_client.delete(*keys)


async def test_a_failing_write_fails_only_its_caller(
    aredis: redis.asyncio.Redis, redis_client: redis.Redis
) -> None:
    outbox = Outbox(aredis)
    good, wrong_type = _key("good"), _key("a-string")
    redis_client.set(wrong_type, "not a list")

    async def raises(pipe: Pipeline) -> None:
        pipe.rpush(good, "dropped")  # queued, then the write fails: not sent
        raise ValueError("cannot encode")

    results = await asyncio.gather(
        outbox.send(_append(good, "a")),
        outbox.send(_append(wrong_type, "x")),  # WRONGTYPE from Redis
        outbox.send(raises),
        outbox.send(_append(good, "b")),
        return_exceptions=True,
    )

    assert results[0] is None and results[3] is None
    assert isinstance(results[1], redis.exceptions.ResponseError)
    assert isinstance(results[2], ValueError)
    assert redis_client.lrange(good, 0, -1) == [b"a", b"b"]
    redis_client.delete(good, wrong_type)


async def test_a_cancelled_caller_still_sends_its_write(
    aredis: redis.asyncio.Redis, redis_client: redis.Redis
) -> None:
    outbox = Outbox(aredis)
    key = _key("cancelled")
    first = asyncio.create_task(outbox.send(_append(key, "1")))
    second = asyncio.create_task(outbox.send(_append(key, "2")))
    await asyncio.sleep(0)  # both queued; the first batch is in flight
    second.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    await outbox.send(_append(key, "3"))
    assert redis_client.lrange(key, 0, -1) == [b"1", b"2", b"3"]
    redis_client.delete(key)


async def test_a_script_redis_has_forgotten_is_sent_again_with_its_text(
    aredis: redis.asyncio.Redis, redis_client: redis.Redis
) -> None:
    # After a script ran once the outbox skips redis-py's SCRIPT EXISTS question; a Redis
    # that lost its script cache meanwhile (restart, failover) answers NOSCRIPT. A script
    # text never sent before (a unique comment) stands in for a forgotten one, without
    # flushing the script cache that other programs on this server share.
    outbox = Outbox(aredis)
    key = _key("forgotten-script")
    body = f"return redis.call('RPUSH', KEYS[1], ARGV[1]) -- {uuid.uuid4()}"
    outbox._loaded.add(hashlib.sha1(body.encode()).hexdigest())

    def run_script(value: str) -> Write:
        async def write(pipe: Pipeline) -> None:
            pipe.rpush(key, f"draft {value}")
            await pipe.register_script(body)(keys=[key], args=[value], client=pipe)

        return write

    await asyncio.gather(*(outbox.send(run_script(str(n))) for n in range(3)))
    await outbox.send(run_script("3"))  # loaded now, by the EVAL: no question, no error

    values = [v.decode() for v in redis_client.lrange(key, 0, -1)]
    assert [v for v in values if not v.startswith("draft")] == ["0", "1", "2", "3"]
    assert len(values) == 8
    redis_client.delete(key)
