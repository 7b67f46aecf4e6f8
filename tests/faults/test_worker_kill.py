"""Fault: an RQ worker process is SIGKILLed mid-chat and mid-import.

Promise: the client still receives a terminal event (the job retried to completion, or
``chat.error`` / ``upload.error``) within a stated bound; no duplicate or partial rows;
the job ends in a final RQ state, not stranded in the StartedJobRegistry.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import anyio
import httpx
import orjson
import psycopg
import pytest
from rq import Queue, Worker
from rq.job import Job, JobStatus

from app.security.auth import mint_token
from core import settings
from tests.faults.clients import Client, wait_for
from tests.faults.stack import Stack
from tests.support.procs import children, wait_until
from tests.support.uploads import slow_csv

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

# From the SIGKILL to the client's terminal event. The supervisor notices the death
# within 0.5 s and re-queues at once; the rest is the retried job itself.
TERMINAL_BOUND_SECONDS = 30.0
# Big enough that the import runs for a few seconds, so the kill lands mid-import.
UPLOAD_ROWS = 400_000

FIGURES: dict[str, float] = {}


def busy_worker_pid(stack: Stack, queue_name: str, job_id: str) -> int | None:
    client = stack.redis.client()
    try:
        for worker in Worker.all(queue=Queue(queue_name, connection=client)):
            if worker.get_current_job_id() == job_id:
                return int(worker.pid)
        return None
    finally:
        client.close()


def kill_worker(pid: int) -> None:
    """SIGKILL the RQ worker and its work horse, if it forked one (a crash, not a stop)."""
    horses = children(pid)
    os.kill(pid, signal.SIGKILL)
    for horse in horses:
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse, signal.SIGKILL)


def job_state(
    stack: Stack, queue_name: str, job_id: str
) -> tuple[JobStatus | None, list[str], list[str]]:
    client = stack.redis.client()
    try:
        queue = Queue(queue_name, connection=client)
        status = Job.fetch(job_id, connection=client).get_status()
        started = queue.started_job_registry.get_job_ids()
        failed = queue.failed_job_registry.get_job_ids()
        return status, started, failed
    finally:
        client.close()


async def test_worker_killed_mid_chat(stack: Stack) -> None:
    web = stack.start_web()
    # Slow words, so the reply is still streaming when the worker dies.
    stack.start_worker("worker-chat", DEMO_WORD_DELAY_SECONDS="0.1")
    user = "kill-chat"
    token = mint_token(user)
    client = Client(user, token, web.port)
    client.start()
    try:
        await wait_for(lambda: client.connected, 20, "stream")
        async with httpx.AsyncClient(base_url=web.base, timeout=10) as http:
            posted = await http.post(
                "/chat/messages",
                json={"message": "tell me about fault tolerance"},
                headers={"authorization": f"Bearer {token}"},
            )
        assert posted.status_code == 202, posted.text
        job_id, message_id = posted.json()["job_id"], posted.json()["message_id"]
        await wait_for(lambda: len(client.named("chat.chunk")) >= 3, 30, "first chunks")
        pid = busy_worker_pid(stack, settings.CHAT_QUEUE, job_id)
        assert pid is not None, "no worker is running the chat job"
        kill_worker(pid)
        killed = time.monotonic()
        await wait_for(
            lambda: any(e.type in ("chat.done", "chat.error") for e in client.events),
            TERMINAL_BOUND_SECONDS,
            "a terminal chat event after the kill",
        )
        FIGURES["chat_terminal_s"] = time.monotonic() - killed
        await anyio.sleep(0.5)
    finally:
        await client.stop()

    terminal = [e for e in client.events if e.type in ("chat.done", "chat.error")]
    assert len(terminal) == 1, [e.type for e in terminal]
    done = orjson.loads(terminal[0].data)
    assert terminal[0].type == "chat.done", done
    assert done["message_id"] == message_id
    with psycopg.connect(stack.pg.url) as conn:
        replies = conn.execute(
            "SELECT text, status FROM messages WHERE reply_to = %s", (message_id,)
        ).fetchall()
    assert len(replies) == 1 and replies[0][0] == done["text"]  # one reply row, whole
    status, started, failed = job_state(stack, settings.CHAT_QUEUE, job_id)
    assert status == JobStatus.FINISHED
    assert job_id not in started and job_id not in failed
    print(f"\nchat worker SIGKILL: chat.done {FIGURES['chat_terminal_s']:.2f} s after the kill")


IN_FLIGHT = 50


async def test_issue12_worker_killed_with_50_replies_in_flight(stack: Stack) -> None:
    """One chat worker process carries 50 replies at once; SIGKILL it. Every client
    still gets exactly one ``chat.done`` (the retried reply, announced by
    ``chat.restart``, whose chunks count from 0 again), and every message has one
    assistant row: the supervisor reaps every in-flight job of the dead worker."""
    web = stack.start_web()
    stack.start_worker("worker-chat-50", DEMO_WORD_DELAY_SECONDS="0.15")
    users = [f"kill50-{i}" for i in range(IN_FLIGHT)]
    clients = {u: Client(u, mint_token(u), web.port) for u in users}
    for client in clients.values():
        client.start()
    messages: dict[str, str] = {}
    try:
        await wait_for(lambda: all(c.connected for c in clients.values()), 30, "streams")
        async with httpx.AsyncClient(base_url=web.base, timeout=20) as http:
            for user, client in clients.items():
                posted = await http.post(
                    "/chat/messages",
                    json={"message": f"tell {user} about fault tolerance at length"},
                    headers={"authorization": f"Bearer {client.token}"},
                )
                assert posted.status_code == 202, posted.text
                messages[user] = posted.json()["message_id"]
        await wait_for(
            lambda: all(c.named("chat.chunk") for c in clients.values()),
            60,
            "every reply streaming",
        )
        pid = None
        redis_client = stack.redis.client()
        try:
            for worker in Worker.all(queue=Queue(settings.CHAT_QUEUE, connection=redis_client)):
                if worker.get_current_job_id():
                    pid = int(worker.pid)
        finally:
            redis_client.close()
        assert pid is not None, "no chat worker is busy"
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        finished = {u for u, c in clients.items() if c.named("chat.done")}
        cut = [c for u, c in clients.items() if u not in finished]
        await wait_for(
            lambda: all(c.named("chat.done") or c.named("chat.error") for c in clients.values()),
            TERMINAL_BOUND_SECONDS * 2,
            "a terminal event on every stream",
        )
        FIGURES["chat50_terminal_s"] = time.monotonic() - killed
        await anyio.sleep(0.5)
    finally:
        for client in clients.values():
            await client.stop()

    for user, client in clients.items():
        events = [
            (e.type, orjson.loads(e.data)) for e in client.events if e.type.startswith("chat.")
        ]
        kinds = [k for k, _ in events]
        assert kinds.count("chat.done") == 1 and "chat.error" not in kinds, kinds
        restart = len(kinds) - 1 - kinds[::-1].index("chat.restart")
        after = [d for k, d in events[restart + 1 :] if k == "chat.chunk"]
        assert [c["index"] for c in after] == list(range(len(after)))
        assert "".join(c["text"] for c in after) == events[-1][1]["text"]
    with psycopg.connect(stack.pg.url) as conn:
        rows = conn.execute(
            "SELECT reply_to, count(*) FROM messages WHERE reply_to = ANY(%s) GROUP BY reply_to",
            (list(messages.values()),),
        ).fetchall()
    assert sorted(count for _, count in rows) == [1] * IN_FLIGHT  # one row per message
    print(
        f"\n50 replies, worker SIGKILL: {len(cut)} cut mid-reply, all ended"
        f" {FIGURES['chat50_terminal_s']:.2f} s after the kill"
    )


async def test_worker_killed_mid_import(stack: Stack) -> None:
    web = stack.start_web()
    stack.start_worker("worker-import", UPLOAD_PROGRESS_INTERVAL_SECONDS="0.05")
    user = "kill-import"
    token = mint_token(user, org_id="org-kill")
    client = Client(user, token, web.port)
    client.start()
    try:
        await wait_for(lambda: client.connected, 20, "stream")
        async with httpx.AsyncClient(base_url=web.base, timeout=60) as http:
            posted = await http.post(
                "/uploads?filename=big.csv",
                content=slow_csv(UPLOAD_ROWS),
                headers={"authorization": f"Bearer {token}", "content-type": "text/csv"},
            )
        assert posted.status_code == 202, posted.text
        upload_id, job_id = posted.json()["upload_id"], posted.json()["job_id"]

        def importing() -> bool:
            return any(
                e.type == "upload.progress" and 0 < orjson.loads(e.data)["percent"] < 100
                for e in client.events
            )

        await wait_for(importing, 60, "the import to be under way")
        pid = busy_worker_pid(stack, settings.UPLOAD_QUEUE, job_id)
        assert pid is not None, "no worker is running the import"
        kill_worker(pid)
        killed = time.monotonic()
        await wait_for(
            lambda: any(e.type in ("upload.done", "upload.error") for e in client.events),
            TERMINAL_BOUND_SECONDS,
            "a terminal upload event after the kill",
        )
        FIGURES["import_terminal_s"] = time.monotonic() - killed
    finally:
        await client.stop()

    terminal = [e for e in client.events if e.type in ("upload.done", "upload.error")]
    assert [e.type for e in terminal] == ["upload.done"]
    result = orjson.loads(terminal[0].data)["result"]
    assert result["rows_total"] == UPLOAD_ROWS and result["rows_valid"] == UPLOAD_ROWS
    with psycopg.connect(stack.pg.url) as conn:
        status, table = conn.execute(
            "SELECT status, table_name FROM uploads WHERE id = %s", (upload_id,)
        ).fetchone()  # type: ignore[misc]
        assert status == "completed"
        count = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # type: ignore[index]
    assert count == UPLOAD_ROWS  # neither partial nor doubled
    wait_until(
        lambda: job_state(stack, settings.UPLOAD_QUEUE, job_id)[0] == JobStatus.FINISHED,
        10,
        "the RQ job to be finished",
    )
    _, started, failed = job_state(stack, settings.UPLOAD_QUEUE, job_id)
    assert job_id not in started and job_id not in failed
    print(
        f"\nimport worker SIGKILL: upload.done {FIGURES['import_terminal_s']:.2f} s after the kill"
    )
