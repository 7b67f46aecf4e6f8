"""The principal is the pair (tenant, user) everywhere (issue 11, items 1 and 2).

The same ``sub`` in two orgs is two people: chats, the /events stream, stream slots,
rate limits and caches stay apart. An ``org`` claim can never name another user's
tenant of one. The release migration moves rows written in the old shape.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import anyio
import httpx
import psycopg
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from app.migrations import MIGRATIONS_DIR, apply_migrations
from core import events, settings
from core.principal import Identity
from tests.conftest import DATABASE_URL, schema_dsn
from tests.support.asgi import StreamCall, app_client, running_app, token

pytestmark = pytest.mark.anyio

CSV = b"a,b\n1,2\n"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client() as c:
        yield c


def bearer(user: str, org: str | None = None) -> dict[str, str]:
    return {"authorization": f"Bearer {token(user, org=org)}"}


def fresh(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def test_same_sub_in_two_orgs_shares_no_chat(client: httpx.AsyncClient) -> None:
    alice = fresh("alice")
    at_x, at_y = bearer(alice, fresh("orgx")), bearer(alice, fresh("orgy"))
    posted = await client.post("/chat/messages", json={"message": "secret plan"}, headers=at_x)
    assert posted.status_code == 202, posted.text
    conversation = posted.json()["conversation_id"]
    # Listed, read and written only by alice of orgx.
    mine = (await client.get("/chat/conversations", headers=at_x)).json()["conversations"]
    assert [c["conversation_id"] for c in mine] == [conversation]
    theirs = await client.get("/chat/conversations", headers=at_y)
    assert theirs.json() == {"conversations": []}
    read = await client.get(f"/chat/conversations/{conversation}/messages", headers=at_y)
    assert (read.status_code, read.json()["error"]["code"]) == (404, "not_found")
    write = await client.post(
        "/chat/messages",
        json={"message": "me too", "conversation_id": conversation},
        headers=at_y,
    )
    assert write.status_code == 404
    # And a tenant of one with the same sub is a third person.
    alone = await client.get("/chat/conversations", headers=bearer(alice))
    assert alone.json() == {"conversations": []}


async def test_same_sub_in_two_orgs_has_two_rate_limits(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "CHAT_RATE_LIMIT", "1/hour")
    bob = fresh("bob")
    at_x, at_y = bearer(bob, fresh("orgx")), bearer(bob, fresh("orgy"))
    assert (await client.post("/chat/messages", json={"message": "hi"}, headers=at_x)).is_success
    over = await client.post("/chat/messages", json={"message": "again"}, headers=at_x)
    assert over.status_code == 429
    other = await client.post("/chat/messages", json={"message": "hi"}, headers=at_y)
    assert other.status_code == 202, other.text
    assert other.headers["ratelimit-remaining"] == "0"  # its own window, one used


async def test_same_sub_in_two_orgs_has_two_event_streams(redis_client: redis.Redis) -> None:
    carol = fresh("carol")
    org_x, org_y = fresh("orgx"), fresh("orgy")
    async with running_app() as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            # An upload by carol of orgx publishes upload.status to her own stream.
            posted = await client.post(
                "/uploads?filename=x.csv",
                content=CSV,
                headers={**bearer(carol, org_x), "content-type": "text/csv"},
            )
            assert posted.status_code == 202, posted.text
        upload_id = posted.json()["upload_id"]
        replays = {}
        for org in (org_x, org_y):
            # Last-Event-ID 0-0: replay the whole retained stream, then go live.
            call = StreamCall(app, "/events", {**bearer(carol, org), "last-event-id": "0-0"})
            async with anyio.create_task_group() as tg:
                tg.start_soon(call.run)
                await call.wait_for(lambda c: b": connected" in c.body)
                call.disconnect()
            replays[org] = bytes(call.body)
    assert upload_id.encode() in replays[org_x]
    assert b"event: upload.status" not in replays[org_y]
    assert redis_client.exists(events.user_stream(Identity(carol, org_x).key))
    assert not redis_client.exists(events.user_stream(Identity(carol, org_y).key))


async def test_same_sub_in_two_orgs_has_two_sets_of_stream_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "SSE_MAX_CONNECTIONS_PER_USER", 1)
    dan = fresh("dan")
    async with running_app() as app:
        first = StreamCall(app, "/events", bearer(dan, "orgx"))
        same = StreamCall(app, "/events", bearer(dan, "orgx"))
        other = StreamCall(app, "/events", bearer(dan, "orgy"))
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run)
            await first.wait_for(lambda c: c.status == 200)
            await same.run()  # refused at once: the slot is taken
            tg.start_soon(other.run)
            await other.wait_for(lambda c: c.status is not None)
            first.disconnect()
            other.disconnect()
    assert same.status == 429
    assert other.status == 200


async def test_org_claim_cannot_name_a_tenant_of_one(client: httpx.AsyncClient) -> None:
    dave = fresh("dave")
    posted = await client.post(
        "/uploads?filename=d.csv", content=CSV, headers={**bearer(dave), "content-type": "text/csv"}
    )
    assert posted.status_code == 202
    upload_id = posted.json()["upload_id"]
    assert (await client.get(f"/uploads/{upload_id}", headers=bearer(dave))).status_code == 200
    for forger in (bearer("mallory", f"user:{dave}"), bearer(dave, f"user:{dave}")):
        listed = await client.get("/uploads", headers=forger)
        assert listed.json() == {"uploads": []}
        assert (await client.get(f"/uploads/{upload_id}", headers=forger)).status_code == 404


names = st.text(min_size=1, max_size=12)


@given(a=st.tuples(names, st.none() | names), b=st.tuples(names, st.none() | names))
def test_identity_keys_and_tenants_are_unambiguous(
    a: tuple[str, str | None], b: tuple[str, str | None]
) -> None:
    first, second = Identity(*a), Identity(*b)
    assert (first.key == second.key) == (first == second)
    if first.org is None and second.org is None:
        same_tenant = first.user_id == second.user_id
    else:
        same_tenant = first.org == second.org
    assert (first.tenant == second.tenant) == same_tenant
    assert Identity.from_tenant(first.tenant, first.user_id) == first
    # No ':' inside a part, nor '/', which the limits library uses between key parts.
    assert "/" not in first.key
    assert first.key.count(":") == (1 if first.org is None else 2)


def test_key_parts_are_percent_encoded() -> None:
    assert Identity("a:b", "c").key == "org:c:" + quote("a:b", safe="")
    assert Identity("b", "a:c").key != Identity("c", "a:b").key


def test_migration_moves_rows_of_the_old_shape() -> None:
    """002 on rows written by 001's code: a tenant of one stays one, a named org
    (even one spelled 'user:<sub>' by another user) becomes 'org:<name>'."""
    schema = f"migrate_{uuid.uuid4().hex[:8]}"
    conninfo = schema_dsn(schema)
    with psycopg.connect(DATABASE_URL, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(Path(MIGRATIONS_DIR / "001_initial.sql").read_text())
            conn.execute(
                "CREATE TABLE schema_migrations (name text PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            conn.execute("INSERT INTO schema_migrations (name) VALUES ('001_initial')")
            old = [
                ("dave", "user:dave"),  # dave, no org claim
                ("alice", "acme"),  # alice of org acme
                ("mallory", "user:dave"),  # mallory's forged org claim
            ]
            ids = {}
            for user, org in old:
                cid, uid = str(uuid.uuid4()), str(uuid.uuid4())
                conn.execute(
                    "INSERT INTO conversations (id, user_id, org_id) VALUES (%s, %s, %s)",
                    (cid, user, org),
                )
                conn.execute(
                    "INSERT INTO uploads (id, org_id, user_id, filename, status)"
                    " VALUES (%s, %s, %s, 'f.csv', 'completed')",
                    (uid, org, user),
                )
                ids[user] = (cid, uid)
        assert "002_tenant_keys" in apply_migrations(conninfo)
        with psycopg.connect(conninfo, autocommit=True) as conn:
            want = {"dave": "user:dave", "alice": "org:acme", "mallory": "org:user:dave"}
            for user, (cid, uid) in ids.items():
                for table, row_id in (("conversations", cid), ("uploads", uid)):
                    row = conn.execute(
                        f"SELECT tenant, user_id FROM {table} WHERE id = %s",
                        (row_id,),
                    ).fetchone()
                    assert row == (want[user], user), (table, user)
                    Identity.from_tenant(*row)  # every stored tenant names its owner
            columns = {
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = %s AND table_name IN ('uploads', 'conversations')",
                    (schema,),
                )
            }
            assert "org_id" not in columns and "tenant" in columns
        assert apply_migrations(conninfo) == []  # once only
    finally:
        with psycopg.connect(DATABASE_URL, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
