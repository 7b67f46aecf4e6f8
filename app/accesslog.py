"""The access log: request ids, HTTP metrics, and one line per request without a token.

Uvicorn's own access log prints the raw query string, and SSE clients put their token
there (API.md: "Query tokens never appear in logs"), so Herald runs uvicorn with
``--no-access-log`` and logs requests here with credentials redacted.
"""

from __future__ import annotations

import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from core.logs import redact_query, request_id_var


class AccessLogMiddleware:
    """Request id (``X-Request-ID``, honoured when sent), metrics and one log line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.logger = logging.getLogger("herald.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming[:64] if incoming else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
                route = _route_name(scope)
                metrics.HTTP_LATENCY.labels(route).observe(time.perf_counter() - started)
                metrics.HTTP_REQUESTS.labels(route, scope["method"], str(status)).inc()
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            query = redact_query(scope.get("query_string", b"").decode("latin-1"))
            path = scope["path"] + ("?" + query if query else "")
            self.logger.info(
                "%s %s %d",
                scope["method"],
                path,
                status,
                extra={"duration_ms": round((time.perf_counter() - started) * 1000, 2)},
            )
            request_id_var.reset(token)


def _route_name(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
