"""``?heartbeat=event``: a named heartbeat a browser can watch (issue 10, item 11).

``: ping`` comments never reach EventSource's listeners, so a page cannot tell a quiet
stream from a silently dead one. Opted-in clients get ``event: heartbeat`` (no id, so
Last-Event-ID is untouched) at once and then instead of each comment; everyone else
keeps the comment.
"""

from __future__ import annotations

import re

import anyio
import pytest
import redis

from app.sse.leases import leases_key
from core import events, settings
from core.principal import Identity
from tests.support.asgi import StreamCall, running_app, token

pytestmark = pytest.mark.anyio

HEARTBEAT = (
    b'event: heartbeat\ndata: {"interval_seconds":%s}\n\n'
    % str(settings.SSE_HEARTBEAT_SECONDS).encode()
)


async def test_opted_in_stream_gets_named_heartbeats_without_ids(
    redis_client: redis.Redis,
) -> None:
    user = "heartbeat-event"
    before = events.publish_event(redis_client, "chat.chunk", {"n": 0}, owner=Identity(user).key)[0]
    after = events.publish_event(redis_client, "chat.chunk", {"n": 1}, owner=Identity(user).key)[0]
    headers = {"authorization": f"Bearer {token(user)}", "last-event-id": before}
    async with running_app() as app:
        call = StreamCall(app, "/events?heartbeat=event", headers)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call.run)
            with anyio.fail_after(10):
                # The opening heartbeat, the replay, then at least two periodic ones.
                await call.wait_for(lambda c: c.body.count(HEARTBEAT) >= 3, timeout=10)
            call.disconnect()
    body = bytes(call.body)
    opening = b"retry: %d\n: connected\n\n" % settings.SSE_RETRY_MS
    assert body.startswith(opening + HEARTBEAT + b"id: " + after.encode() + b"\n")
    assert b": ping" not in body
    # Every frame but the replayed event is a heartbeat; none has an id line.
    frames = [f for f in body[len(opening) :].split(b"\n\n") if f]
    assert [f for f in frames if f.startswith(b"id: ")] == [
        b'id: %s\nevent: chat.chunk\ndata: {"n":1}' % after.encode()
    ]
    assert all(f + b"\n\n" == HEARTBEAT for f in frames if not f.startswith(b"id: "))


async def test_default_stream_keeps_comment_pings() -> None:
    async with running_app() as app:
        call = StreamCall(app, "/events", {"authorization": f"Bearer {token('hb-default')}"})
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call.run)
            with anyio.fail_after(10):
                await call.wait_for(lambda c: b": ping\n\n" in c.body, timeout=10)
            call.disconnect()
    assert b"heartbeat" not in call.body


async def test_unknown_heartbeat_style_is_a_400_and_takes_no_slot(
    redis_client: redis.Redis,
) -> None:
    user = "hb-bad"
    async with running_app() as app:
        call = StreamCall(
            app, "/events?heartbeat=sometimes", {"authorization": f"Bearer {token(user)}"}
        )
        with anyio.fail_after(5):
            await call.run()
        assert call.status == 400
        assert re.search(rb'"code":\s*"validation_error"', bytes(call.body))
        assert app.state.hub.connections == 0
    assert redis_client.zcard(leases_key(Identity(user).key)) == 0
