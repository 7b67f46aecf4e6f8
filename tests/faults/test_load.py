"""Load: 2 web processes + 2 worker supervisors, 1,000 concurrent SSE clients (500 users
with 2 streams each, one on each web process), a burst of chats and uploads plus
events published straight to the bus.

Promise: every client receives exactly its own user's events — the user's Redis Stream,
in order, nothing missing, nothing doubled, nothing of anyone else's; and once the
clients leave, nothing is left behind: open-streams gauges at 0, no Redis pub/sub
channel of ours still subscribed, and the web processes' memory back near where it was.
"""

from __future__ import annotations

import asyncio
import time

import anyio.to_thread
import httpx
import orjson
import pytest

from app.security.auth import mint_token
from core import settings
from core.events import publish_event, user_stream
from core.principal import Identity
from tests.faults.clients import Client, wait_for
from tests.faults.stack import Stack
from tests.support.procs import wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

USERS = 500
STREAMS_PER_USER = 2  # 1,000 clients
CHATS = 100
UPLOADS = 20
PUBLISHED_PER_USER = 5
CONNECT_BOUND_SECONDS = 60.0
DELIVERY_BOUND_SECONDS = 60.0
CLEANUP_BOUND_SECONDS = 15.0
# RSS after the clients left may exceed the idle baseline by at most this much: CPython
# and uvloop keep some freed arenas and buffers, but 500 streams' worth must not stay.
RSS_SLACK_KIB = 40 * 1024
# ...and a second wave of 1,000 streams may add at most this: a leak would add again.
WAVE_GROWTH_KIB = 8 * 1024

FIGURES: dict[str, float] = {}


def csv_for(user: str) -> bytes:
    return ("n,label\n" + "".join(f"{i},{user}-{i}\n" for i in range(500))).encode()


def publish_all(stack: Stack, users: list[str]) -> None:
    client = stack.redis.client()
    try:
        for i in range(PUBLISHED_PER_USER):
            for user in users:
                publish_event(
                    client,
                    "chat.chunk",
                    {"owner": user, "seq": i},
                    owner=Identity(user, f"org-{user}").key,
                )
    finally:
        client.close()


def stream_ids(stack: Stack, users: list[str]) -> dict[str, list[str]]:
    client = stack.redis.client()
    try:
        out = {}
        for user in users:
            entries = client.xrange(user_stream(Identity(user, f"org-{user}").key), "-", "+")
            out[user] = [raw.decode() for raw, _ in entries]
        return out
    finally:
        client.close()


def our_channels(stack: Stack) -> tuple[list[bytes], int]:
    client = stack.redis.client()
    try:
        # The event channels only: RQ's own (worker command channels, under the same
        # prefix through RQ_KEY_PREFIX) stay subscribed while the workers live.
        channels = client.pubsub_channels(f"{settings.REDIS_PREFIX}:events:*")
        numsub = client.pubsub_numsub(*channels) if channels else []
        return channels, sum(n for _, n in numsub)
    finally:
        client.close()


async def test_thousand_clients_chats_and_uploads(stack: Stack) -> None:
    webs = [stack.start_web(), stack.start_web()]
    stack.start_worker("load-worker-1")
    stack.start_worker("load-worker-2")
    users = [f"load-{i}" for i in range(USERS)]
    tokens = {u: mint_token(u, org_id=f"org-{u}") for u in users}
    async with httpx.AsyncClient(timeout=30) as warm:
        for web in webs:  # one request each, so the baseline includes a warmed-up app
            await warm.get(web.base + "/readyz")
    baseline = [web.rss_kib() for web in webs]

    clients = [
        Client(user, tokens[user], webs[(i + s) % 2].port)
        for i, user in enumerate(users)
        for s in range(STREAMS_PER_USER)
    ]
    started = time.monotonic()
    for c in clients:
        c.start()
    try:
        await wait_for(
            lambda: all(c.connected for c in clients), CONNECT_BOUND_SECONDS, "1,000 streams"
        )
        FIGURES["connect_s"] = time.monotonic() - started
        assert all(c.connects == 1 for c in clients)
        peak_streams = sum(web.metric("herald_sse_open_streams") for web in webs)
        assert peak_streams == len(clients)

        burst = time.monotonic()
        async with httpx.AsyncClient(timeout=60) as http:

            async def chat(i: int) -> str:
                user = users[i]
                response = await http.post(
                    webs[i % 2].base + "/chat/messages",
                    json={"message": f"hello from {user}"},
                    headers={"authorization": f"Bearer {tokens[user]}"},
                )
                assert response.status_code == 202, response.text
                return str(response.json()["message_id"])

            async def upload(i: int) -> str:
                user = users[-1 - i]
                response = await http.post(
                    webs[i % 2].base + f"/uploads?filename={user}.csv",
                    content=csv_for(user),
                    headers={
                        "authorization": f"Bearer {tokens[user]}",
                        "content-type": "text/csv",
                    },
                )
                assert response.status_code == 202, response.text
                return str(response.json()["upload_id"])

            publisher = asyncio.ensure_future(anyio.to_thread.run_sync(publish_all, stack, users))
            chat_ids = await asyncio.gather(*(chat(i) for i in range(CHATS)))
            upload_ids = await asyncio.gather(*(upload(i) for i in range(UPLOADS)))
            await publisher

        chatting = dict(zip(users[:CHATS], chat_ids, strict=True))
        uploading = dict(zip(users[::-1][:UPLOADS], upload_ids, strict=True))

        def finished(c: Client) -> bool:
            published = [e for e in c.events if e.type == "chat.chunk" and "owner" in e.data]
            if len(published) < PUBLISHED_PER_USER:
                return False
            if c.user in chatting and not c.named("chat.done"):
                return False
            return not (c.user in uploading and not c.named("upload.done"))

        await wait_for(
            lambda: all(finished(c) for c in clients), DELIVERY_BOUND_SECONDS, "all events"
        )
        FIGURES["burst_s"] = time.monotonic() - burst
        loaded_rss = [web.rss_kib() for web in webs]
        await anyio.sleep(1.0)  # anything extra (a leak, a double) would arrive now
        truth = await anyio.to_thread.run_sync(stream_ids, stack, users)
    finally:
        for c in clients:
            if c.task is not None:
                c.task.cancel()
        await asyncio.gather(*(c.task for c in clients if c.task), return_exceptions=True)

    lost = duplicated = foreign = 0
    for c in clients:
        got = [e.last_event_id for e in c.events]
        expected = truth[c.user]
        lost += len(set(expected) - set(got))
        duplicated += len(got) - len(set(got))
        foreign += len(set(got) - set(expected))
        assert got == expected, c.user  # exactly the user's stream, in order
        for e in c.events:
            data = orjson.loads(e.data)
            assert data.get("owner", c.user) == c.user
            if "message_id" in data:
                assert data["message_id"] == chatting[c.user] or e.type == "chat.chunk"
            if "upload_id" in data:
                assert data["upload_id"] == uploading[c.user]
    assert (lost, duplicated, foreign) == (0, 0, 0)

    # Clients gone: every resource they held is released.
    left = time.monotonic()
    wait_until(
        lambda: all(web.metric("herald_sse_open_streams") == 0 for web in webs),
        CLEANUP_BOUND_SECONDS,
        "open-streams gauges to return to 0",
    )
    wait_until(
        lambda: our_channels(stack) == ([], 0),
        CLEANUP_BOUND_SECONDS,
        "no pub/sub channel of ours left subscribed",
    )
    FIGURES["cleanup_s"] = time.monotonic() - left
    await anyio.sleep(1.0)
    after = [web.rss_kib() for web in webs]
    for base, now in zip(baseline, after, strict=True):
        assert now - base < RSS_SLACK_KIB, (base, now)

    # A second wave of 1,000 streams: a leak grows again, allocator retention does not.
    wave = [Client(c.user, c.token, c.port) for c in clients]
    for c in wave:
        c.start()
    try:
        await wait_for(lambda: all(c.connected for c in wave), CONNECT_BOUND_SECONDS, "wave 2")
        await anyio.to_thread.run_sync(publish_all, stack, users)
        await wait_for(
            lambda: all(len(c.events) >= PUBLISHED_PER_USER for c in wave),
            DELIVERY_BOUND_SECONDS,
            "wave 2 events",
        )
    finally:
        for c in wave:
            if c.task is not None:
                c.task.cancel()
        await asyncio.gather(*(c.task for c in wave if c.task), return_exceptions=True)
    wait_until(
        lambda: (
            all(web.metric("herald_sse_open_streams") == 0 for web in webs)
            and our_channels(stack) == ([], 0)
        ),
        CLEANUP_BOUND_SECONDS,
        "wave 2 cleanup",
    )
    await anyio.sleep(1.0)
    after_wave = [web.rss_kib() for web in webs]
    for first, second in zip(after, after_wave, strict=True):
        assert second - first < WAVE_GROWTH_KIB, (first, second)
    print(
        f"\nload: {len(clients)} streams connected in {FIGURES['connect_s']:.1f} s; "
        f"{CHATS} chats + {UPLOADS} uploads + {PUBLISHED_PER_USER * USERS} published events "
        f"delivered to all in {FIGURES['burst_s']:.1f} s; lost {lost}, duplicated "
        f"{duplicated}, foreign {foreign}; cleanup {FIGURES['cleanup_s']:.2f} s; RSS KiB "
        f"baseline {baseline} → with clients {loaded_rss} → after {after} → after a second "
        f"wave of {len(clients)} streams {after_wave}"
    )
