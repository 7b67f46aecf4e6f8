"""``GET /events`` and ``GET /uploads/{id}/events``: resumable Server-Sent Events.

Who may open which stream; the stream itself (slot, replay, live, heartbeats) is
app/sse/streams.py.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from app.openapi import SSE_AUTH, STRING, content, errors, operation, query
from app.routes.uploads import fetch_upload
from app.security.auth import authenticate
from app.sse.response import EventStreamResponse
from app.sse.streams import HEARTBEAT_STYLES, open_stream
from core import events
from core.eventkinds import EventKind


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
async def user_events(request: Request) -> EventStreamResponse:
    """The caller's own stream: every event of their chats and uploads."""
    principal = await authenticate(request, allow_query=True)
    return open_stream(request, principal, events.user_stream(principal.key))


@operation(
    "One upload's event stream (SSE)",
    {"200": _stream([k for k in EventKind if not k.startswith("chat.")])}
    | errors(400, 401, 404, 429),
    security=SSE_AUTH,
    parameters=_HEARTBEAT_PARAMETER,
)
async def upload_events(request: Request) -> EventStreamResponse:
    """One upload's events, for any user of its tenant."""
    principal = await authenticate(request, allow_query=True)
    upload_id = request.path_params["upload_id"]
    # The same tenancy check as GET /uploads/{id}: another tenant's upload, a
    # malformed id and one still being received all answer 404.
    await fetch_upload(request.app.state.pool, upload_id, principal.tenant)
    return open_stream(request, principal, events.upload_stream(upload_id))


routes = [
    Route("/events", user_events, methods=["GET"]),
    Route("/uploads/{upload_id}/events", upload_events, methods=["GET"]),
]
