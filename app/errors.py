"""Every error a client can see, and the one place that renders them as JSON.

API.md: ``{"error": {"code", "message", "details"?}}`` with the fitting status; never a
500 with a stack trace for bad input.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import psycopg
import redis.exceptions
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

logger = logging.getLogger("herald.errors")


class HeraldError(Exception):
    status_code = 500
    code = "internal_error"
    message = "Something went wrong on our side."

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str | None = None,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.code = code or self.code
        self.details = dict(details) if details else None
        self.headers = dict(headers) if headers else {}
        super().__init__(self.message)


class BadRequest(HeraldError):
    status_code = 400
    code = "validation_error"
    message = "The request is not valid."


class InvalidJSON(BadRequest):
    code = "invalid_json"
    message = "The request body is not valid JSON."


class Unauthorized(HeraldError):
    status_code = 401
    code = "unauthorized"
    message = "A valid bearer token is required."

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        # RFC 6750 section 3: a 401 names the scheme the client should use.
        self.headers.setdefault("WWW-Authenticate", 'Bearer realm="herald"')


class Forbidden(HeraldError):
    status_code = 403
    code = "forbidden"
    message = "You may see this resource but not do this to it."


class NotFound(HeraldError):
    status_code = 404
    code = "not_found"
    message = "No such resource."


class Conflict(HeraldError):
    status_code = 409
    code = "conflict"
    message = "The resource is not in a state that allows this."


class RequestTimeout(HeraldError):
    status_code = 408
    code = "request_timeout"
    message = "The request body stopped arriving."


class PayloadTooLarge(HeraldError):
    status_code = 413
    code = "payload_too_large"
    message = "The request body is too large."


class UnsupportedMediaType(HeraldError):
    status_code = 415
    code = "unsupported_media_type"
    message = "This content type is not accepted here."


class Unprocessable(HeraldError):
    status_code = 422
    code = "unprocessable"
    message = "The request was understood but refused."


class RateLimited(HeraldError):
    status_code = 429
    code = "rate_limited"
    message = "Too many requests; retry later."


class ServiceUnavailable(HeraldError):
    status_code = 503
    code = "service_unavailable"
    message = "A backing service is unavailable; retry later."


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if details:
        error["details"] = dict(details)
    return {"error": error}


def render_error(exc: HeraldError) -> JSONResponse:
    return JSONResponse(
        error_body(exc.code, exc.message, exc.details),
        status_code=exc.status_code,
        headers=exc.headers,
    )


_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
}


async def handle_herald_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HeraldError)
    if exc.status_code >= 500:
        logger.warning("request failed: %s %s", exc.code, exc.message)
    return render_error(exc)


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else "HTTP error."
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Starlette names only the first route that matched the path, but GET and
        # POST /uploads are two routes; RFC 9110 section 15.5.6 wants every method.
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return JSONResponse(error_body(code, message), status_code=exc.status_code, headers=headers)


def allowed_methods(request: Request) -> str:
    path = request.scope.get("path", "")
    methods: set[str] = set()
    for route in request.app.router.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.match(path):
            methods |= route.methods
    return ", ".join(sorted(methods))


async def handle_database_down(request: Request, exc: Exception) -> Response:
    logger.error("postgresql unavailable: %s", exc)
    return render_error(
        ServiceUnavailable(
            "PostgreSQL is unavailable; retry later.", details={"service": "postgresql"}
        )
    )


async def handle_redis_down(request: Request, exc: Exception) -> Response:
    logger.error("redis unavailable: %s", exc)
    return render_error(
        ServiceUnavailable("Redis is unavailable; retry later.", details={"service": "redis"})
    )


async def handle_client_disconnect(request: Request, exc: Exception) -> Response:
    # The client hung up mid-request (closed tab, lost network, a body cut by the
    # server's read timeout): not our fault, so one line, no traceback. Nobody reads
    # the answer; 499 is nginx's "client closed request", for the access log.
    logger.info("client disconnected before the request was read")
    return Response(status_code=499)


async def handle_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error", exc_info=exc)
    return render_error(HeraldError())


# The one handler map. Starlette picks the most specific class (MRO order).
exception_handlers = {
    HeraldError: handle_herald_error,
    HTTPException: handle_http_exception,
    ClientDisconnect: handle_client_disconnect,
    psycopg.OperationalError: handle_database_down,
    redis.exceptions.ConnectionError: handle_redis_down,
    redis.exceptions.TimeoutError: handle_redis_down,
    # A Redis Cluster mid-failover (CLUSTERDOWN, a slot with no owner yet): as down.
    redis.exceptions.ClusterError: handle_redis_down,
    redis.exceptions.RedisClusterException: handle_redis_down,
    Exception: handle_unexpected,
}
