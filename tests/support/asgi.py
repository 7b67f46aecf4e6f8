"""Drive the ASGI app by hand: a running lifespan, and requests whose receive/send we
control, so disconnects and partial reads can be tested without a network."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
from starlette.applications import Starlette

from app.main import create_app
from app.resources import lifespan
from app.security.auth import mint_token


@contextlib.asynccontextmanager
async def running_app() -> AsyncIterator[Starlette]:
    app = create_app()
    async with lifespan(app):
        yield app


@contextlib.asynccontextmanager
async def app_client() -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling the running app in-process."""
    async with running_app() as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def token(user: str = "alice", org: str | None = None, ttl: int = 3600) -> str:
    return mint_token(user, org_id=org, ttl_seconds=ttl)


def bearer(user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(user)}"}


class StreamCall:
    """One HTTP request to the app with a hand-driven receive channel."""

    def __init__(self, app: Starlette, path: str, headers: dict[str, str] | None = None) -> None:
        path, _, query = path.partition("?")
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
            "client": ("127.0.0.1", 12345),
            "server": ("testserver", 80),
            "state": {},
        }
        self.app = app
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.finished = False
        self._disconnect = anyio.Event()
        self._request_sent = False

    async def _receive(self) -> dict[str, Any]:
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._disconnect.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            self.body += message.get("body", b"")
            if not message.get("more_body", False):
                self.finished = True

    def disconnect(self) -> None:
        self._disconnect.set()

    async def run(self) -> None:
        await self.app(self.scope, self._receive, self._send)

    async def wait_for(self, predicate: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met; body so far: {bytes(self.body)!r}")
            await anyio.sleep(0.005)
