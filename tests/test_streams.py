"""The SSE core: exact framing, resume, resync, limits, slow clients, expiry."""

from __future__ import annotations

import contextlib
import signal
import time
import uuid

import anyio
import httpx
import psycopg
import pytest
import redis

from app.dev.embedded import free_port
from app.dev.start import web_argv
from app.sse.hub import Hub
from app.sse.leases import leases_key
from app.sse.response import SendTimeoutError
from core import events, settings
from core.principal import Identity
from tests.support.asgi import StreamCall, running_app, token
from tests.support.procs import process_env, start, wait_ready
from tests.support.sse import SSEParser

pytestmark = pytest.mark.anyio


def publish(client: redis.Redis, user: str, n: int, event: str = "chat.chunk") -> list[str]:
    return [publish_one(client, user, {"index": i, "text": f"t{i}"}, event) for i in range(n)]


def publish_one(client: redis.Redis, user: str, data: dict, event: str = "chat.chunk") -> str:
    return events.publish_event(client, event, data, owner=Identity(user).key)[0]


async def test_finite_stream_exact_bytes(redis_client: redis.Redis) -> None:
    # A token that expires in ~1.5 s makes the stream finite: opening, replay, expiry.
    user = "exact-bytes"
    ids = [publish_one(redis_client, user, {"n": i}) for i in range(3)]
    async with running_app() as app:
        call = StreamCall(
            app,
            "/events",
            {"authorization": f"Bearer {token(user, ttl=2)}", "last-event-id": ids[0]},
        )
        with anyio.fail_after(5):
            await call.run()
    assert call.status == 200
    assert call.headers["content-type"].startswith("text/event-stream")
    assert call.headers["cache-control"] == "no-cache"
    assert call.headers["x-accel-buffering"] == "no"
    body = bytes(call.body)
    expected_head = b"retry: %d\n: connected\n\n" % settings.SSE_RETRY_MS + b"".join(
        b'id: %s\nevent: chat.chunk\ndata: {"n":%d}\n\n' % (ids[i].encode(), i) for i in (1, 2)
    )
    assert body.startswith(expected_head)
    rest = body[len(expected_head) :]
    tail = b'id: %s\nevent: token_expired\ndata: {"reason":"token_expired"}\n\n' % ids[2].encode()
    assert rest.endswith(tail)
    # Whatever lies between is heartbeats only.
    middle = rest[: -len(tail)]
    assert middle == b": ping\n\n" * (len(middle) // len(b": ping\n\n"))


async def test_live_events_and_disconnect_releases_slot(redis_client: redis.Redis) -> None:
    user = "live"
    async with running_app() as app:
        call = StreamCall(app, "/events", {"authorization": f"Bearer {token(user)}"})
        async with anyio.create_task_group() as tg:
            tg.start_soon(call.run)
            await call.wait_for(lambda c: b": connected" in c.body)
            event_id = publish_one(redis_client, user, {"text": "hello\nworld"})
            await call.wait_for(lambda c: event_id.encode() in c.body)
            assert b'data: {"text":"hello\\nworld"}\n\n' in call.body
            assert app.state.hub.connections == 1
            call.disconnect()
            with anyio.fail_after(3):
                await call.wait_for(lambda c: app.state.hub.connections == 0)
        assert redis_client.zcard(leases_key(Identity(user).key)) == 0


async def test_resync_when_history_is_gone(redis_client: redis.Redis) -> None:
    user = "resync"
    publish(redis_client, user, 2)
    async with running_app() as app:
        call = StreamCall(
            app, "/events?last_event_id=1-0", {"authorization": f"Bearer {token(user)}"}
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(call.run)
            await call.wait_for(lambda c: b"event: resync" in c.body)
            assert b'data: {"reason":"history_unavailable"}' in call.body
            call.disconnect()


async def test_resume_under_random_disconnects(redis_client: redis.Redis) -> None:
    """Received = published, in order, no duplicates, across many reconnects."""
    user = "resume"
    total = 300
    received: list[str] = []
    async with running_app() as app:

        async def producer() -> None:
            for i in range(total):
                publish_one(redis_client, user, {"i": i})
                if i % 7 == 0:
                    await anyio.sleep(0.001)

        async def consumer() -> None:
            last = "0-0"  # "before the first event": replay all retained history
            while len(received) < total:
                headers = {"authorization": f"Bearer {token(user)}", "last-event-id": last}
                call = StreamCall(app, "/events", headers)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(call.run)
                    await anyio.sleep(0.003 + (len(received) % 5) * 0.002)
                    call.disconnect()
                for event in SSEParser().feed(bytes(call.body)):
                    assert event.type != "resync"
                    if event.type == "chat.chunk":
                        received.append(event.data)
                        last = event.last_event_id

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consumer)
                await anyio.sleep(0.01)
                tg.start_soon(producer)
    assert received == [f'{{"i":{i}}}' for i in range(total)]


async def test_per_user_limit_across_two_app_instances(redis_client: redis.Redis) -> None:
    user = "limited"
    auth = {"authorization": f"Bearer {token(user)}"}
    async with running_app() as app_a, running_app() as app_b:
        calls = [StreamCall(app_a if i % 2 else app_b, "/events", auth) for i in range(5)]
        async with anyio.create_task_group() as tg:
            for call in calls:
                tg.start_soon(call.run)
            for call in calls:
                await call.wait_for(lambda c: b": connected" in c.body)
            extra = StreamCall(app_a, "/events", auth)
            await extra.run()
            assert extra.status == 429
            assert b'"code":"too_many_streams"' in extra.body
            calls[0].disconnect()
            key = leases_key(Identity(user).key)
            await calls[0].wait_for(lambda c: redis_client.zcard(key) == 4)
            again = StreamCall(app_b, "/events", auth)
            tg.start_soon(again.run)
            await again.wait_for(lambda c: c.status == 200)
            for call in [*calls[1:], again]:
                call.disconnect()


async def test_crashed_process_leases_lapse(redis_client: redis.Redis) -> None:
    user = "crashed"
    key = leases_key(Identity(user).key)
    # Five slots held by a process that died: their leases lapsed a second ago.
    redis_client.zadd(key, {f"dead-{i}": time.time() - 1 for i in range(5)})
    async with running_app() as app:
        call = StreamCall(app, "/events", {"authorization": f"Bearer {token(user)}"})
        async with anyio.create_task_group() as tg:
            tg.start_soon(call.run)
            await call.wait_for(lambda c: c.status == 200)
            call.disconnect()


async def test_slow_client_is_dropped_and_resumes(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = "slow"
    async with running_app() as app:
        call = StreamCall(app, "/events", {"authorization": f"Bearer {token(user)}"})
        blocked = anyio.Event()
        original_send = call._send

        async def stuck_send(message: dict) -> None:
            await original_send(message)
            if b": connected" in call.body:
                await blocked.wait()  # the client stops reading

        call._send = stuck_send  # type: ignore[method-assign]
        async with anyio.create_task_group() as tg:
            tg.start_soon(call.run)
            await call.wait_for(lambda c: b": connected" in c.body)
            ids = publish(redis_client, user, settings.SSE_QUEUE_SIZE + 5)
            await call.wait_for(lambda c: app.state.hub.connections == 0)
            blocked.set()
            call.disconnect()
        # It resumes from where it was and gets everything.
        resumed = StreamCall(
            app,
            "/events",
            {"authorization": f"Bearer {token(user, ttl=1)}", "last-event-id": "0-0"},
        )
        with anyio.fail_after(5):
            await resumed.run()
        assert resumed.body.count(b"event: chat.chunk") == len(ids)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer not-a-jwt"},
        {"authorization": "Basic abc"},
    ],
)
async def test_unauthorized(headers: dict[str, str]) -> None:
    async with running_app() as app:
        call = StreamCall(app, "/events", headers)
        await call.run()
    assert call.status == 401
    assert call.headers["www-authenticate"].startswith("Bearer")
    assert b'"code":"unauthorized"' in call.body


async def test_query_token_accepted_on_sse() -> None:
    async with running_app() as app:
        call = StreamCall(app, f"/events?token={token('q', ttl=1)}")
        with anyio.fail_after(5):
            await call.run()
    assert call.status == 200
    assert b"event: token_expired" in call.body


async def test_head_takes_no_slot_and_no_subscription(redis_client: redis.Redis) -> None:
    # HEAD never starts the body (app/sse/response.py), so nothing may be held for one.
    user = "head"
    async with running_app() as app:
        for _ in range(settings.SSE_MAX_CONNECTIONS_PER_USER + 1):
            call = StreamCall(app, "/events", {"authorization": f"Bearer {token(user)}"})
            call.scope["method"] = "HEAD"
            with anyio.fail_after(3):
                await call.run()
            assert call.status == 200
            assert call.headers["content-type"].startswith("text/event-stream")
            assert bytes(call.body) == b""
        assert app.state.hub.connections == 0
        assert redis_client.zcard(leases_key(Identity(user).key)) == 0
        unauthenticated = StreamCall(app, "/events")
        unauthenticated.scope["method"] = "HEAD"
        await unauthenticated.run()
        assert unauthenticated.status == 401


async def test_garbage_last_event_id_resyncs(redis_client: redis.Redis) -> None:
    user = "garbage-id"
    ids = publish(redis_client, user, 2)
    async with running_app() as app:
        for bad in (
            "not-an-id",
            "12-x",
            "-",
            "9" * 40,
            "+1-0",
            " 1-0",
            "1_0-0",
            "1-",
            "99999999999999999999-0",
        ):
            call = StreamCall(
                app, "/events", {"authorization": f"Bearer {token(user)}", "last-event-id": bad}
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(call.run)
                await call.wait_for(lambda c: b"event: resync" in c.body)
                call.disconnect()
            # The resync's id moves the client to the present.
            assert f"id: {ids[-1]}\nevent: resync\n".encode() in call.body, bad
            assert call.body.count(b"event: chat.chunk") == 0


async def test_upload_stream_receives_upload_events(
    redis_client: redis.Redis, db: psycopg.Connection
) -> None:
    upload_id = str(uuid.uuid4())
    db.execute(
        "INSERT INTO uploads (id, tenant, user_id, filename, status)"
        " VALUES (%s, 'org:org-u', 'owner', 'f', 'queued')",
        (upload_id,),
    )
    async with running_app() as app:
        mate = StreamCall(
            app,
            f"/uploads/{upload_id}/events",
            {"authorization": f"Bearer {token('mate', org='org-u')}"},
        )
        owner = StreamCall(app, "/events", {"authorization": f"Bearer {token('owner')}"})
        async with anyio.create_task_group() as tg:
            tg.start_soon(mate.run)
            tg.start_soon(owner.run)
            await mate.wait_for(lambda c: b": connected" in c.body)
            await owner.wait_for(lambda c: b": connected" in c.body)
            user_id, upload_event_id = events.publish_event(
                redis_client,
                "upload.progress",
                {"upload_id": upload_id, "percent": 50, "rows_processed": 10},
                owner=Identity("owner").key,
                upload_id=upload_id,
            )
            events.publish_event(
                redis_client, "chat.chunk", {"index": 0}, owner=Identity("owner").key
            )
            await owner.wait_for(lambda c: c.body.count(b"\nevent: ") == 2)
            await mate.wait_for(lambda c: upload_event_id.encode() in c.body)
            mate.disconnect()
            owner.disconnect()
        # Each stream numbers its own events; the upload stream carries no chat.
        assert f"id: {upload_event_id}\nevent: upload.progress\n".encode() in mate.body
        assert f"id: {user_id}\nevent: upload.progress\n".encode() in owner.body
        assert b"chat.chunk" not in mate.body


async def test_hub_survives_idle_ping(redis_client: redis.Redis) -> None:
    # With no channel left, Redis answers the watchdog's PING with a plain PONG, not
    # the subscribed-mode array; that reply used to kill the reader, and every later
    # stream of the process then failed (found by the API audit).
    hub = Hub(settings.REDIS_URL, queue_size=8, health_check_seconds=0.1)
    await hub.start()
    try:
        key = events.user_stream(Identity("idle-ping").key)
        hub.unsubscribe(await hub.subscribe(key))
        await anyio.sleep(0.6)  # several watchdog rounds: it PINGs after 0.1 s of silence
        assert [shard.reading for shard in hub.shards] == [True]
        with anyio.fail_after(5):
            mailbox = await hub.subscribe(key)
        event_id = publish_one(redis_client, "idle-ping", {"text": "after idle"})
        with anyio.fail_after(5):
            frames = await mailbox.wait(5)
        assert event_id.encode() in b"".join(frames)
        hub.unsubscribe(mailbox)
    finally:
        await hub.stop()


async def test_send_blocked_past_send_timeout_ends_the_stream(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client whose socket stops draining is cut after SSE_SEND_TIMEOUT_SECONDS, and
    its slot and mailbox are freed (the send timer, app/sse/response.py)."""
    monkeypatch.setattr(settings, "SSE_SEND_TIMEOUT_SECONDS", 0.2)
    user = "stuck-send"
    async with running_app() as app:
        call = StreamCall(app, "/events", {"authorization": f"Bearer {token(user)}"})
        never = anyio.Event()
        original_send = call._send

        async def stuck_send(message: dict) -> None:
            await original_send(message)
            if b": connected" in call.body:
                await never.wait()  # the transport never drains again

        call._send = stuck_send  # type: ignore[method-assign]
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                with pytest.raises(SendTimeoutError):
                    await call.run()

            tg.start_soon(run)
            await call.wait_for(lambda c: b": connected" in c.body)
            publish_one(redis_client, user, {"n": 1})
            with anyio.fail_after(5):
                await call.wait_for(lambda c: app.state.hub.connections == 0)
        key = leases_key(Identity(user).key)
        with anyio.fail_after(5):
            while redis_client.zcard(key):
                await anyio.sleep(0.01)


async def test_issue10_lease_limit_holds_past_key_ttl_and_crash_frees_slots(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five streams held by a real web process well past 2 x SSE_LEASE_SECONDS (the
    set's key TTL) and across many renewals: a sixth is still refused. Once that
    process is SIGKILLed, its slots lapse by themselves and a new stream is let in."""
    lease = 1.0
    monkeypatch.setattr(settings, "SSE_LEASE_SECONDS", lease)
    user = "lease-ttl"
    key = leases_key(Identity(user).key)
    auth = {"authorization": f"Bearer {token(user)}"}
    port = free_port()
    web = start("issue10-lease-web", web_argv(port), process_env(SSE_LEASE_SECONDS=str(lease)))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(web, base)
        async with (
            httpx.AsyncClient(base_url=base, headers=auth, timeout=10) as client,
            contextlib.AsyncExitStack() as held,
        ):
            for _ in range(settings.SSE_MAX_CONNECTIONS_PER_USER):
                response = await held.enter_async_context(client.stream("GET", "/events"))
                assert response.status_code == 200
            # Past the key's TTL (2 x lease), through about ten renewals (every lease/3).
            await anyio.sleep(3.5 * lease)
            assert redis_client.zcard(key) == settings.SSE_MAX_CONNECTIONS_PER_USER
            assert redis_client.pttl(key) > 0
            refused = await client.get("/events")
            assert refused.status_code == 429
            assert refused.json()["error"]["code"] == "too_many_streams"
            async with running_app() as app:
                other = StreamCall(app, "/events", auth)
                await other.run()
                assert other.status == 429
                # A crash: no release, no more renewals.
                web.signal(signal.SIGKILL)
                web.popen.wait()
                admitted = StreamCall(app, "/events", auth)
                with anyio.fail_after(10 * lease):  # a hang guard, not a speed check
                    while admitted.status != 200:
                        admitted = StreamCall(app, "/events", auth)
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(admitted.run)
                            await admitted.wait_for(lambda c: c.status is not None)
                            admitted.disconnect()
                        await anyio.sleep(0.1)
    finally:
        web.stop()
