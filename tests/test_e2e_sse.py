"""End to end over real sockets: a uvicorn process, a publisher process using the
worker-side ``app.events.publish_event``, and an httpx streaming client that drops its
connection mid-burst and resumes with ``Last-Event-ID``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import httpx
import pytest

from app.dev.embedded import free_port
from app.dev.start import web_argv
from tests.support.asgi import token

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

TOTAL = 300

# Runs in its own interpreter, like an RQ job would: its own sync Redis client.
PUBLISHER = """
import json, sys, time
import redis
from core import settings
from core.events import publish_event
from core.principal import Identity

user, total = sys.argv[1], int(sys.argv[2])
client = redis.Redis.from_url(settings.REDIS_URL)
ids = []
try:
    for i in range(total):
        ids.append(publish_event(client, "chat.chunk", {"index": i}, owner=Identity(user).key)[0])
        time.sleep(0.003)
finally:
    client.close()
print(json.dumps(ids))
"""


@pytest.fixture
def server() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "LOG_LEVEL": "WARNING", "SSE_HEARTBEAT_SECONDS": "0.5"}
    proc = subprocess.Popen(
        web_argv(port),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        with httpx.Client() as client:
            while True:
                try:
                    if client.get(base + "/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start: " + proc.stderr.read().decode())  # type: ignore[union-attr]
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """WHATWG SSE parsing, enough for Herald's frames: fields up to a blank line."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                yield fields
            fields = {}
        elif line.startswith(":"):
            fields.setdefault("comment", line)
        else:
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value


async def test_publish_from_another_process_and_resume(server: str) -> None:
    user = "e2e-user"
    auth = {"authorization": f"Bearer {token(user)}"}
    received: list[tuple[str, int]] = []
    publisher: subprocess.Popen[bytes] | None = None
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
            with anyio.fail_after(60):
                async with client.stream("GET", server + "/events", headers=auth) as response:
                    assert response.status_code == 200
                    assert response.headers["content-type"].startswith("text/event-stream")
                    assert response.headers["cache-control"] == "no-cache"
                    assert response.headers["x-accel-buffering"] == "no"
                    async for fields in sse_events(response):
                        if fields.get("comment") == ": connected" and publisher is None:
                            publisher = subprocess.Popen(
                                [sys.executable, "-c", PUBLISHER, user, str(TOTAL)],
                                stdout=subprocess.PIPE,
                            )
                        if fields.get("event") == "chat.chunk":
                            index = json.loads(fields["data"])["index"]
                            received.append((fields["id"], index))
                            if len(received) == TOTAL // 3:
                                break  # drop the connection mid-burst
                # Events keep being published while no one listens.
                await anyio.sleep(0.2)
                resume = {**auth, "last-event-id": received[-1][0]}
                async with client.stream("GET", server + "/events", headers=resume) as response:
                    assert response.status_code == 200
                    async for fields in sse_events(response):
                        assert fields.get("event") != "resync"
                        if fields.get("event") == "chat.chunk":
                            index = json.loads(fields["data"])["index"]
                            received.append((fields["id"], index))
                            if len(received) >= TOTAL:
                                break
        assert publisher is not None
        out, _ = publisher.communicate(timeout=30)
        assert publisher.returncode == 0
        published_ids = json.loads(out)
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.communicate()
    assert [index for _, index in received] == list(range(TOTAL))
    assert [event_id for event_id, _ in received] == published_ids


async def test_query_token_and_resume_by_query(server: str) -> None:
    """EventSource's way: token and last id in the query string."""
    user = "e2e-query"
    proc = subprocess.run(
        [sys.executable, "-c", PUBLISHER, user, "5"], capture_output=True, check=True
    )
    ids = json.loads(proc.stdout)
    url = f"{server}/events?token={token(user, ttl=2)}&last_event_id={ids[1]}"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0)) as client:
        with anyio.fail_after(10):
            async with client.stream("GET", url) as response:
                assert response.status_code == 200
                got = [f async for f in sse_events(response)]
    named = [(f.get("event"), f.get("id")) for f in got if "event" in f]
    assert named == [("chat.chunk", i) for i in ids[2:]] + [("token_expired", ids[-1])]
    assert got[0].get("retry") is not None
