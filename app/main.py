"""The ASGI application: ``uvicorn app.main:app``."""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute
from starlette.staticfiles import StaticFiles

from app.accesslog import AccessLogMiddleware
from app.errors import exception_handlers
from app.headers import SecurityHeadersMiddleware
from app.openapi import openapi_document
from app.proxy import TrustedProxyMiddleware
from app.resources import lifespan
from app.routes import (
    chat,
    conversations,
    events,
    health,
    page,
    replies,
    upload_rows,
    uploads,
)
from core import settings
from core.logs import configure_logging

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


def create_app() -> Starlette:
    routes: list[BaseRoute] = [
        *health.routes,
        *events.routes,
        *chat.routes,
        *conversations.routes,
        *replies.routes,
        *uploads.routes,
        *upload_rows.routes,
    ]
    if settings.DEV_MODE:  # a token for anyone who asks: never outside local development
        # Imported here only: a production process never loads app.dev.
        from app.dev import token as devtoken

        routes.extend(devtoken.routes)
    else:  # only the page's "is there a local token?" probe, answered no
        routes.extend(page.routes)
    app = Starlette(
        routes=routes,
        # The proxy first: the access log and everything after see the real client.
        middleware=[
            Middleware(TrustedProxyMiddleware),
            Middleware(SecurityHeadersMiddleware),
            Middleware(AccessLogMiddleware),
        ],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
    app.state.openapi = openapi_document(app.routes)
    if STATIC_DIR.is_dir():
        # The page is the router's fallback, not a Mount("/"): a mount at "/" matches
        # every path fully, so a wrong method on an API path (GET /chat/messages) got
        # the file server's 404, or its 405 with the wrong Allow, instead of the
        # route's 405 (Starlette Router: a full match wins over a partial one).
        app.router.default = StaticFiles(directory=STATIC_DIR, html=True)
    return app


configure_logging()
app = create_app()
