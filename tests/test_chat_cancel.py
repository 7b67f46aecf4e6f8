"""``POST /chat/messages/{id}/cancel`` for a reply still queued (issue 12).

No worker runs here: the job is waiting in RQ's queue, so the web cancels it with RQ's
own ``cancel`` and ends the reply itself. Stopping a reply that is streaming on a worker
is tested in tests/test_chat_concurrency.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
import redis
from rq.job import Job, JobStatus

from core import events
from core.jobkinds import chat_job_id
from core.principal import Identity
from core.replies import reply_id
from tests.support.asgi import app_client, bearer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client() as c:
        yield c


auth = bearer


def done_events(client: redis.Redis, user: str, message_id: str) -> list[dict[str, object]]:
    out = []
    for _, fields in client.xrange(events.user_stream(Identity(user).key), "-", "+"):
        data = json.loads(fields[b"d"])
        if fields[b"e"] == b"chat.done" and data.get("message_id") == message_id:
            out.append(data)
    return out


async def test_cancel_a_queued_reply(
    client: httpx.AsyncClient, redis_client: redis.Redis, db: psycopg.Connection
) -> None:
    user = "cancel-queued"
    posted = await client.post("/chat/messages", json={"message": "hello"}, headers=auth(user))
    assert posted.status_code == 202
    message_id = posted.json()["message_id"]

    # Someone else cannot see it, so cannot stop it: 404, as for a message that does not exist.
    other = await client.post(f"/chat/messages/{message_id}/cancel", headers=auth("intruder"))
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "not_found"

    cancelled = await client.post(f"/chat/messages/{message_id}/cancel", headers=auth(user))
    assert cancelled.status_code == 202
    assert cancelled.json() == {"message_id": message_id, "status": "cancelling"}
    # The job never runs: RQ's own verdict.
    job = Job.fetch(chat_job_id(message_id), connection=redis_client)
    assert job.get_status() == JobStatus.CANCELED
    # The stream hears the end once, and history shows it.
    assert done_events(redis_client, user, message_id) == [
        {
            "conversation_id": posted.json()["conversation_id"],
            "message_id": message_id,
            "text": "",
            "model": None,
            "cancelled": True,
        }
    ]
    rows = db.execute(
        "SELECT id, status FROM messages WHERE id = ANY(%s) ORDER BY role DESC",
        ([message_id, reply_id(message_id)],),
    ).fetchall()
    assert [status for _, status in rows] == ["cancelled", "cancelled"]

    again = await client.post(f"/chat/messages/{message_id}/cancel", headers=auth(user))
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "reply_finished"
    assert len(done_events(redis_client, user, message_id)) == 1


async def test_cancel_an_unknown_or_malformed_id_is_404(client: httpx.AsyncClient) -> None:
    for message_id in ("not-an-id", "00000000-0000-0000-0000-000000000000"):
        response = await client.post(f"/chat/messages/{message_id}/cancel", headers=auth("x"))
        assert response.status_code == 404
