"""uvicorn's httptools protocol with bounds on what an unauthenticated client can hold.

Run by the Procfile as ``uvicorn --http app.connections:BoundedHttpToolsProtocol``
(uvicorn's ``--http`` takes a class path). An ASGI middleware cannot do this job: it
runs only once the headers are parsed, and httptools buffers a header of any size
before that (64 MiB were taken). Per connection, and per process:

- the request line and headers may hold ``HTTP_MAX_HEADER_BYTES``: past that, 431
  (RFC 6585 section 5) and the connection closes;
- they must arrive within ``HTTP_HEADER_TIMEOUT_SECONDS`` of the request's first byte
  (of the connection, for the first request): else 408 (RFC 9110 section 15.5.9);
- a body gets ``HTTP_BODY_TIMEOUT_SECONDS`` plus one second per
  ``HTTP_BODY_MIN_BYTES_PER_SECOND`` received (Apache mod_reqtimeout's rule), not
  counting time the application itself stopped reading (flow control);
- at most ``HTTP_MAX_PENDING_REQUESTS`` connections per process may still be sending
  their headers; one more is answered 503 before anything is read.

A connection past its headers (an SSE stream, an upload being read) is not counted and
has no header timer, so long-lived streams are not limited by any of this. Refusals
are written straight to the socket in API.md's JSON error shape.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from app.errors import error_body
from core import settings

_PENDING_ATTR = "herald_pending_heads"


def refusal(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> bytes:
    body = orjson.dumps(error_body(code, message))
    lines = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("connection", "close"),
        *(headers or {}).items(),
    ]
    head = b"".join(f"{name}: {value}\r\n".encode() for name, value in lines)
    return STATUS_LINE[status] + head + b"\r\n" + body


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # One set per server (process), shared by its connections.
        pending: set[BoundedHttpToolsProtocol] | None = getattr(server_state, _PENDING_ATTR, None)
        if pending is None:
            pending = set()
            setattr(server_state, _PENDING_ATTR, pending)
        self._pending = pending
        self._in_head = True  # the parser is between messages or inside headers
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_deadline = 0.0

    # --- connection ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self._pending) >= settings.HTTP_MAX_PENDING_REQUESTS:
            self.logger.warning("too many connections still sending headers; refused")
            self._refuse(
                503,
                "service_unavailable",
                "The server is busy; retry shortly.",
                {"retry-after": "1"},
            )
            return
        self._begin_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._end_head()
        self._cancel_body_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        if self._head_timer is None:  # the first byte of the next request on this connection
            self._begin_head()
        room = settings.HTTP_MAX_HEADER_BYTES - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what the limit allows: if the headers end in there, the rest is body.
        self._head_bytes += room
        super().data_received(data[:room])
        if self.transport.is_closing():  # the parser refused it (400) already
            return
        if self._in_head:
            self._refuse(431, "headers_too_large", "The request headers are too large.")
        else:
            self.data_received(data[room:])

    # --- parser callbacks ----------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._end_head()
        super().on_headers_complete()
        self._body_deadline = time.monotonic() + settings.HTTP_BODY_TIMEOUT_SECONDS
        self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        self._body_deadline += len(body) / max(1, settings.HTTP_BODY_MIN_BYTES_PER_SECOND)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()
        # The next request's head starts counting (and timing) at its first byte.
        self._in_head = True
        self._head_bytes = 0

    # --- bounds ----------------------------------------------------------------------------
    def _begin_head(self) -> None:
        self._in_head = True
        self._pending.add(self)
        self._head_timer = self.loop.call_later(
            settings.HTTP_HEADER_TIMEOUT_SECONDS, self._head_timed_out
        )

    def _end_head(self) -> None:
        self._in_head = False
        self._pending.discard(self)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(408, "request_timeout", "The request headers took too long.")

    def _arm_body_timer(self) -> None:
        delay = max(0.0, self._body_deadline - time.monotonic())
        self._body_timer = self.loop.call_later(delay, self._body_timer_fired)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timer_fired(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        now = time.monotonic()
        if self.flow.read_paused:
            # Not the client's fault: the application has not read what it has. Give
            # the client a fresh allowance once reading resumes.
            self._body_deadline = now + settings.HTTP_BODY_TIMEOUT_SECONDS
        if now < self._body_deadline:
            self._arm_body_timer()
            return
        self._refuse(408, "request_timeout", "The request body arrived too slowly.")

    def _refuse(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        self._end_head()
        self._cancel_body_timer()
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            self.transport.write(refusal(status, code, message, headers))
        if cycle is not None:
            # The application (if it is waiting for the body) sees a disconnect, and
            # anything it sends from now on is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()
