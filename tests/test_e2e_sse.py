"""End to end over real sockets: a uvicorn process, a publisher process using the
worker-side ``core.events.publish_event``, and an httpx streaming client that drops its
connection mid-burst and resumes with ``Last-Event-ID``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import anyio
import httpx
import pytest

from tests.support.asgi import token
from tests.support.procs import ROOT, process_env, start_web
from tests.support.sse import Event, EventStream

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TOTAL = 300


def publisher(user: str, total: int) -> list[str]:
    """``tests.support.publisher``'s argv: its own interpreter, as an RQ job would be."""
    return [sys.executable, "-m", "tests.support.publisher", user, str(total)]


@pytest.fixture
def server() -> Iterator[str]:
    web = start_web("e2e-sse-web", process_env(SSE_HEARTBEAT_SECONDS="0.5"), ready="/healthz")
    try:
        yield web.base
    finally:
        web.stop()


async def test_publish_from_another_process_and_resume(server: str) -> None:
    user = "e2e-user"
    auth = {"authorization": f"Bearer {token(user)}"}
    received: list[Event] = []
    publishing: subprocess.Popen[bytes] | None = None
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
            with anyio.fail_after(60):
                async with client.stream("GET", server + "/events", headers=auth) as response:
                    assert response.status_code == 200
                    assert response.headers["content-type"].startswith("text/event-stream")
                    assert response.headers["cache-control"] == "no-cache"
                    assert response.headers["x-accel-buffering"] == "no"
                    stream = EventStream(response)
                    await stream.connected()
                    publishing = subprocess.Popen(
                        publisher(user, TOTAL), cwd=ROOT, stdout=subprocess.PIPE
                    )
                    async for event in stream:
                        if event.type == "chat.chunk":
                            received.append(event)
                            if len(received) == TOTAL // 3:
                                break  # drop the connection mid-burst
                # Events keep being published while no one listens.
                await anyio.sleep(0.2)
                resume = {**auth, "last-event-id": received[-1].last_event_id}
                async with client.stream("GET", server + "/events", headers=resume) as response:
                    assert response.status_code == 200
                    async for event in EventStream(response):
                        assert event.type != "resync"
                        if event.type == "chat.chunk":
                            received.append(event)
                            if len(received) >= TOTAL:
                                break
        out, _ = publishing.communicate(timeout=30)
        assert publishing.returncode == 0
        published_ids = json.loads(out)
    finally:
        if publishing is not None and publishing.poll() is None:
            publishing.kill()
            publishing.communicate()
    assert [e.json()["index"] for e in received] == list(range(TOTAL))
    assert [e.last_event_id for e in received] == published_ids


async def test_query_token_and_resume_by_query(server: str) -> None:
    """EventSource's way: token and last id in the query string."""
    user = "e2e-query"
    proc = subprocess.run(publisher(user, 5), cwd=ROOT, capture_output=True, check=True)
    ids = json.loads(proc.stdout)
    url = f"{server}/events?token={token(user, ttl=2)}&last_event_id={ids[1]}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        with anyio.fail_after(10):
            async with client.stream("GET", url) as response:
                assert response.status_code == 200
                stream = EventStream(response)
                got = [e async for e in stream]
    named = [(e.type, e.last_event_id) for e in got]
    assert named == [("chat.chunk", i) for i in ids[2:]] + [("token_expired", ids[-1])]
    assert stream.parser.retry is not None
