"""Chat routes: validation, size, rate limit and its headers, tenancy, history."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from core import settings
from jobs.chat.job import run_chat
from tests.support.asgi import app_client, bearer, running_app

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client() as c:
        yield c


auth = bearer


def user_id() -> str:
    return f"chat-{uuid.uuid4().hex[:8]}"


async def send(client: httpx.AsyncClient, user: str, **body: object) -> httpx.Response:
    return await client.post("/chat/messages", json=body, headers=auth(user))


async def test_post_accepts_and_sets_ratelimit_headers(client: httpx.AsyncClient) -> None:
    user = user_id()
    r = await send(client, user, message="Hello there")
    assert r.status_code == 202, r.text
    body = r.json()
    assert set(body) == {"conversation_id", "message_id", "job_id"}
    assert r.headers["ratelimit-limit"] == "50"
    assert r.headers["ratelimit-remaining"] == "49"
    assert 0 < int(r.headers["ratelimit-reset"]) <= 3600
    r2 = await send(client, user, message="again", conversation_id=body["conversation_id"])
    assert r2.status_code == 202
    assert r2.json()["conversation_id"] == body["conversation_id"]
    assert r2.headers["ratelimit-remaining"] == "48"


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "validation_error"),
        (b"{}", 400, "validation_error"),
        (b'{"message": ""}', 400, "validation_error"),
        (b'{"message": "   "}', 400, "validation_error"),
        (b'{"message": 42}', 400, "validation_error"),
        (b'{"message": "hi", "conversation_id": 7}', 400, "validation_error"),
        (b'{"message": "nul \\u0000 inside"}', 400, "validation_error"),
        (b'{"message": "lone \\ud800"}', 400, "invalid_json"),
        (b'{"message": "hi", "conversation_id": "nope"}', 404, "not_found"),
    ],
)
async def test_bad_input(client: httpx.AsyncClient, content: bytes, status: int, code: str) -> None:
    headers = {**auth(user_id()), "content-type": "application/json"}
    r = await client.post("/chat/messages", content=content, headers=headers)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code


async def test_message_too_large(client: httpx.AsyncClient) -> None:
    r = await send(client, user_id(), message="x" * (settings.CHAT_MAX_CHARS + 1))
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "message_too_large"
    # A body far over any valid message is refused before it is parsed.
    huge = b'{"message": "' + b"y" * (settings.CHAT_MAX_CHARS * 20) + b'"}'
    r = await client.post(
        "/chat/messages",
        content=huge,
        headers={**auth(user_id()), "content-type": "application/json"},
    )
    assert r.status_code == 413
    ok = await send(client, user_id(), message="é" * settings.CHAT_MAX_CHARS)
    assert ok.status_code == 202


async def test_unauthenticated(client: httpx.AsyncClient) -> None:
    r = await client.post("/chat/messages", json={"message": "hi"})
    assert r.status_code == 401
    assert (await client.get("/chat/conversations")).status_code == 401


async def test_rate_limit(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "CHAT_RATE_LIMIT", "2/hour")
    user, other = user_id(), user_id()
    for _ in range(2):
        assert (await send(client, user, message="hi")).status_code == 202
    r = await send(client, user, message="one too many")
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(r.headers["retry-after"]) <= 3600
    assert r.headers["ratelimit-limit"] == "2"
    assert r.headers["ratelimit-remaining"] == "0"
    assert int(r.headers["ratelimit-reset"]) >= 1
    # Per user: someone else is not affected.
    assert (await send(client, other, message="hi")).status_code == 202
    metrics = (await client.get("/metrics")).text
    assert 'herald_rate_limited_total{limit="chat"}' in metrics


async def test_other_users_conversation_is_404(client: httpx.AsyncClient) -> None:
    owner, intruder = user_id(), user_id()
    conv = (await send(client, owner, message="mine")).json()["conversation_id"]
    r = await send(client, intruder, message="let me in", conversation_id=conv)
    assert r.status_code == 404
    r = await client.get(f"/chat/conversations/{conv}/messages", headers=auth(intruder))
    assert r.status_code == 404
    r = await client.get(f"/chat/conversations/{uuid.uuid4()}/messages", headers=auth(owner))
    assert r.status_code == 404
    listed = (await client.get("/chat/conversations", headers=auth(intruder))).json()
    assert listed == {"conversations": []}


async def test_history_order_and_cache_invalidation(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "LLM_PROVIDER", "demo")
    user = user_id()
    first = (await send(client, user, message="first conversation")).json()
    second = (await send(client, user, message="second conversation")).json()
    listed = (await client.get("/chat/conversations", headers=auth(user))).json()["conversations"]
    assert [c["conversation_id"] for c in listed] == [
        second["conversation_id"],
        first["conversation_id"],
    ]
    assert listed[0]["title"] == "second conversation"
    url = f"/chat/conversations/{first['conversation_id']}/messages"
    before = (await client.get(url, headers=auth(user))).json()["messages"]
    assert [(m["role"], m["text"], m["status"]) for m in before] == [
        ("user", "first conversation", "queued")
    ]
    # The worker answers (the job is a coroutine; tests/test_chat_job.py runs it through
    # an RQ worker): the cached history must not hide the reply.
    await run_chat(first["message_id"])
    after = (await client.get(url, headers=auth(user))).json()["messages"]
    assert [(m["role"], m["status"]) for m in after] == [
        ("user", "answered"),
        ("assistant", "completed"),
    ]
    assert "first conversation" in after[1]["text"]
    created = [dt.datetime.fromisoformat(m["created_at"]) for m in after]
    assert all(c.tzinfo is not None for c in created) and created == sorted(created)
    assert all(m["created_at"].endswith("Z") for m in after)  # RFC 3339 in UTC


async def test_rate_limit_is_shared_by_web_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two apps with their own lifespans (own Redis clients): one count, kept in Redis.
    monkeypatch.setattr(settings, "CHAT_RATE_LIMIT", "3/hour")
    user = user_id()
    async with running_app() as one, running_app() as two:
        clients = [
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
            for app in (one, two)
        ]
        try:
            statuses = [
                (await send(clients[i % 2], user, message="hi")).status_code for i in range(4)
            ]
        finally:
            for c in clients:
                await c.aclose()
    assert statuses == [202, 202, 202, 429]


async def test_other_spellings_of_a_conversation_id_name_nothing(
    client: httpx.AsyncClient,
) -> None:
    user = user_id()
    conv = (await send(client, user, message="mine")).json()["conversation_id"]
    for alias in (f"urn:uuid:{conv}", conv.upper(), conv.replace("-", ""), f"{{{conv}}}"):
        read = await client.get(f"/chat/conversations/{alias}/messages", headers=auth(user))
        assert read.status_code == 404, alias
        write = await send(client, user, message="again", conversation_id=alias)
        assert write.status_code == 404, alias
