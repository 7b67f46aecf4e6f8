"""Fault: PostgreSQL stops (``pg_ctl stop -m fast``) under a running web + worker.

Promise: ``/readyz`` answers 503 naming ``postgresql``; JSON routes that need it answer
503 ``service_unavailable`` (never a 500, never a hang); SSE streams, which need only
Redis, keep flowing; no upload is ever ``completed`` with missing rows; and when
PostgreSQL is back everything works again without restarting a process.
"""

from __future__ import annotations

import time

import anyio.to_thread
import httpx
import orjson
import psycopg
import pytest
from rq.job import Job

from app.security.auth import mint_token
from core import settings
from core.events import publish_event
from core.principal import Identity
from tests.faults.clients import Client, wait_for
from tests.faults.stack import Stack
from tests.support.uploads import slow_csv

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

# Every answer while PostgreSQL is down comes within this (the pool waits at most 5 s).
ANSWER_BOUND_SECONDS = 8.0
# From PostgreSQL accepting connections again to /readyz 200 and a chat completing.
# (Before DB_RECONNECT_SECONDS, psycopg_pool's reconnect backoff made this 9-13 s.)
RECOVERY_BOUND_SECONDS = 5.0
UPLOAD_ROWS = 400_000  # big enough to be mid-import when PostgreSQL stops
# RQ retries the import 1, 5 and 15 s after failures (app/jobqueue.py).
RETRY_BOUND_SECONDS = 40.0

FIGURES: dict[str, float] = {}


async def timed(http: httpx.AsyncClient, method: str, path: str, **kw: object) -> httpx.Response:
    started = time.monotonic()
    response = await http.request(method, path, **kw)  # type: ignore[arg-type]
    assert time.monotonic() - started < ANSWER_BOUND_SECONDS, (method, path)
    return response


def assert_db_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "service_unavailable"
    assert error["details"]["service"] == "postgresql"


async def test_postgres_stopped_and_restarted(stack: Stack) -> None:
    web = stack.start_web()
    stack.start_worker("worker-pg")
    user = "pg-down"
    token = mint_token(user, org_id="org-pg-down")
    auth = {"authorization": f"Bearer {token}"}
    client = Client(user, token, web.port)
    client.start()
    async with httpx.AsyncClient(base_url=web.base, timeout=30) as http:
        try:
            await wait_for(lambda: client.connected, 20, "stream")
            assert (await http.get("/readyz")).status_code == 200
            posted = await http.post(
                "/uploads?filename=inflight.csv",
                content=slow_csv(UPLOAD_ROWS),
                headers={**auth, "content-type": "text/csv"},
            )
            assert posted.status_code == 202, posted.text
            upload_id = posted.json()["upload_id"]
            await wait_for(
                lambda: any(e.type == "upload.progress" for e in client.events),
                60,
                "the import to start",
            )

            stopped = time.monotonic()
            await anyio.to_thread.run_sync(stack.pg.stop)
            FIGURES["pg_stop_s"] = time.monotonic() - stopped

            ready = await timed(http, "GET", "/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["details"]["down"] == ["postgresql"]
            assert "postgresql" in ready.json()["error"]["message"]
            assert_db_unavailable(
                await timed(http, "POST", "/chat/messages", json={"message": "hi"}, headers=auth)
            )
            assert_db_unavailable(
                await timed(
                    http,
                    "POST",
                    "/uploads?filename=x.csv",
                    content=b"a\n1\n",
                    headers={**auth, "content-type": "text/csv"},
                )
            )
            assert_db_unavailable(await timed(http, "GET", "/uploads", headers=auth))
            assert_db_unavailable(await timed(http, "GET", "/chat/conversations", headers=auth))
            # Streams need only Redis: an event still reaches the connected client.
            redis_client = stack.redis.client()
            try:
                [marker] = publish_event(
                    redis_client, "chat.chunk", {"m": 1}, owner=Identity(user, "org-pg-down").key
                )
            finally:
                redis_client.close()
            await wait_for(
                lambda: any(e.last_event_id == marker for e in client.events), 10, "marker"
            )

            await anyio.to_thread.run_sync(stack.pg.start)
            back = time.monotonic()

            async def readyz_ok() -> bool:
                return (await http.get("/readyz")).status_code == 200

            deadline = back + RECOVERY_BOUND_SECONDS
            while not await readyz_ok():
                assert time.monotonic() < deadline, "/readyz did not recover"
                await anyio.sleep(0.1)
            FIGURES["readyz_recovered_s"] = time.monotonic() - back
            chat = await http.post("/chat/messages", json={"message": "back?"}, headers=auth)
            assert chat.status_code == 202, chat.text
            message_id = chat.json()["message_id"]
            await wait_for(
                lambda: any(
                    e.type == "chat.done" and orjson.loads(e.data)["message_id"] == message_id
                    for e in client.events
                ),
                back + RECOVERY_BOUND_SECONDS - time.monotonic(),
                "a chat to complete after PostgreSQL returned",
            )
            FIGURES["chat_recovered_s"] = time.monotonic() - back
            await wait_for(
                lambda: any(e.type == "upload.done" for e in client.events),
                RETRY_BOUND_SECONDS,
                "the interrupted import to be retried to completion",
            )
            upload_view = await http.get(f"/uploads/{upload_id}", headers=auth)
        finally:
            await client.stop()

    # The import in flight when PostgreSQL stopped failed, and RQ's retries (1, 5, 15 s
    # apart) ran it again to completion once PostgreSQL was back: every row, once.
    with psycopg.connect(stack.pg.url) as conn:
        status, table, result = conn.execute(
            "SELECT status, table_name, result FROM uploads WHERE id = %s", (upload_id,)
        ).fetchone()  # type: ignore[misc]
        assert status == "completed", status
        count = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]  # type: ignore[index]
        assert count == result["rows_valid"] == UPLOAD_ROWS
    FIGURES["inflight_upload_status"] = status
    redis_client = stack.redis.client()
    try:
        job = Job.fetch(upload_id, connection=redis_client)
        # It really was cut by the outage: RQ used up at least one retry on it.
        assert job.retries_left is not None and job.retries_left < settings.UPLOAD_JOB_RETRIES
    finally:
        redis_client.close()
    print(
        f"\npostgres stop: /readyz 200 again {FIGURES['readyz_recovered_s']:.2f} s and a chat "
        f"done {FIGURES['chat_recovered_s']:.2f} s after it returned; in-flight import ended "
        f"{status!r} (GET says {upload_view.json().get('status')!r})"
    )
