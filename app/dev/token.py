"""``/dev/token``: a one-click local token for the browser page, in dev mode only.

app/main.py registers these routes only when ``HERALD_DEV`` is true (``scripts/start``
sets it), so a deployment has no code path that mints tokens for strangers. The token
is signed with the configured secret, exactly like one minted by hand (README "Tokens").
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from app.security.auth import mint_token

DEV_USER = "dev-user"
DEV_ORG = "dev-org"
DEV_TOKEN_TTL_SECONDS = 7 * 86400
# A minted token must never sit in a shared cache (RFC 9111 section 5.2.2.5).
_NO_STORE = {"Cache-Control": "no-store"}


async def dev_token(request: Request) -> JSONResponse:
    if request.method == "GET":
        # Lets the page decide whether to offer the button, without minting anything.
        return JSONResponse({"available": True, "user_id": DEV_USER}, headers=_NO_STORE)
    token = mint_token(DEV_USER, org_id=DEV_ORG, ttl_seconds=DEV_TOKEN_TTL_SECONDS)
    body = {
        "token": token,
        "user_id": DEV_USER,
        "org_id": DEV_ORG,
        "expires_in": DEV_TOKEN_TTL_SECONDS,
    }
    return JSONResponse(body, headers=_NO_STORE)


routes = [Route("/dev/token", dev_token, methods=["GET", "POST"], include_in_schema=False)]
# Outside dev mode app/routes/page.py answers the page's probe instead.
