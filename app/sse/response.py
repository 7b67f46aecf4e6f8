"""The ASGI response of an event stream: SSE frames from an async iterator, sent as they come.

Modelled on sse-starlette's ``EventSourceResponse`` (3.7), itself modelled on Starlette's
``StreamingResponse``; the headers and the end of a stream are the same. Intentional
divergences from sse-starlette — do not "fix" them without reading why:

1. The body yields finished frames as ``bytes``: core/events.py frames each event once
   when it is published, and every subscriber sends those bytes; nothing is encoded
   per chunk (no ``ServerSentEvent``, no ``sep`` option).
2. No ping task: the body sends heartbeats itself, since it waits on its mailbox with
   a timeout anyway (app/sse/streams.py).
3. No shutdown listener per response: one watcher per process (app/sse/shutdown.py,
   started by the hub) closes every mailbox when uvicorn begins to exit, so each body
   ends normally and ``EventSource`` reconnects elsewhere with ``Last-Event-ID``.
4. The body runs in the request's own task; only the disconnect listener is a second
   task (sse-starlette runs four in a task group). So no task group, no exception
   group to collapse, and a disconnect cancels the request task directly, the way
   ``asyncio.timeout`` does (cancel, then ``uncancel`` once it is caught).
5. The per-send timeout is one loop timer (``call_later`` + ``Task.cancel``) instead of
   an anyio cancel scope per send: py-spy put the scope at ~15% of a web process
   saturated with fan-out (docs/benchmarks.md). asyncio only, as uvicorn runs.
6. The first chunk is pulled before ``http.response.start``: a stream that cannot open
   (429 ``too_many_streams``, Redis unavailable) still answers with its JSON error and
   status. This lets the body own its slot from start to end (app/sse/streams.py).
7. HEAD gets the headers and an empty body, and the body iterator is never started, so
   it takes no stream slot (as sse-starlette, its issue #218).
8. No websocket-denial wrapper and no background task: the routes are HTTP only and
   pass none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

HEADERS = {
    # API.md "Event streams": no caching, and X-Accel-Buffering stops nginx-style
    # proxies buffering the stream; keep-alive as sse-starlette sends it.
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
    "Connection": "keep-alive",
}


class SendTimeoutError(TimeoutError):
    """A send stayed blocked past the send timeout: the client stopped reading."""


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, body: AsyncGenerator[bytes, None], *, send_timeout: float | None) -> None:
        self.body_iterator = body
        self.send_timeout = send_timeout
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)
        self._listening = True  # a disconnect now cancels the stream
        self._disconnected = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message = {
            "type": "http.response.start",
            "status": self.status_code,
            "headers": self.raw_headers,
        }
        if scope["method"] == "HEAD":
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        body = self.body_iterator
        # Before the start line: an error opening the stream is still a JSON error.
        # Opening is not cut short by a disconnect, as in sse-starlette, where the
        # endpoint does that work before the response starts listening.
        first = await anext(body, None)
        task = asyncio.current_task()
        assert task is not None
        listener = asyncio.get_running_loop().create_task(self._cancel_on_disconnect(receive, task))
        try:
            await send(start)
            if first is not None:
                await self._send_chunk(send, first)
                async for chunk in body:
                    await self._send_chunk(send, chunk)
            self._listening = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self._disconnected:
                raise
            # Our own cancel: end quietly unless someone else cancelled the task too.
            if task.uncancel() > 0:
                raise
        except BaseException:
            # The body is suspended at a yield: close it so its cleanup (slot, mailbox)
            # runs now, before the error escapes.
            await body.aclose()
            raise
        finally:
            self._listening = False
            listener.cancel()
        await body.aclose()  # after a disconnect: runs the body's cleanup

    async def _cancel_on_disconnect(self, receive: Receive, task: asyncio.Task[None]) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
        if self._listening:
            self._disconnected = True
            task.cancel()

    async def _send_chunk(self, send: Send, chunk: bytes) -> None:
        message = {"type": "http.response.body", "body": chunk, "more_body": True}
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
            if not fired or task.uncancel() > 0:
                raise
            raise SendTimeoutError() from None
        finally:
            timer.cancel()
