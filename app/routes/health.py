"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import metrics
from app.errors import Unauthorized, error_body
from app.openapi import PUBLIC, STRING, content, errors, json_body, obj, operation
from core import redispolicy, settings

_STATUS = obj(["status"], {"status": STRING})


@operation("Liveness", {"200": json_body(_STATUS)}, security=PUBLIC)
async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _redis_ok(client: Any) -> bool:
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout=2))
    except Exception:
        return False


async def _postgres_ok(request: Request) -> bool:
    async def probe() -> bool:
        async with request.app.state.pool.connection(timeout=2) as conn:
            await conn.execute("SELECT 1")
        return True

    try:
        return await asyncio.wait_for(probe(), timeout=3)
    except Exception:
        return False


async def _redis_policy(request: Request) -> dict[str, Any]:
    try:
        return await asyncio.wait_for(redispolicy.acheck(request.app.state.redis), timeout=2)
    except Exception:
        return {"checked": False}


@operation(
    "Readiness of Redis and PostgreSQL",
    {"200": json_body(_STATUS)} | errors(503),
    security=PUBLIC,
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    separate = state.events is not state.redis  # EVENTS_REDIS_URL: the bus's own Redis
    redis_ok, postgres_ok, policy, events_ok = await asyncio.gather(
        _redis_ok(state.redis),
        _postgres_ok(request),
        _redis_policy(request),
        _redis_ok(state.events) if separate else asyncio.sleep(0, True),
    )
    checks = {"redis": redis_ok, "postgresql": postgres_ok}
    if separate:
        checks["redis_events"] = events_ok
    down = [name for name, ok in checks.items() if not ok]
    # A Redis that would evict queued jobs is ready, but says so (core/redispolicy.py).
    warnings = {"warnings": [policy["warning"]]} if "warning" in policy else {}
    if down:
        body = error_body(
            "not_ready",
            f"Not ready: {', '.join(down)} unavailable.",
            {
                "down": down,
                "checks": {k: "ok" if v else "down" for k, v in checks.items()},
                **warnings,
            },
        )
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "checks": {k: "ok" for k in checks}, **warnings})


def check_metrics_token(request: Request) -> None:
    """With METRICS_TOKEN set, only a scraper holding it reads /metrics: the metrics
    name routes, queues and failure rates, which an attacker would like to watch."""
    expected = str(settings.METRICS_TOKEN)
    if not expected:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # Constant-time, so the token cannot be guessed byte by byte from response times.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise Unauthorized("GET /metrics needs 'Authorization: Bearer <METRICS_TOKEN>'.")


@operation(
    "Prometheus metrics (a bearer METRICS_TOKEN when one is configured)",
    {"200": content("text/plain", STRING, "Prometheus text")} | errors(401),
    security=PUBLIC,
)
async def metrics_endpoint(request: Request) -> Response:
    check_metrics_token(request)
    queue_keys = request.app.state.jobs.keys()
    body = await metrics.render_metrics(request.app.state.redis, queue_keys)
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def openapi(request: Request) -> JSONResponse:
    # Built once from the routes by create_app (app/main.py).
    return JSONResponse(request.app.state.openapi)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics_endpoint, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
]
