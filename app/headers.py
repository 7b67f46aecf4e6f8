"""Browser security headers on every response (issue 11, item 7).

The page (static/) is one HTML file, one script and one stylesheet from this origin,
talking to this origin only, so the policy can be the strict "self" one: no inline
script or style, no plugins, no framing (OWASP Secure Headers Project; MDN,
"Content-Security-Policy"). JSON and SSE responses carry the same headers: they cost
nothing and stop a sniffed or framed response being used against the page.

Responses that already set one of these headers keep their own value.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        # The favicon is an SVG file; data: covers nothing the page uses today but
        # lets a stylesheet embed a small icon without loosening script-src.
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        # CSP Level 2's replacement for X-Frame-Options (RFC 7034), which is kept for
        # browsers that predate frame-ancestors.
        "frame-ancestors 'none'",
    )
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),
    # No MIME sniffing: a CSV error report or a JSON body is never run as script
    # (WHATWG Fetch, "X-Content-Type-Options header").
    (b"x-content-type-options", b"nosniff"),
    # SSE URLs may carry ?token=: never let a URL of ours leave in a Referer header.
    (b"referrer-policy", b"no-referrer"),
)


class SecurityHeadersMiddleware:
    """Pure ASGI, so streamed bodies (SSE, CSV downloads) pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
