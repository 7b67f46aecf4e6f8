"""A reply still streaming is readable over REST, whole so far (issue 10, item 11).

The worker keeps each streaming reply's chunks (core/drafts.py); ``GET
/chat/conversations/{id}/messages`` shows them as an assistant message with
``status: "streaming"`` and ``chunks``, so a page reloaded mid-reply shows every word
already streamed and skips the ``chat.chunk`` events its text already holds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import psycopg
import pytest
import redis

from core import drafts, replies, settings
from jobs.chat.job import run_chat
from tests.support.asgi import app_client, token
from tests.support.openai_server import DEFAULT_REPLY, Fault, OpenAIServer
from tests.test_chat_job import chat_events, post, upstream  # noqa: F401

pytestmark = pytest.mark.anyio


@pytest.fixture
async def web() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client() as client:
        yield client


async def messages(client: httpx.AsyncClient, user: str, conversation: str) -> list[Any]:
    response = await client.get(
        f"/chat/conversations/{conversation}/messages",
        headers={"authorization": f"Bearer {token(user)}"},
    )
    assert response.status_code == 200, response.text
    return list(response.json()["messages"])


async def test_streaming_reply_is_read_back_with_its_text_so_far(
    upstream: OpenAIServer,  # noqa: F811
    web: httpx.AsyncClient,
    redis_client: redis.Redis,
    db: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user = "draft-reader"
    # Three chunks, then the upstream goes silent until the idle timeout ends the turn.
    upstream.script(Fault("stall", after=3))
    monkeypatch.setattr(settings, "LLM_IDLE_TIMEOUT_SECONDS", 3.0)
    conversation, message = post(db, user, "Tell me something long.")
    streaming: dict[str, Any] = {}
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_chat, message)
        with anyio.fail_after(30):
            while not streaming:
                listed = await messages(web, user, conversation)
                drafts_seen = [m for m in listed if m.get("status") == "streaming"]
                if drafts_seen and drafts_seen[0]["chunks"] == 3:
                    streaming = drafts_seen[0]
                    assert [m["role"] for m in listed] == ["user", "assistant"]
                await anyio.sleep(0.02)
    assert streaming["text"] == "".join(DEFAULT_REPLY[:3])
    assert streaming["reply_to"] == message
    assert streaming["message_id"] == replies.reply_id(message)
    assert streaming["created_at"].endswith("Z")
    # The draft holds exactly the chunks published so far: index 0..chunks-1.
    published = [d for e, d in chat_events(redis_client, user, message) if e == "chat.chunk"]
    assert [c["index"] for c in published] == [0, 1, 2]
    # The turn ended (idle timeout): the stored row replaces the draft, which is gone.
    listed = await messages(web, user, conversation)
    assert [(m["role"], m["status"]) for m in listed] == [
        ("user", "failed"),
        ("assistant", "failed"),
    ]
    assert listed[1]["reply_to"] == message
    assert not redis_client.keys(f"{settings.REDIS_PREFIX}:chat:draft*:{message}")


async def test_finished_reply_is_not_shown_twice(
    upstream: OpenAIServer,  # noqa: F811
    web: httpx.AsyncClient,
    redis_client: redis.Redis,
    db: psycopg.Connection,
) -> None:
    user = "draft-finished"
    conversation, message = post(db, user, "Say hello.")
    await run_chat(message)
    assert not redis_client.keys(f"{settings.REDIS_PREFIX}:chat:draft*:{message}")
    # Between storing the row and deleting the draft, both exist: the row wins.
    with redis_client.pipeline() as pipe:
        drafts.add_chunk(pipe, message, 0, "Hel")
        pipe.execute()
    listed = await messages(web, user, conversation)
    assert [(m["role"], m["status"]) for m in listed] == [
        ("user", "answered"),
        ("assistant", "completed"),
    ]
    assert listed[1]["text"] == "".join(DEFAULT_REPLY)
    assert listed[1]["reply_to"] == message


async def test_queued_message_without_a_draft_reads_as_before(
    web: httpx.AsyncClient, db: psycopg.Connection
) -> None:
    user = "draft-none"
    conversation, _ = post(db, user, "Not started yet.")
    listed = await messages(web, user, conversation)
    assert [(m["role"], m["status"]) for m in listed] == [("user", "queued")]
