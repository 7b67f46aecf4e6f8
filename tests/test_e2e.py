"""Chat end to end: real uvicorn, a real ``python -m jobs.worker``, a real SSE client,
and the loopback OpenAI-style upstream, all over sockets."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests.support.asgi import token
from tests.support.openai_server import DEFAULT_REPLY, OpenAIServer, openai_server
from tests.support.procs import Proc, process_env, start_web, start_worker, stop_all
from tests.support.sse import EventStream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


@pytest.fixture
def upstream() -> Iterator[OpenAIServer]:
    with openai_server() as server:
        yield server


@pytest.fixture
def stack(upstream: OpenAIServer) -> Iterator[str]:
    env = process_env(
        LLM_PROVIDER="openai",
        LLM_BASE_URL=upstream.base_url,
        LLM_MODEL="loopback-e2e",
        WORKER_CHAT_PROCESSES="1",
        WORKER_UPLOAD_PROCESSES="0",
    )
    procs: list[Proc] = [start_worker("e2e-chat-worker", env)]
    try:
        web = start_web("e2e-chat-web", env)
        procs.append(web)
        yield web.base
    finally:
        stop_all(procs)


async def test_post_then_stream_chunks_to_done(stack: str, upstream: OpenAIServer) -> None:
    headers = {"authorization": f"Bearer {token('e2e-chat-user')}"}
    async with httpx.AsyncClient(base_url=stack, headers=headers, timeout=30) as client:
        with anyio.fail_after(60):  # a hang guard, not a speed assertion
            async with client.stream("GET", "/events") as response:
                assert response.status_code == 200
                stream = EventStream(response)
                await stream.connected()
                r = await client.post("/chat/messages", json={"message": "Hello end to end"})
                assert r.status_code == 202, r.text
                accepted = r.json()
                assert "ratelimit-remaining" in r.headers
                seen = await stream.until(
                    {"chat.done", "chat.error"}, message_id=accepted["message_id"]
                )
        got = [
            (e.type, e.json()) for e in seen if e.json().get("message_id") == accepted["message_id"]
        ]
        history = await client.get(f"/chat/conversations/{accepted['conversation_id']}/messages")
    names = [e for e, _ in got]
    # Pieces that arrive together may leave as one event (CHAT_CHUNK_COALESCE_SECONDS):
    # the text is exact and the indexes gapless either way.
    assert names[-1] == "chat.done" and set(names[:-1]) == {"chat.chunk"}, got
    chunks = [d for e, d in got if e == "chat.chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    chunks_text = [c["text"] for c in chunks]
    done = got[-1][1]
    assert done["text"] == "".join(chunks_text) == "".join(DEFAULT_REPLY)
    assert done["model"] == "loopback-e2e"
    assert done["conversation_id"] == accepted["conversation_id"]
    messages = history.json()["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "answered"),
        ("assistant", "completed"),
    ]
    assert messages[1]["text"] == done["text"]
    # The worker's start-up recovery may send other tests' left-over messages too.
    assert any(r["messages"][-1]["content"] == "Hello end to end" for r in upstream.requests)
