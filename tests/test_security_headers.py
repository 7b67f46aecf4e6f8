"""Browser security headers on every response (issue 11, item 7): a strict CSP the
page works under (tests/test_browser.py checks that part), no framing, no sniffing,
no Referer."""

from __future__ import annotations

import anyio
import httpx
import pytest

from app.headers import CONTENT_SECURITY_POLICY
from tests.support.asgi import StreamCall, running_app, token

pytestmark = pytest.mark.anyio

EXPECTED = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def assert_secured(headers: httpx.Headers | dict[str, str], what: str) -> None:
    for name, value in EXPECTED.items():
        assert headers.get(name) == value, f"{what}: {name} is {headers.get(name)!r}"


def test_policy_allows_only_this_origin_and_no_inline_code() -> None:
    directives = dict(d.split(" ", 1) for d in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval'
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert directives["object-src"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


async def test_every_kind_of_response_carries_the_headers() -> None:
    user = {"authorization": f"Bearer {token('headers-user')}"}
    async with running_app() as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for method, path, headers, status in [
                ("GET", "/", {}, 200),
                ("GET", "/app.js", {}, 200),
                ("GET", "/app.css", {}, 200),
                ("GET", "/favicon.svg", {}, 200),
                ("GET", "/healthz", {}, 200),
                ("GET", "/openapi.json", {}, 200),
                ("GET", "/uploads", user, 200),
                ("GET", "/uploads", {}, 401),
                ("POST", "/chat/messages", user, 400),
                ("GET", "/no/such/page", {}, 404),
                ("DELETE", "/healthz", {}, 405),
            ]:
                response = await client.request(method, path, headers=headers)
                assert response.status_code == status, (method, path, response.text)
                assert_secured(response.headers, f"{method} {path}")
        # A streamed response (SSE) gets them in its first message too.
        call = StreamCall(app, "/events", user)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(call.run)
            with anyio.fail_after(5):
                await call.wait_for(lambda c: b": connected" in c.body)
            assert call.status == 200
            assert_secured(call.headers, "GET /events")
            call.disconnect()


async def test_a_response_that_sets_its_own_value_keeps_it() -> None:
    from starlette.responses import PlainTextResponse

    from app.headers import SecurityHeadersMiddleware

    async def app(scope: object, receive: object, send: object) -> None:
        response = PlainTextResponse("x", headers={"Referrer-Policy": "same-origin"})
        await response(scope, receive, send)  # type: ignore[arg-type]

    transport = httpx.ASGITransport(app=SecurityHeadersMiddleware(app))  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/")
    assert response.headers.get_list("referrer-policy") == ["same-origin"]
    assert response.headers["x-content-type-options"] == "nosniff"
