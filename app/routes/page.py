"""What the browser page asks of a production deployment beyond the JSON API.

The page probes ``GET /dev/token`` to decide whether to offer a one-click local token.
Outside dev mode the answer is "no" from here, so a production process never loads
``app.dev`` (docs/security.md); in dev mode app/dev/token.py answers instead.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def dev_token_unavailable(request: Request) -> JSONResponse:
    # A 404 here would be an error in every visitor's browser console. no-store: the
    # answer changes with the deployment's mode (RFC 9111 section 5.2.2.5).
    return JSONResponse({"available": False}, headers={"Cache-Control": "no-store"})


routes = [Route("/dev/token", dev_token_unavailable, methods=["GET"], include_in_schema=False)]
