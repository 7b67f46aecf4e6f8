"""Fault: Redis restarts (no persistence) while 100 clients stream from 2 web processes.

Promise: the web processes' subscriber reconnects without a restart; every client's
stream ends and it reconnects with Last-Event-ID; since history died with Redis it gets
``resync``; and every event published after the restart reaches its client exactly
once, in order.
"""

from __future__ import annotations

import re
import time

import anyio.to_thread
import pytest

from app.security.auth import mint_token
from core.events import publish_event
from core.principal import Identity
from tests.faults.clients import Client, wait_for
from tests.faults.proxy import BlackholeProxy
from tests.faults.stack import Stack

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

CLIENTS = 100
EVENTS_PER_PHASE = 3
# From Redis answering again to every one of the 100 clients streaming again.
RECOVERY_BOUND_SECONDS = 10.0
CONNECT_BOUND_SECONDS = 30.0
# Redis stays down this long, so clients also meet the "Redis is down" answers (503).
OUTAGE_SECONDS = 1.0

FIGURES: dict[str, float] = {}


def publish_round(stack: Stack, users: list[str], phase: str) -> dict[str, list[str]]:
    client = stack.redis.client()
    try:
        return {
            user: [
                publish_event(
                    client, "chat.chunk", {"phase": phase, "index": i}, owner=Identity(user).key
                )[0]
                for i in range(EVENTS_PER_PHASE)
            ]
            for user in users
        }
    finally:
        client.close()


async def test_redis_restart_while_streaming(stack: Stack) -> None:
    webs = [stack.start_web(), stack.start_web()]
    users = [f"redis-restart-{i}" for i in range(CLIENTS)]
    clients = [
        Client(user, mint_token(user, ttl_seconds=3600), webs[i % 2].port)
        for i, user in enumerate(users)
    ]
    for c in clients:
        c.start()
    try:
        await wait_for(
            lambda: all(c.connected for c in clients), CONNECT_BOUND_SECONDS, "100 streams"
        )
        before = await anyio.to_thread.run_sync(publish_round, stack, users, "before")
        await wait_for(
            lambda: all(len(c.named("chat.chunk")) == EVENTS_PER_PHASE for c in clients),
            CONNECT_BOUND_SECONDS,
            "events before the restart",
        )
        for c in clients:
            assert [e.last_event_id for e in c.events] == before[c.user]

        started = time.monotonic()
        await anyio.to_thread.run_sync(stack.redis.stop)
        await anyio.sleep(OUTAGE_SECONDS)
        await anyio.to_thread.run_sync(stack.redis.start)
        redis_up = time.monotonic()
        await wait_for(
            lambda: all(c.connected and c.named("resync") for c in clients),
            RECOVERY_BOUND_SECONDS,
            "every client to resume (resync) after the restart",
        )
        recovered = time.monotonic()
        FIGURES["redis_down_s"] = redis_up - started
        FIGURES["recover_s"] = recovered - redis_up

        after = await anyio.to_thread.run_sync(publish_round, stack, users, "after")
        await wait_for(
            lambda: all(len(c.named("chat.chunk")) >= 2 * EVENTS_PER_PHASE for c in clients),
            CONNECT_BOUND_SECONDS,
            "events after the restart",
        )
        await anyio.sleep(0.5)  # room for a duplicate to show up, if there were one
    finally:
        for c in clients:
            await c.stop()

    lost = duplicates = 0
    for c in clients:
        chunk_ids = [e.last_event_id for e in c.named("chat.chunk")]
        expected = before[c.user] + after[c.user]
        lost += len(set(expected) - set(chunk_ids))
        duplicates += len(chunk_ids) - len(set(chunk_ids))
        assert chunk_ids == expected, c.user
        # Exactly one resync: history was lost once, and only once.
        assert len(c.named("resync")) == 1, c.user
        assert c.connects >= 2
        # While Redis was down, a reconnect was refused with 503, never a 500.
        assert set(c.refusals) <= {503}, c.refusals
    assert lost == 0 and duplicates == 0
    for web in webs:
        # The same processes, reconnected: no restart of the web tier was needed.
        assert web.running()
        assert web.metric("herald_hub_reconnects_total") >= 1
    print(
        f"\nredis restart: down {FIGURES['redis_down_s']:.2f} s, all {CLIENTS} clients "
        f"resumed {FIGURES['recover_s']:.2f} s after Redis answered; lost {lost}, "
        f"duplicates {duplicates}; {sum(len(c.refusals) for c in clients)} reconnects "
        "refused with 503 meanwhile"
    )


PUBLISHED_DURING_BLIP = 20


def publish_slowly(stack: Stack, users: list[str], rounds: int) -> dict[str, list[str]]:
    client = stack.redis.client()
    ids: dict[str, list[str]] = {user: [] for user in users}
    try:
        for i in range(rounds):
            for user in users:
                ids[user] += publish_event(client, "chat.chunk", {"i": i}, owner=Identity(user).key)
            time.sleep(0.02)
        return ids
    finally:
        client.close()


async def test_subscriber_connection_killed_while_publishing(stack: Stack) -> None:
    """The pub/sub connection breaks but Redis keeps its data (a network blip, a
    failover with persistence): clients resume from history, exactly once, no resync."""
    webs = [stack.start_web(), stack.start_web()]
    users = [f"blip-{i}" for i in range(CLIENTS)]
    clients = [
        Client(user, mint_token(user, ttl_seconds=3600), webs[i % 2].port)
        for i, user in enumerate(users)
    ]
    for c in clients:
        c.start()
    try:
        await wait_for(lambda: all(c.connected for c in clients), CONNECT_BOUND_SECONDS, "streams")
        publisher = anyio.to_thread.run_sync(publish_slowly, stack, users, PUBLISHED_DURING_BLIP)
        async with anyio.create_task_group() as tg:
            result: dict[str, dict[str, list[str]]] = {}

            async def publish() -> None:
                result["ids"] = await publisher

            tg.start_soon(publish)
            await wait_for(
                lambda: all(len(c.events) >= 3 for c in clients), CONNECT_BOUND_SECONDS, "events"
            )
            admin = stack.redis.client()
            try:
                killed = admin.client_kill_filter(_type="pubsub")
            finally:
                admin.close()
        published = result["ids"]
        await wait_for(
            lambda: all(len(c.events) >= PUBLISHED_DURING_BLIP for c in clients),
            RECOVERY_BOUND_SECONDS,
            "every event after the blip",
        )
        await anyio.sleep(0.5)
    finally:
        for c in clients:
            await c.stop()
    assert killed >= 2  # one subscriber connection per web process
    for c in clients:
        assert not c.named("resync"), c.user
        assert [e.last_event_id for e in c.events] == published[c.user], c.user
    reconnected = sum(1 for c in clients if c.connects >= 2)
    assert reconnected == CLIENTS  # every stream was ended and resumed
    print(
        f"\npub/sub blip: {killed} subscriber connections killed mid-publish; all {CLIENTS} "
        f"clients resumed from history: {PUBLISHED_DURING_BLIP} events each, lost 0, dup 0"
    )


HEALTH_CHECK_SECONDS = 1.0
PARTITION_CLIENTS = 20
# A silent subscriber connection is dropped after 2 health-check intervals (app/sse/hub.py);
# then clients resume from history.
PARTITION_BOUND_SECONDS = 2 * HEALTH_CHECK_SECONDS + 3.0


async def test_subscriber_connection_blackholed(stack: Stack) -> None:
    """The subscriber's TCP flow goes silent without being closed (partition, NAT idle
    timeout): the hub notices by its own PINGs, reconnects, and clients resume."""
    proxy = BlackholeProxy(stack.redis.port)
    await proxy.start()
    web = stack.start_web(
        REDIS_URL=stack.redis.url_via(proxy.port),
        HUB_HEALTH_CHECK_SECONDS=str(HEALTH_CHECK_SECONDS),
    )
    users = [f"partition-{i}" for i in range(PARTITION_CLIENTS)]
    clients = [Client(u, mint_token(u, ttl_seconds=3600), web.port) for u in users]
    for c in clients:
        c.start()
    try:
        await wait_for(lambda: all(c.connected for c in clients), CONNECT_BOUND_SECONDS, "streams")
        before = await anyio.to_thread.run_sync(publish_round, stack, users, "before")
        await wait_for(
            lambda: all(len(c.events) == EVENTS_PER_PHASE for c in clients), 10, "before"
        )
        assert proxy.freeze_subscribers() == 1  # the hub's one pub/sub connection
        frozen_at = time.monotonic()
        during = await anyio.to_thread.run_sync(publish_round, stack, users, "during")
        await wait_for(
            lambda: all(len(c.events) >= 2 * EVENTS_PER_PHASE for c in clients),
            PARTITION_BOUND_SECONDS,
            "events published into the blackhole to arrive by another way",
        )
        FIGURES["partition_s"] = time.monotonic() - frozen_at
        await anyio.sleep(0.5)
    finally:
        for c in clients:
            await c.stop()
        await proxy.close()
    for c in clients:
        assert not c.named("resync"), c.user
        assert [e.last_event_id for e in c.events] == before[c.user] + during[c.user], c.user
    log = stack.log(f"web-{web.port}")
    assert re.search(r"pub/sub connection to \S+ silent for", log), log  # the watchdog did it
    print(
        f"\nsubscriber blackholed: events delivered {FIGURES['partition_s']:.2f} s after the "
        f"flow went silent (health check {HEALTH_CHECK_SECONDS} s); lost 0, duplicates 0"
    )
