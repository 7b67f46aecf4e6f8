"""Operations endpoints: liveness, readiness, metrics, the OpenAPI document."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app import metrics
from app.errors import error_body
from app.openapi import PUBLIC, STRING, content, errors, json_body, obj, operation

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


@operation(
    "Readiness of Redis and PostgreSQL",
    {"200": json_body(_STATUS)} | errors(503),
    security=PUBLIC,
)
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    probes = [_redis_ok(state.redis), _postgres_ok(request)]
    if state.events is not state.redis:  # EVENTS_REDIS_URL: the event bus's own Redis
        probes.append(_redis_ok(state.events))
    results = await asyncio.gather(*probes)
    checks = dict(zip(["redis", "postgresql", "redis_events"], results, strict=False))
    down = [name for name, ok in checks.items() if not ok]
    if down:
        body = error_body(
            "not_ready",
            f"Not ready: {', '.join(down)} unavailable.",
            {"down": down, "checks": {k: "ok" if v else "down" for k, v in checks.items()}},
        )
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "checks": {k: "ok" for k in checks}})


@operation(
    "Prometheus metrics",
    {"200": content("text/plain", STRING, "Prometheus text")},
    security=PUBLIC,
)
async def metrics_endpoint(request: Request) -> Response:
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
