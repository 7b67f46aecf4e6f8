"""The ASGI application: ``uvicorn app.main:app``."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from app import chat, devtoken, health, settings, streams, uploads
from app.errors import exception_handlers
from app.logs import AccessLogMiddleware, configure_logging
from app.resources import lifespan

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def create_app() -> Starlette:
    routes: list[BaseRoute] = [*health.routes, *streams.routes, *chat.routes, *uploads.routes]
    if settings.DEV_MODE:  # a token for anyone who asks: never outside local development
        routes.extend(devtoken.routes)
    if STATIC_DIR.is_dir():
        routes.append(Mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="static"))
    return Starlette(
        routes=routes,
        middleware=[Middleware(AccessLogMiddleware)],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )


configure_logging()
app = create_app()
