"""An event stream: a slot and a subscription, replay after Last-Event-ID, then live.

Order of operations on connect: take a stream slot, subscribe (confirmed by Redis),
*then* read history after Last-Event-ID, then forward live frames whose id is newer
than the last replayed one. Subscribing first is what makes replay and live meet
without a gap; the id filter is what stops them overlapping.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.requests import Request

from app import metrics
from app.errors import BadRequest, RateLimited
from app.security.auth import Principal
from app.sse.hub import Hub
from app.sse.leases import StreamLeases
from app.sse.mailbox import Mailbox
from app.sse.response import EventStreamResponse
from core import events, settings
from core.eventclients import AsyncEventsClient
from core.eventkinds import EventKind

PING = b": ping\n\n"
# ?heartbeat=event: comments are invisible to EventSource, so a page cannot tell a
# quiet stream from a dead one (a frozen path that was never reset). Opted-in clients
# get a named event instead, with no id: it leaves Last-Event-ID alone (WHATWG HTML,
# "Server-sent events", dispatch). curl and other clients keep the comment.
HEARTBEAT_STYLES = ("comment", "event")


@asynccontextmanager
async def stream_slot(
    leases: StreamLeases, hub: Hub, owner: str, key: str
) -> AsyncIterator[Mailbox]:
    """One of the user's ``SSE_MAX_CONNECTIONS_PER_USER`` slots and a mailbox on ``key``,
    taken and given back together, as encode/broadcaster pairs subscribe/unsubscribe.
    ``owner`` is the user's ``Identity.key`` (core/principal.py), never ``sub`` alone.

    Raises ``RateLimited`` (429 ``too_many_streams``) when every slot is taken."""
    lease_id = uuid.uuid4().hex
    if not await leases.acquire(owner, lease_id):
        metrics.STREAMS_REFUSED.inc()
        raise RateLimited(
            f"At most {settings.SSE_MAX_CONNECTIONS_PER_USER} open streams per user.",
            code="too_many_streams",
            headers={"Retry-After": str(int(settings.SSE_LEASE_SECONDS))},
        )
    try:
        mailbox = await hub.subscribe(key)
        try:
            yield mailbox
        finally:
            hub.unsubscribe(mailbox)
    finally:
        # A caller's anyio cancel scope re-delivers its cancellation at every await:
        # shield, so a disconnect frees the slot at once, not when the lease lapses.
        with anyio.CancelScope(shield=True):
            await leases.release(lease_id)


def open_stream(request: Request, principal: Principal, key: str) -> EventStreamResponse:
    """The response for one stream; the slot is taken when its body starts, before the
    status line is sent (app/sse/response.py), so a refusal is still a JSON 429."""
    ping = heartbeat_frame(request.query_params.get("heartbeat", "comment"))
    last_event_id = request.headers.get("last-event-id") or request.query_params.get(
        "last_event_id"
    )
    body = stream_frames(request, principal, key, last_event_id, ping)
    return EventStreamResponse(body, send_timeout=settings.SSE_SEND_TIMEOUT_SECONDS)


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


async def stream_frames(
    request: Request,
    principal: Principal,
    key: str,
    last_event_id: str | None,
    ping: bytes = PING,
) -> AsyncGenerator[bytes, None]:
    state = request.app.state
    async with stream_slot(state.leases, state.hub, principal.key, key) as mailbox:
        metrics.OPEN_STREAMS.inc()
        try:
            opening, last_sent = await _opening(state.events, key, last_event_id, ping)
            # Set after a replay: live frames up to here were in it already.
            cursor = events.parse_id(last_sent) if last_sent is not None else None
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
                elif principal.seconds_left() > 0:
                    yield ping
        finally:
            metrics.OPEN_STREAMS.dec()


async def _opening(
    client: AsyncEventsClient, key: str, last_event_id: str | None, ping: bytes
) -> tuple[bytes, str | None]:
    """The first bytes, sent at once so routers with a first-byte timeout keep the
    stream: the retry hint, then what the client missed; and the last id they carry."""
    opening = b"retry: %d\n: connected\n\n" % settings.SSE_RETRY_MS
    if ping != PING:
        opening += ping  # a named heartbeat: the watcher learns the interval at once
    if not last_event_id:
        return opening, None
    replay = (
        await events.read_history(client, key, last_event_id)
        if events.valid_id(last_event_id)
        else events.Replay(False, [], None)
    )
    if replay.complete:
        assert replay.last_id is not None
        metrics.EVENTS_DELIVERED.inc(len(replay.frames))
        return opening + b"".join(replay.frames), replay.last_id
    # WHATWG SSE has no way to say "you missed events": a named event tells the client
    # to refetch over REST, and its id moves the client's Last-Event-ID to the present.
    latest = await events.latest_id(client, key)
    metrics.RESYNCS.inc()
    data = events.encode_data({"reason": "history_unavailable"})
    return opening + events.frame(latest, EventKind.RESYNC, data), latest
