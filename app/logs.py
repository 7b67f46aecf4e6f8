"""Structured JSON logs, request ids, and an access log that never shows a token.

Uvicorn's own access log prints the raw query string, and SSE clients put their token
there (API.md: "Query tokens never appear in logs"), so Herald runs uvicorn with
``--no-access-log`` and logs requests here with credentials redacted.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from rq import get_current_job
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics, settings

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
_SECRET_PARAMS = {"token", "access_token", "jwt"}
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        job = get_current_job()  # a ContextVar read: set while an RQ job runs
        if job is not None:
            entry["job_id"] = job.id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level or settings.LOG_LEVEL)
    # The security log (blocked prompts, auth floods) can go to its own file so it
    # can be shipped and retained apart from the general log.
    security = logging.getLogger("herald.security")
    if settings.SECURITY_LOG_FILE and not security.handlers:
        file_handler = logging.FileHandler(settings.SECURITY_LOG_FILE)
        file_handler.setFormatter(JSONFormatter())
        security.addHandler(file_handler)


def redact_query(query: str) -> str:
    if not query:
        return ""
    pairs = [
        (k, "[redacted]" if k.lower() in _SECRET_PARAMS else v)
        for k, v in parse_qsl(query, keep_blank_values=True)
    ]
    return urlencode(pairs)


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
