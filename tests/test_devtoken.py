"""``/dev/token`` exists only in dev mode, and the page is served at ``/``."""

from __future__ import annotations

import httpx
import pytest

from app.security.auth import TokenVerifier
from core import settings
from tests.support.asgi import running_app

pytestmark = pytest.mark.anyio


async def test_dev_token_mints_a_valid_token_in_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "DEV_MODE", True)
    async with running_app() as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            probe = await client.get("/dev/token")
            minted = await client.post("/dev/token")
    assert probe.status_code == 200 and probe.json()["available"] is True
    assert "token" not in probe.json()
    assert minted.status_code == 200
    assert minted.headers["cache-control"] == "no-store"
    principal = await TokenVerifier.from_settings().verify(minted.json()["token"])
    assert (principal.user_id, principal.org) == ("dev-user", "dev-org")


async def test_no_dev_token_outside_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "DEV_MODE", False)
    async with running_app() as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            probe = await client.get("/dev/token")
            minted = await client.post("/dev/token")
    # The page's probe is answered "no" (a 404 would be an error in every browser
    # console); nothing mints a token.
    assert probe.status_code == 200 and probe.json() == {"available": False}
    assert minted.status_code == 405
    assert "token" not in minted.text


async def test_page_and_assets_are_served() -> None:
    async with running_app() as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            page = await client.get("/")
            script = await client.get("/app.js")
            style = await client.get("/app.css")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for marker in ('id="chat-log"', 'aria-live="polite"', 'id="file-input"', 'id="conn"'):
        assert marker in page.text
    assert script.status_code == 200 and "new EventSource(" in script.text
    assert style.status_code == 200 and "@media (max-width" in style.text
