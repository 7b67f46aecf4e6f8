"""Notice that uvicorn has begun to shut down, while streams are still open.

On SIGTERM or SIGINT uvicorn (0.54, ``Server.shutdown``) stops accepting, then waits
for every open connection to finish, up to ``--timeout-graceful-shutdown``, before the
lifespan's shutdown runs; an endless SSE body would hold it all that time and then be
cut mid-frame. No ASGI message announces the shutdown, so, as sse-starlette does (its
issues #132 and #211), the ``Server`` is found through the signal handler uvicorn
installs (a bound method, ``Server.handle_exit``) and its public ``should_exit`` flag is
polled. Unlike sse-starlette, nothing is patched at import and no process-wide flag is
kept: the server is looked up again on every poll, so a later server in the same
process is not affected by an earlier one's exit.
"""

from __future__ import annotations

import asyncio
import signal

POLL_SECONDS = 0.5  # how late a stream may notice the exit; sse-starlette polls as often


def server_exiting() -> bool:
    """True once the uvicorn server running this process has been asked to exit."""
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


async def wait_for_server_exit() -> None:
    """Return when uvicorn begins to shut down (never, when not run by uvicorn)."""
    # uvicorn sets a plain attribute; there is no event to wait on.
    while not server_exiting():  # noqa: ASYNC110
        await asyncio.sleep(POLL_SECONDS)
