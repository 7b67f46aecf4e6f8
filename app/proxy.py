"""The client's address and scheme, as the proxies Herald trusts saw them.

Each proxy appends the address of its own peer to ``X-Forwarded-For`` (MDN:
X-Forwarded-For), so only the rightmost ``TRUSTED_PROXY_HOPS`` entries were written by
someone Herald trusts; everything left of them came from the client and may be
anything. Heroku's router appends the address it saw and sets ``X-Forwarded-Proto``
(Heroku Dev Center, "HTTP Routing"), hence the default of one hop. uvicorn's own
``--forwarded-allow-ips='*'`` took the *leftmost* entry, which the client writes; the
Procfile turns it off (``--no-proxy-headers``) and this middleware does the job.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from core import settings

_SCHEMES = frozenset({"http", "https"})


def forwarded_client(forwarded_for: list[str], hops: int) -> str | None:
    """The address ``hops`` entries from the right of the X-Forwarded-For chain.

    ``forwarded_for`` holds each header line, in order (several lines are one list,
    RFC 9110 section 5.3). With fewer entries than hops, every entry was added by a
    trusted proxy and the leftmost is the client. None when there is nothing usable.
    """
    entries = [e.strip() for line in forwarded_for for e in line.split(",") if e.strip()]
    if hops <= 0 or not entries:
        return None
    candidate = entries[-hops] if len(entries) >= hops else entries[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:  # a trusted proxy writes addresses only; anything else is not one
        return None


def forwarded_scheme(forwarded_proto: list[str]) -> str | None:
    # The last proxy overwrites (Heroku) or appends; either way the last entry is its own.
    entries = [e.strip().lower() for line in forwarded_proto for e in line.split(",")]
    last = entries[-1] if entries else ""
    return last if last in _SCHEMES else None


class TrustedProxyMiddleware:
    """Rewrites ``scope["client"]`` and ``scope["scheme"]`` from the trusted hops."""

    def __init__(self, app: ASGIApp, hops: int | None = None) -> None:
        self.app = app
        self.hops = settings.TRUSTED_PROXY_HOPS if hops is None else hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.hops > 0 and scope["type"] == "http":
            chain: list[str] = []
            proto: list[str] = []
            for name, value in scope["headers"]:
                if name == b"x-forwarded-for":
                    chain.append(value.decode("latin-1"))
                elif name == b"x-forwarded-proto":
                    proto.append(value.decode("latin-1"))
            address = forwarded_client(chain, self.hops)
            scheme = forwarded_scheme(proto)
            if address is not None or scheme is not None:
                scope = dict(scope)
                if address is not None:
                    scope["client"] = (address, 0)
                if scheme is not None:
                    scope["scheme"] = scheme
        await self.app(scope, receive, send)
