"""``GET /events`` and ``GET /uploads/{id}/events``: resumable Server-Sent Events.

Order of operations on connect (issue 2): take a stream slot, subscribe (confirmed by
Redis), *then* read history after Last-Event-ID, then forward live frames whose id is
newer than the last replayed one. Subscribing first is what makes replay and live
meet without a gap; the id filter is what stops them overlapping.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
from sse_starlette import EventSourceResponse
from sse_starlette._utils import collapse_excgroups
from sse_starlette.sse import SendTimeoutError
from starlette.requests import Request
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from app import metrics
from app.errors import BadRequest, RateLimited
from app.openapi import SSE_AUTH, STRING, content, errors, operation, query
from app.routes.uploads import fetch_upload
from app.security.auth import Principal, authenticate
from app.sse.hub import Hub, Mailbox
from app.sse.leases import StreamLeases
from core import events, settings
from core.eventkinds import EventKind

PING = b": ping\n\n"
# ?heartbeat=event: comments are invisible to EventSource, so a page cannot tell a
# quiet stream from a dead one (a frozen path that was never reset). Opted-in clients
# get a named event instead, with no id: it leaves Last-Event-ID alone (WHATWG HTML,
# "Server-sent events", dispatch). curl and other clients keep the comment.
HEARTBEAT_STYLES = ("comment", "event")
HEADERS = {
    # API.md "Event streams"; X-Accel-Buffering stops nginx-style proxies buffering.
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def _stream(kinds: list[EventKind]) -> dict[str, Any]:
    # API.md "Event streams": the event names a client may see on this stream.
    return content("text/event-stream", STRING, "Events: " + ", ".join(kinds) + ".")


# Opt-in named heartbeats, for clients that watch for a dead stream (docs/api.md).
_HEARTBEAT_PARAMETER = [query("heartbeat", {"enum": list(HEARTBEAT_STYLES), "default": "comment"})]


@operation(
    "The caller's event stream (SSE)",
    {"200": _stream(list(EventKind))} | errors(400, 401, 429),
    security=SSE_AUTH,
    parameters=_HEARTBEAT_PARAMETER,
)
async def user_events(request: Request) -> EventSourceResponse:
    principal = await authenticate(request, allow_query=True)
    return await open_stream(request, principal, events.user_stream(principal.user_id))


@operation(
    "One upload's event stream (SSE)",
    {"200": _stream([k for k in EventKind if not k.startswith("chat.")])}
    | errors(400, 401, 404, 429),
    security=SSE_AUTH,
    parameters=_HEARTBEAT_PARAMETER,
)
async def upload_events(request: Request) -> EventSourceResponse:
    principal = await authenticate(request, allow_query=True)
    upload_id = request.path_params["upload_id"]
    # The same tenancy check as GET /uploads/{id}: another tenant's upload, a
    # malformed id and one still being received all answer 404.
    await fetch_upload(request.app.state.pool, upload_id, principal.org_id)
    return await open_stream(request, principal, events.upload_stream(upload_id))


async def open_stream(request: Request, principal: Principal, key: str) -> EventSourceResponse:
    if request.method == "HEAD":
        # sse-starlette answers HEAD with headers only and never starts the body (its
        # issue #218), so stream_frames' cleanup would never run: a HEAD that took a
        # slot and a mailbox would leak both for the life of the process.
        return EventSourceResponse(iter(()), headers=HEADERS, ping=0, sep="\n")
    ping = heartbeat_frame(request.query_params.get("heartbeat", "comment"))
    leases: StreamLeases = request.app.state.leases
    hub: Hub = request.app.state.hub
    lease_id = uuid.uuid4().hex
    if not await leases.acquire(principal.user_id, lease_id):
        metrics.STREAMS_REFUSED.inc()
        raise RateLimited(
            f"At most {settings.SSE_MAX_CONNECTIONS_PER_USER} open streams per user.",
            code="too_many_streams",
            headers={"Retry-After": str(int(settings.SSE_LEASE_SECONDS))},
        )
    try:
        mailbox = await hub.subscribe(key)
    except BaseException:
        await leases.release(lease_id)
        raise
    last_event_id = request.headers.get("last-event-id") or request.query_params.get(
        "last_event_id"
    )
    body = stream_frames(request, principal, key, mailbox, last_event_id, lease_id, ping)
    # SIGTERM is handled once per process: the hub closes every mailbox, each
    # stream_frames returns, and each body ends properly, so EventSource reconnects
    # with Last-Event-ID to another web process (issue 5, "Deploy").
    return LeanEventSourceResponse(
        body,
        headers=HEADERS,
        ping=0,  # heartbeats come from stream_frames, which is waiting anyway
        sep="\n",
        send_timeout=settings.SSE_SEND_TIMEOUT_SECONDS,
    )


def heartbeat_frame(style: str) -> bytes:
    if style not in HEARTBEAT_STYLES:
        raise BadRequest(
            "'heartbeat' must be 'comment' or 'event'.",
            details={"field": "heartbeat", "allowed": list(HEARTBEAT_STYLES)},
        )
    if style == "comment":
        return PING
    data = events.encode_data({"interval_seconds": settings.SSE_HEARTBEAT_SECONDS})
    return events.frame(None, EventKind.HEARTBEAT, data)


class LeanEventSourceResponse(EventSourceResponse):
    """sse-starlette's response with one extra task per connection instead of three.

    The stock ``__call__`` runs the body, a ping loop, a per-connection shutdown
    listener (plus our shutdown callable) and a disconnect listener as tasks of a task
    group. Pings come from stream_frames and shutdown from the hub (one watcher per
    process), so only the disconnect listener needs a task of its own; the body runs
    in the request's task. Measured by scripts/bench_sse.py (README "Event streams:
    figures"). HEAD, framing and send timeouts stay sse-starlette's.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":
            await super().__call__(scope, receive, send)
            return
        with collapse_excgroups():
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(self._cancel_on_disconnect, receive, task_group.cancel_scope)
                await self._stream_response(send)
                task_group.cancel_scope.cancel()
        if self.background is not None:
            await self.background()

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        # Same contract as sse-starlette's (SendTimeoutError when a send blocks past
        # send_timeout), but a bare loop timer instead of an anyio cancel scope per
        # send: py-spy put the scope at ~15% of a fan-out-saturated web process.
        if self.send_timeout is None:
            await send(message)
            return
        task = asyncio.current_task()
        assert task is not None
        fired = False

        def expire() -> None:
            nonlocal fired
            fired = True
            task.cancel()

        timer = asyncio.get_running_loop().call_later(self.send_timeout, expire)
        try:
            await send(message)
        except asyncio.CancelledError:
            if not fired:
                raise
            task.uncancel()
            raise SendTimeoutError() from None
        finally:
            timer.cancel()

    async def _cancel_on_disconnect(self, receive: Receive, scope: anyio.CancelScope) -> None:
        await self._listen_for_disconnect(receive)
        scope.cancel()


async def stream_frames(
    request: Request,
    principal: Principal,
    key: str,
    mailbox: Mailbox,
    last_event_id: str | None,
    lease_id: str,
    ping: bytes = PING,
) -> AsyncIterator[bytes]:
    state = request.app.state
    metrics.OPEN_STREAMS.inc()
    try:
        # First bytes at once: routers with a first-byte timeout keep the stream.
        opening = b"retry: %d\n: connected\n\n" % settings.SSE_RETRY_MS
        if ping != PING:
            opening += ping  # the watcher learns the interval at once
        cursor: tuple[int, int] | None = None
        last_sent: str | None = None
        if last_event_id:
            replay = (
                await events.read_history(state.redis, key, last_event_id)
                if events.valid_id(last_event_id)
                else events.Replay(False, [], None)
            )
            if replay.complete:
                last_sent = replay.last_id
                opening += b"".join(replay.frames)
                metrics.EVENTS_DELIVERED.inc(len(replay.frames))
            else:
                # WHATWG SSE has no way to say "you missed events": a named event
                # tells the client to refetch over REST, and its id moves the
                # client's Last-Event-ID to the present.
                last_sent = await events.latest_id(state.redis, key)
                metrics.RESYNCS.inc()
                opening += events.frame(
                    last_sent,
                    EventKind.RESYNC,
                    events.encode_data({"reason": "history_unavailable"}),
                )
            assert last_sent is not None
            cursor = events.parse_id(last_sent)
        yield opening

        heartbeat = settings.SSE_HEARTBEAT_SECONDS
        while True:
            left = principal.seconds_left()
            if left <= 0:
                data = events.encode_data({"reason": "token_expired"})
                yield events.frame(last_sent, EventKind.TOKEN_EXPIRED, data)
                return
            frames = await mailbox.wait(min(heartbeat, left))
            if cursor is not None and frames:
                # Live frames that replay already delivered; ids only grow on a
                # channel, so the first newer frame ends the filtering for good.
                frames = [f for f in frames if events.frame_id(f) > cursor]
                if frames:
                    cursor = None
            if frames:
                last_sent = frames[-1][4 : frames[-1].index(b"\n")].decode()
                metrics.EVENTS_DELIVERED.inc(len(frames))
                yield b"".join(frames)
            elif mailbox.closed is not None:
                return  # slow client, shutdown or lost Redis: the client resumes
            elif not frames and principal.seconds_left() > 0:
                yield ping
    finally:
        metrics.OPEN_STREAMS.dec()
        state.hub.unsubscribe(mailbox)
        # The response's task group may already be cancelled; shield the cleanup so a
        # disconnect still frees the slot at once rather than when the lease lapses.
        with anyio.CancelScope(shield=True):
            await state.leases.release(lease_id)


routes = [
    Route("/events", user_events, methods=["GET"]),
    Route("/uploads/{upload_id}/events", upload_events, methods=["GET"]),
]
