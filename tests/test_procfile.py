"""The Procfile run as a process manager would: ``bash -c <line>``, env only, ``$PORT``.

Checks the deploy contract end to end (issue 5, "Checked by"): ``release`` migrates,
``web`` and ``worker`` complete a chat and an upload; SIGTERM on a web process ends its
streams cleanly and the client resumes on another web process with nothing lost; and
SIGTERM on the worker lets the job in hand finish (RQ warm shutdown).
"""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections.abc import Iterator

import anyio
import httpx
import pytest
import redis

from app.dev.embedded import free_port
from core import events
from core.principal import Identity
from tests.support.asgi import token
from tests.support.procs import ROOT, Proc, Web, process_env, read_procfile, start_web, start_worker
from tests.support.sse import Event, EventStream
from tests.support.uploads import slow_csv

# Real processes and a 100,000-row import: slower than pytest's default budget when the
# machine is busy with the rest of the suite.
pytestmark = [pytest.mark.e2e, pytest.mark.anyio, pytest.mark.timeout(300)]

PROCFILE = read_procfile()
CSV = b"city,population,founded\nOslo,709000,1040-01-01\nBergen,291000,1070-01-01\n"
# Slow enough that a signal reliably lands mid-reply; the demo model needs no network.
ENV = {"LLM_PROVIDER": "demo", "DEMO_WORD_DELAY_SECONDS": "0.05"}


@pytest.fixture(scope="module")
def released() -> dict[str, str]:
    """The ``release`` line, run twice: migrations must be idempotent."""
    env = process_env(**ENV)
    for _ in range(2):
        done = subprocess.run(
            ["bash", "-c", PROCFILE["release"]],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return env


def procfile_web(env: dict[str, str], name: str) -> Web:
    port = free_port()
    return start_web(name, {**env, "PORT": str(port)}, command=PROCFILE["web"], port=port)


@pytest.fixture
def stack(released: dict[str, str]) -> Iterator[tuple[dict[str, str], list[Proc]]]:
    procs: list[Proc] = []
    try:
        procs.append(start_worker("procfile-worker", released, PROCFILE["worker"]))
        yield released, procs
    finally:
        for proc in reversed(procs):
            proc.stop()


def auth(user: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(user)}"}


async def test_release_web_worker_complete_chat_and_upload(
    stack: tuple[dict[str, str], list[Proc]],
) -> None:
    env, procs = stack
    web = procfile_web(env, "procfile-web")
    base = web.base
    procs.append(web)
    headers = auth(f"procfile-{uuid.uuid4().hex[:8]}")
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        async with client.stream("GET", "/events") as response:
            assert response.status_code == 200
            stream = EventStream(response)
            with anyio.fail_after(60):
                posted = await client.post("/chat/messages", json={"message": "Hello there"})
                assert posted.status_code == 202, posted.text
                conversation = posted.json()["conversation_id"]
                chat = await stream.until("chat.done", conversation_id=conversation)
                chunks = [e.json()["text"] for e in chat if e.type == "chat.chunk"]
                assert chunks and "".join(chunks) == chat[-1].json()["text"]

                files = {"file": ("cities.csv", CSV, "text/csv")}
                posted = await client.post("/uploads", files=files)
                assert posted.status_code == 202, posted.text
                upload_id = posted.json()["upload_id"]
                upload = await stream.until("upload.done", upload_id=upload_id)
        progress = [e.json()["percent"] for e in upload if e.type == "upload.progress"]
        assert progress and progress[-1] == 100
        assert upload[-1].json()["result"]["rows_total"] == 2
        got = await client.get(f"/uploads/{upload_id}")
        assert got.json()["status"] == "completed"


async def test_sigterm_on_web_mid_stream_resumes_on_another_web(
    stack: tuple[dict[str, str], list[Proc]], redis_client: redis.Redis
) -> None:
    env, procs = stack
    web_a = procfile_web(env, "procfile-web-a")
    base_a = web_a.base
    procs.append(web_a)
    web_b = procfile_web(env, "procfile-web-b")
    base_b = web_b.base
    procs.append(web_b)
    user = f"sigterm-{uuid.uuid4().hex[:8]}"
    headers = auth(user)
    received: list[Event] = []
    async with httpx.AsyncClient(headers=headers, timeout=30) as client:
        with anyio.fail_after(60):
            async with client.stream("GET", base_a + "/events") as response:
                stream = EventStream(response)
                message = "Please reply with a good long answer so it streams for a while. " * 3
                posted = await client.post(base_a + "/chat/messages", json={"message": message})
                assert posted.status_code == 202, posted.text
                conversation = posted.json()["conversation_id"]
                async for item in stream:
                    received.append(item)
                    if item.type == "chat.chunk" and len(received) == 2:
                        web_a.signal(signal.SIGTERM)  # as Heroku stops a dyno
                # Reaching here means web A ended the stream itself (no transport error).
            code = await anyio.to_thread.run_sync(lambda: web_a.popen.wait(timeout=30))
            # uvicorn re-raises the signal it caught once it has shut down cleanly.
            assert code in (0, -signal.SIGTERM), web_a.log()
            assert "Finished server process" in web_a.log()
            assert received and received[-1].type != "chat.done", "signal came too late"

            last_id = received[-1].last_event_id
            resume = {"last-event-id": last_id}
            async with client.stream("GET", base_b + "/events", headers=resume) as response:
                assert response.status_code == 200
                received += await EventStream(response).until(
                    "chat.done", conversation_id=conversation
                )

    # Exactly the stream's history from the first event on: nothing lost, nothing twice.
    history = redis_client.xrange(
        events.user_stream(Identity(user).key), received[0].last_event_id, "+"
    )
    assert [e.last_event_id for e in received] == [raw.decode() for raw, _ in history]
    chunks = [e.json() for e in received if e.type == "chat.chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["text"] for c in chunks) == received[-1].json()["text"]


async def test_sigterm_on_worker_finishes_the_job_in_hand(
    stack: tuple[dict[str, str], list[Proc]],
) -> None:
    env, procs = stack
    worker = procs[0]
    web = procfile_web(env, "procfile-web-w")
    base = web.base
    procs.append(web)
    headers = auth(f"warm-{uuid.uuid4().hex[:8]}")
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client,
        client.stream("GET", "/events") as response,
    ):
        stream = EventStream(response)
        with anyio.fail_after(60):
            message = "Tell me a long story about queues and workers, please. " * 3
            posted = await client.post("/chat/messages", json={"message": message})
            assert posted.status_code == 202, posted.text
            conversation = posted.json()["conversation_id"]
            first = await stream.until("chat.chunk", conversation_id=conversation)
            # Heroku signals every process of the dyno; RQ ignores the supervisor's
            # forwarded copy (a second signal within a second) and shuts down warm.
            worker.signal(signal.SIGTERM)
            rest = await stream.until("chat.done", conversation_id=conversation)
    assert all(e.type != "chat.error" for e in first + rest)
    code = await anyio.to_thread.run_sync(lambda: worker.popen.wait(timeout=60))
    assert code == 0, worker.log()


async def test_sigterm_on_worker_finishes_the_import_in_hand(
    stack: tuple[dict[str, str], list[Proc]],
) -> None:
    # Imports run in RQ's forked work horse, which RQ puts in its own session: a
    # dyno-wide SIGTERM reaches the worker (warm shutdown), not the horse mid-COPY.
    env, procs = stack
    worker = procs[0]
    web = procfile_web(env, "procfile-web-u")
    base = web.base
    procs.append(web)
    data = slow_csv(200_000)  # still importing when the first progress event arrives
    headers = auth(f"warm-{uuid.uuid4().hex[:8]}")
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client,
        client.stream("GET", "/events") as response,
    ):
        stream = EventStream(response)
        with anyio.fail_after(120):
            posted = await client.post("/uploads", files={"file": ("big.csv", data, "text/csv")})
            assert posted.status_code == 202, posted.text
            upload_id = posted.json()["upload_id"]
            seen = await stream.until({"upload.progress", "upload.done"}, upload_id=upload_id)
            assert seen[-1].type == "upload.progress", "the import ended before the signal"
            assert seen[-1].json()["percent"] < 100, "signal came too late"
            worker.signal(signal.SIGTERM)
            done = await stream.until("upload.done", upload_id=upload_id)
        assert done[-1].json()["result"]["rows_total"] == 200_000
        code = await anyio.to_thread.run_sync(lambda: worker.popen.wait(timeout=60))
        assert code == 0, worker.log()
        got = await client.get(f"/uploads/{upload_id}")
        assert got.json()["status"] == "completed"
