"""Faults that lose RQ's jobs, not PostgreSQL's record of the work (issue 13).

Promise: every accepted chat and upload completes exactly once — one assistant row per
message, every import's exact row count — when Redis loses every key or is restarted without
persistence mid-load, when every worker process and the supervisor are SIGKILLed at once
(a machine lost), and when PostgreSQL is down for a minute mid-import; and an upload
whose web process died mid-body leaves nothing behind after UPLOAD_RECEIVE_TIMEOUT_SECONDS.
The reconciler (jobs/worker/reconciler.py) runs with a 1 s interval here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio.to_thread
import httpx
import orjson
import psycopg
import pytest
from rq.job import Job

from app.security.auth import mint_token
from core.jobkinds import chat_job_id
from tests.faults.clients import Client, wait_for
from tests.faults.stack import Stack
from tests.support.procs import Proc

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

USERS = 10
CHATS_PER_USER = 10  # 100 chats
UPLOADS = 5
UPLOAD_ROWS = 60_000  # each; big enough that imports are still queued or running at the fault
# From Redis answering again (or the new worker's start) until no unfinished item lacks a
# job, and until every item is done.
REQUEUE_BOUND_SECONDS = 30.0
DONE_BOUND_SECONDS = 30.0
RECONCILE_INTERVAL = 1.0
WORKER_ENV = {
    "RECONCILE_INTERVAL_SECONDS": str(RECONCILE_INTERVAL),
    "RECONCILE_GRACE_SECONDS": "1",
    "WORKER_LIVENESS_SECONDS": "3",
    "WORKER_CHAT_PROCESSES": "2",
    "DEMO_WORD_DELAY_SECONDS": "0.002",
}

FIGURES: dict[str, float] = {}


def csv_rows(tag: int, rows: int) -> bytes:
    return ("n,label\n" + "".join(f"{i},u{tag}-{i}\n" for i in range(rows))).encode()


class Load:
    """100 chats from 10 users (a stream each) and 5 imports, and what became of them."""

    def __init__(self, stack: Stack, base: str, port: int) -> None:
        self.stack = stack
        self.base = base
        self.users = [f"rec-{uuid.uuid4().hex[:6]}-{i}" for i in range(USERS)]
        self.tokens = {u: mint_token(u, org_id=f"org-{u}", ttl_seconds=3600) for u in self.users}
        self.clients = [Client(u, self.tokens[u], port) for u in self.users]
        self.messages: dict[str, str] = {}  # message id -> user
        self.conversations: dict[str, str] = {}  # message id -> conversation id
        self.uploads: dict[str, tuple[int, str]] = {}  # upload id -> (rows, user)

    def auth(self, user: str) -> dict[str, str]:
        return {"authorization": f"Bearer {self.tokens[user]}"}

    async def start(self) -> None:
        for c in self.clients:
            c.start()
        await wait_for(lambda: all(c.connected for c in self.clients), 30, "streams")

    async def stop(self) -> None:
        for c in self.clients:
            await c.stop()

    async def submit(self) -> None:
        async with httpx.AsyncClient(base_url=self.base, timeout=60) as http:

            async def chat(user: str, i: int) -> None:
                posted = await http.post(
                    "/chat/messages", json={"message": f"hello {i}"}, headers=self.auth(user)
                )
                assert posted.status_code == 202, posted.text
                body = posted.json()
                self.messages[body["message_id"]] = user
                self.conversations[body["message_id"]] = body["conversation_id"]

            async def upload(i: int) -> None:
                user = self.users[i]
                rows = UPLOAD_ROWS + i
                posted = await http.post(
                    f"/uploads?filename=load-{i}.csv",
                    content=csv_rows(i, rows),
                    headers={**self.auth(user), "content-type": "text/csv"},
                )
                assert posted.status_code == 202, posted.text
                self.uploads[posted.json()["upload_id"]] = (rows, user)

            await asyncio.gather(*(upload(i) for i in range(UPLOADS)))
            await asyncio.gather(*(chat(u, i) for i in range(CHATS_PER_USER) for u in self.users))

    def done_events(self) -> dict[str, int]:
        seen: dict[str, int] = {}
        for c in self.clients:
            for e in c.named("chat.done"):
                message = orjson.loads(e.data)["message_id"]
                seen[message] = seen.get(message, 0) + 1
        return seen

    # --- PostgreSQL, the record ---------------------------------------------------------------
    def unfinished(self) -> list[str]:
        with psycopg.connect(self.stack.pg.url, connect_timeout=2) as conn:
            chats = conn.execute(
                "SELECT id FROM messages WHERE id = ANY(%s) AND status = 'queued'",
                (list(self.messages),),
            ).fetchall()
            uploads = conn.execute(
                "SELECT id FROM uploads WHERE id = ANY(%s)"
                " AND status IN ('queued', 'validating', 'processing')",
                (list(self.uploads),),
            ).fetchall()
        return [str(r[0]) for r in chats + uploads]

    def importing(self) -> bool:
        with psycopg.connect(self.stack.pg.url, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*) FROM uploads WHERE id = ANY(%s) AND status = 'processing'",
                (list(self.uploads),),
            ).fetchone()
        return bool(row and row[0])

    def without_job(self) -> list[str]:
        """Unfinished items whose RQ job does not exist."""
        client = self.stack.redis.client()
        try:
            return [
                work_id
                for work_id in self.unfinished()
                if not client.exists(
                    Job.key_for(chat_job_id(work_id) if work_id in self.messages else work_id)
                )
            ]
        finally:
            client.close()

    def count(self) -> dict[str, int]:
        """Lost and duplicated work, by the record: a message without exactly one completed
        reply, an import not completed with exactly its rows."""
        lost = duplicated = 0
        with psycopg.connect(self.stack.pg.url) as conn:
            for message in self.messages:
                status = conn.execute("SELECT status FROM messages WHERE id = %s", (message,))
                replies = conn.execute(
                    "SELECT status FROM messages WHERE reply_to = %s", (message,)
                ).fetchall()
                if status.fetchone() != ("answered",) or replies != [("completed",)]:
                    lost += 1
                duplicated += max(0, len(replies) - 1)
            for upload, (rows, _) in self.uploads.items():
                status, table = conn.execute(
                    "SELECT status, table_name FROM uploads WHERE id = %s", (upload,)
                ).fetchone()  # type: ignore[misc]
                if status != "completed":
                    lost += 1
                    continue
                count = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # type: ignore[index]
                lost += max(0, rows - count)
                duplicated += max(0, count - rows)
            attempts = conn.execute(
                "SELECT coalesce(sum(attempts), 0) FROM messages WHERE id = ANY(%s)",
                (list(self.messages),),
            ).fetchone()[0]  # type: ignore[index]
            attempts += conn.execute(
                "SELECT coalesce(sum(attempts), 0) FROM uploads WHERE id = ANY(%s)",
                (list(self.uploads),),
            ).fetchone()[0]  # type: ignore[index]
        return {"lost": lost, "duplicated": duplicated, "requeued": int(attempts)}

    async def clients_see_every_result(self) -> None:
        """What the page shows: each reply via chat.done, or, after a resync, by reading
        the conversation back over HTTP."""
        live = self.done_events()
        async with httpx.AsyncClient(base_url=self.base, timeout=30) as http:
            for message, user in self.messages.items():
                if message in live:
                    continue
                conversation = self.conversations[message]
                got = await http.get(
                    f"/chat/conversations/{conversation}/messages", headers=self.auth(user)
                )
                roles = [(m["role"], m["status"]) for m in got.json()["messages"]]
                assert roles == [("user", "answered"), ("assistant", "completed")], roles
            for upload, (_, user) in self.uploads.items():
                got = await http.get(f"/uploads/{upload}", headers=self.auth(user))
                assert got.json()["status"] == "completed"


async def under_load(
    stack: Stack, fault: Callable[[Load, Proc], Awaitable[float]], name: str
) -> dict[str, int]:
    """Start web + worker, submit the load, run ``fault`` once work is under way (it returns
    the moment recovery is measured from), then wait for everything to be done."""
    web = stack.start_web()
    worker = stack.start_worker(f"{name}-worker", **WORKER_ENV)
    load = Load(stack, web.base, web.port)
    await load.start()
    try:
        await load.submit()
        # An import in the middle of its transaction, so the fault cuts one; chats are
        # then running or queued (100 of them take longer than the imports).
        await wait_for(load.importing, 60, "an import under way")
        assert await anyio.to_thread.run_sync(load.unfinished), "all work done before the fault"
        since = await fault(load, worker)

        async def poll(check: Callable[[], list[str]], bound: float, what: str) -> float:
            while True:
                try:
                    left = await anyio.to_thread.run_sync(check)
                except (psycopg.OperationalError, OSError):
                    left = ["?"]
                if not left:
                    return time.monotonic() - since
                assert time.monotonic() - since < bound, f"{what}: {len(left)} left"
                await anyio.sleep(0.1)

        FIGURES[f"{name}_requeued_s"] = await poll(
            load.without_job, REQUEUE_BOUND_SECONDS, "unfinished work without a job"
        )
        FIGURES[f"{name}_done_s"] = await poll(
            load.unfinished, REQUEUE_BOUND_SECONDS + DONE_BOUND_SECONDS, "unfinished work"
        )
        await load.clients_see_every_result()
        outcome = await anyio.to_thread.run_sync(load.count)
        repeats = sum(n - 1 for n in load.done_events().values() if n > 1)
    finally:
        await load.stop()
    print(
        f"\n{name}: all {len(load.messages)} chats and {len(load.uploads)} imports done "
        f"{FIGURES[f'{name}_done_s']:.1f} s after recovery began (no job left unqueued after "
        f"{FIGURES[f'{name}_requeued_s']:.1f} s); lost {outcome['lost']}, duplicated "
        f"{outcome['duplicated']}; {outcome['requeued']} enqueued again by the reconciler; "
        f"{repeats} chat.done events repeated"
    )
    assert outcome["lost"] == 0 and outcome["duplicated"] == 0
    return outcome


async def test_redis_wiped_mid_load(stack: Stack) -> None:
    async def wipe(load: Load, worker: Proc) -> float:
        assert stack.wipe_private_redis() > 0
        return time.monotonic()

    outcome = await under_load(stack, wipe, "wipe")
    assert outcome["requeued"] > 0  # the reconciler did it, not luck


async def test_redis_restarted_without_persistence_mid_load(stack: Stack) -> None:
    async def restart(load: Load, worker: Proc) -> float:
        await anyio.to_thread.run_sync(stack.redis.stop)
        await anyio.sleep(1)
        await anyio.to_thread.run_sync(stack.redis.start)
        return time.monotonic()  # Redis answers again

    outcome = await under_load(stack, restart, "redis_restart")
    assert outcome["requeued"] > 0


def descendants(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            found += [int(child), *descendants(int(child))]
    return found


async def test_every_worker_and_the_supervisor_killed_mid_load(stack: Stack) -> None:
    async def machine_lost(load: Load, worker: Proc) -> float:
        # Everything at once, work horses too (RQ spawns each in its own process group).
        tree = descendants(worker.pid)
        worker.kill()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await anyio.sleep(0.5)
        stack.start_worker("machine-2-worker", **WORKER_ENV)
        return time.monotonic()  # the new worker's start

    await under_load(stack, machine_lost, "machine_lost")
    assert FIGURES["machine_lost_done_s"] < 30  # the bound, from the new start


# --- PostgreSQL down for a minute ---------------------------------------------------
PG_OUTAGE_SECONDS = 60.0
BIG_ROWS = 400_000


async def test_postgres_down_for_a_minute_mid_import(stack: Stack) -> None:
    web = stack.start_web()
    stack.start_worker("pg-minute-worker", **WORKER_ENV, UPLOAD_PROGRESS_INTERVAL_SECONDS="0.05")
    user = "pg-minute"
    token = mint_token(user, org_id="org-pg-minute", ttl_seconds=3600)
    client = Client(user, token, web.port)
    client.start()
    try:
        await wait_for(lambda: client.connected, 20, "stream")
        async with httpx.AsyncClient(base_url=web.base, timeout=60) as http:
            posted = await http.post(
                "/uploads?filename=minute.csv",
                content=csv_rows(0, BIG_ROWS),
                headers={"authorization": f"Bearer {token}", "content-type": "text/csv"},
            )
        assert posted.status_code == 202, posted.text
        upload_id = posted.json()["upload_id"]
        await wait_for(
            lambda: any(e.type == "upload.progress" for e in client.events), 60, "the import"
        )
        await anyio.to_thread.run_sync(stack.pg.stop)
        await anyio.sleep(PG_OUTAGE_SECONDS)
        await anyio.to_thread.run_sync(stack.pg.start)
        back = time.monotonic()
        await wait_for(
            lambda: any(e.type in ("upload.done", "upload.error") for e in client.events),
            DONE_BOUND_SECONDS,
            "the import to complete after PostgreSQL returned",
        )
        FIGURES["pg_minute_done_s"] = time.monotonic() - back
    finally:
        await client.stop()
    assert [
        e.type
        for e in client.events
        if e.type.startswith("upload.") and e.type in ("upload.done", "upload.error")
    ] == ["upload.done"]
    with psycopg.connect(stack.pg.url) as conn:
        status, table, attempts = conn.execute(
            "SELECT status, table_name, attempts FROM uploads WHERE id = %s", (upload_id,)
        ).fetchone()  # type: ignore[misc]
        count = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # type: ignore[index]
    assert status == "completed" and count == BIG_ROWS  # every row, once
    # RQ's own retries (1 + 5 + 15 s) ran out during the outage: the reconciler resumed it.
    assert attempts >= 1
    print(
        f"\npostgres down {PG_OUTAGE_SECONDS:.0f} s mid-import: completed "
        f"{FIGURES['pg_minute_done_s']:.1f} s after it returned, {count} rows (lost 0, "
        f"duplicated 0), enqueued again {attempts} time(s) by the reconciler"
    )


# --- Web killed mid-body -------------------------------------------------------------
RECEIVE_TIMEOUT = 3.0


async def test_web_killed_mid_upload_body_leaves_nothing(stack: Stack) -> None:
    web = stack.start_web(UPLOAD_CHUNK_BYTES="65536")
    stack.start_worker(
        "orphan-worker", **WORKER_ENV, UPLOAD_RECEIVE_TIMEOUT_SECONDS=str(RECEIVE_TIMEOUT)
    )
    token = mint_token("orphan", org_id="org-orphan")

    async def endless_body() -> AsyncIterator[bytes]:
        yield b"n,label\n"
        i = 0
        while True:
            yield b"".join(b"%d,row %d\n" % (j, j) for j in range(i, i + 4000))
            i += 4000
            await anyio.sleep(0.02)

    def receiving() -> tuple[int, int]:
        with psycopg.connect(stack.pg.url) as conn:
            row = conn.execute(
                "SELECT count(DISTINCT u.id), count(c.seq) FROM uploads u"
                " LEFT JOIN upload_chunks c ON c.upload_id = u.id"
                " WHERE u.tenant = 'org:org-orphan'"
            ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    async with httpx.AsyncClient(base_url=web.base, timeout=60) as http:

        async def post() -> None:
            await http.post(
                "/uploads?filename=never-ends.csv",
                content=endless_body(),
                headers={"authorization": f"Bearer {token}", "content-type": "text/csv"},
            )

        task = asyncio.create_task(post())
        deadline = time.monotonic() + 30
        while (await anyio.to_thread.run_sync(receiving))[1] < 3:
            assert time.monotonic() < deadline, "no chunks were stored"
            await anyio.sleep(0.05)
        web.kill()
        killed = time.monotonic()
        with pytest.raises(httpx.TransportError):
            await task
    uploads, chunks = await anyio.to_thread.run_sync(receiving)
    assert uploads == 1 and chunks >= 3  # the dead web process left them
    while await anyio.to_thread.run_sync(receiving) != (0, 0):
        assert time.monotonic() - killed < RECEIVE_TIMEOUT + 10, "the orphan upload stayed"
        await anyio.sleep(0.1)
    FIGURES["orphan_removed_s"] = time.monotonic() - killed
    print(
        f"\nweb SIGKILLed mid-body: the orphan upload and its {chunks} chunks were removed "
        f"{FIGURES['orphan_removed_s']:.1f} s after the kill (timeout {RECEIVE_TIMEOUT:g} s)"
    )
