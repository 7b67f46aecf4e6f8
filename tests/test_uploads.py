"""The /uploads routes (API.md "CSV uploads") through the real ASGI app, PostgreSQL and
Redis; imports run the RQ way (SimpleWorker, burst)."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
import redis
from rq import Queue, SimpleWorker

from app.security.auth import mint_token
from core import settings
from tests.support.asgi import app_client, token
from tests.support.uploads import chunk_count, table_exists, upload_events

pytestmark = pytest.mark.anyio

PEOPLE = (
    b"id,name,joined,active,score\n"
    b"1,Ann,2024-01-02,true,1.5\n2,Bob,,false,2\n3,Cy,2024-03-04,yes,\n"
)


def who(org: str | None = None) -> tuple[str, str, dict[str, str]]:
    user = f"u-{uuid.uuid4().hex[:8]}"
    org = org or f"org-{uuid.uuid4().hex[:8]}"
    return user, org, {"authorization": f"Bearer {token(user, org=org)}"}


def auth(user: str, org: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token(user, org=org)}"}


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with app_client() as c:
        yield c


def work(redis_client: redis.Redis) -> None:
    queue = Queue(settings.UPLOAD_QUEUE, connection=redis_client)
    SimpleWorker([queue], connection=redis_client).work(burst=True)


async def post_raw(
    client: httpx.AsyncClient, headers: dict[str, str], data: Any, query: str = "?filename=p.csv"
) -> httpx.Response:
    return await client.post(
        "/uploads" + query, content=data, headers={**headers, "content-type": "text/csv"}
    )


def uploads_of(db: psycopg.Connection, org: str) -> int:
    row = db.execute("SELECT count(*) FROM uploads WHERE tenant = %s", (f"org:{org}",)).fetchone()
    return int(row[0])


async def test_raw_upload_then_import(
    client: httpx.AsyncClient, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    _user, _org, headers = who()
    response = await post_raw(client, headers, PEOPLE, "?filename=people.csv")
    assert response.status_code == 202
    body = response.json()
    assert body == {"upload_id": body["upload_id"], "job_id": body["upload_id"], "status": "queued"}
    assert response.headers["ratelimit-limit"] == settings.UPLOAD_RATE_LIMIT.split("/")[0]
    upload_id = body["upload_id"]
    assert chunk_count(db, upload_id) == 1
    queued = (await client.get(f"/uploads/{upload_id}", headers=headers)).json()
    assert queued["status"] == "queued" and queued["result"] is None
    work(redis_client)
    got = (await client.get(f"/uploads/{upload_id}", headers=headers)).json()
    assert set(got) == {
        "upload_id",
        "filename",
        "status",
        "created_at",
        "progress",
        "result",
        "error",
    }
    assert got["filename"] == "people.csv"
    assert got["created_at"].endswith("Z")  # RFC 3339 in UTC, as chat's time stamps
    assert got["status"] == "completed"
    assert got["progress"] == {"percent": 100, "rows_processed": 3}
    assert got["error"] is None
    result = got["result"]
    assert (result["rows_total"], result["rows_valid"], result["rows_invalid"]) == (3, 3, 0)
    assert 0 <= result["data_quality_score"] <= 100
    assert [(c["name"], c["type"]) for c in result["columns"]] == [
        ("id", "int"),
        ("name", "text"),
        ("joined", "date"),
        ("active", "bool"),
        ("score", "float"),
    ]
    assert result["columns"][0] | {"min": 1, "max": 3, "mean": 2.0} == result["columns"][0]
    statuses = [
        d["status"] for e, d in upload_events(redis_client, upload_id) if e == "upload.status"
    ]
    assert statuses == ["queued", "validating", "processing", "completed"]


async def test_multipart_upload_with_columns(
    client: httpx.AsyncClient,
    db: psycopg.Connection,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(settings, "UPLOAD_CHUNK_BYTES", 16)  # several chunks
    _user, _org, headers = who()
    response = await client.post(
        "/uploads",
        headers=headers,
        files={"file": ("../../etc/people.csv", PEOPLE, "application/vnd.ms-excel")},
        data={"columns": '{"id": "text", "score": "float"}'},
    )
    assert response.status_code == 202, response.text
    upload_id = response.json()["upload_id"]
    assert chunk_count(db, upload_id) == -(-len(PEOPLE) // 16)
    work(redis_client)
    got = (await client.get(f"/uploads/{upload_id}", headers=headers)).json()
    assert got["filename"] == "people.csv"
    assert [c["type"] for c in got["result"]["columns"]][:1] == ["text"]
    rows = (await client.get(f"/uploads/{upload_id}/rows", headers=headers)).json()
    assert rows["rows"][0]["id"] == "1"


@pytest.mark.parametrize("columns", ['{"id": "money"}', "[1, 2]", "not json", '{"id": 3}'])
async def test_invalid_columns_is_400_and_nothing_is_kept(
    client: httpx.AsyncClient, db: psycopg.Connection, columns: str
) -> None:
    _user, org, headers = who()
    by_query = await post_raw(client, headers, PEOPLE, "?filename=a.csv&columns=" + columns)
    by_form = await client.post(
        "/uploads", headers=headers, files={"file": ("a.csv", PEOPLE)}, data={"columns": columns}
    )
    for response in (by_query, by_form):
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "validation_error"
    assert uploads_of(db, org) == 0


async def test_too_large_while_streaming_leaves_nothing(
    client: httpx.AsyncClient, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(settings, "UPLOAD_MAX_BYTES", 10_000)
    monkeypatch.setattr(settings, "UPLOAD_CHUNK_BYTES", 1000)
    _user, org, headers = who()
    sent = 0

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        nonlocal sent
        for _ in range(40):
            sent += 500
            yield b"a,b\n" * 125

    response = await post_raw(client, headers, body())
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "upload_too_large"
    assert 10_000 < sent < 20_000  # refused as the bytes arrived, not after the whole body
    assert uploads_of(db, org) == 0
    orphans = db.execute(
        "SELECT count(*) FROM upload_chunks c WHERE NOT EXISTS"
        " (SELECT 1 FROM uploads u WHERE u.id = c.upload_id)"
    ).fetchone()
    assert orphans == (0,)
    # A declared Content-Length over the limit is refused before anything is stored.
    declared = await post_raw(client, headers, b"x" * 10_001)
    assert declared.status_code == 413
    multipart = await client.post(
        "/uploads", headers=headers, files={"file": ("a.csv", b"a\n" * 40_000)}
    )
    assert multipart.status_code == 413
    assert uploads_of(db, org) == 0


def server_has_lz4(db: psycopg.Connection) -> bool:
    try:
        with db.transaction():
            db.execute("CREATE TEMP TABLE lz4_probe (b bytea COMPRESSION lz4)")
            raise psycopg.Rollback()
    except psycopg.errors.FeatureNotSupported:
        return False
    return True


async def test_chunks_are_stored_lz4_compressed(
    client: httpx.AsyncClient, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    # Migration 004: LZ4 receives a file ~4x faster than pglz at the same size stored.
    _user, _org, headers = who()
    text = b"".join(b"%d,name %d,2024-01-%02d\n" % (i, i % 97, i % 28 + 1) for i in range(50_000))
    response = await post_raw(client, headers, b"id,name,day\n" + text)
    assert response.status_code == 202, response.text
    upload_id = response.json()["upload_id"]
    methods = db.execute(
        "SELECT DISTINCT pg_column_compression(data) FROM upload_chunks WHERE upload_id = %s",
        (upload_id,),
    ).fetchall()
    assert methods == ([("lz4",)] if server_has_lz4(db) else [("pglz",)])
    work(redis_client)  # and the import reads them back
    status = db.execute("SELECT status FROM uploads WHERE id = %s", (upload_id,)).fetchone()
    assert status == ("completed",)


async def test_empty_and_not_text(client: httpx.AsyncClient, db: psycopg.Connection) -> None:
    _user, org, headers = who()
    empty = await post_raw(client, headers, b"")
    assert (empty.status_code, empty.json()["error"]["code"]) == (400, "empty_file")
    blank = await client.post("/uploads", headers=headers, files={"file": ("a.csv", b"\n \n")})
    assert (blank.status_code, blank.json()["error"]["code"]) == (400, "empty_file")
    binary = await post_raw(client, headers, b"PK\x03\x04\x00\x00garbage" * 100)
    assert (binary.status_code, binary.json()["error"]["code"]) == (415, "unsupported_media_type")
    wrong = await client.post(
        "/uploads", headers={**headers, "content-type": "application/json"}, content=b"{}"
    )
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (415, "unsupported_media_type")
    missing = await client.post("/uploads", headers=headers, files={"other": ("a.csv", PEOPLE)})
    assert (missing.status_code, missing.json()["error"]["code"]) == (400, "validation_error")
    assert uploads_of(db, org) == 0


async def test_tenancy(client: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    _owner, org, headers = who()
    upload_id = (await post_raw(client, headers, PEOPLE)).json()["upload_id"]
    work(redis_client)
    mate = auth("someone-else", org)
    assert (await client.get(f"/uploads/{upload_id}", headers=mate)).status_code == 200
    listed = (await client.get("/uploads", headers=mate)).json()["uploads"]
    assert [u["upload_id"] for u in listed] == [upload_id]
    _, _, stranger = who()
    assert (await client.get("/uploads", headers=stranger)).json()["uploads"] == []
    for method, path in [
        ("GET", f"/uploads/{upload_id}"),
        ("GET", f"/uploads/{upload_id}/rows"),
        ("GET", f"/uploads/{upload_id}/errors"),
        ("POST", f"/uploads/{upload_id}/cancel"),
        ("DELETE", f"/uploads/{upload_id}"),
        ("GET", "/uploads/not-a-uuid"),
        ("GET", f"/uploads/{uuid.uuid4()}"),
    ]:
        response = await client.request(method, path, headers=stranger)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"
    assert (await client.get(f"/uploads/{upload_id}", headers=headers)).status_code == 200
    assert (await client.get("/uploads", headers={})).status_code == 401


async def test_list_is_newest_first(client: httpx.AsyncClient) -> None:
    _user, _org, headers = who()
    ids = [(await post_raw(client, headers, PEOPLE)).json()["upload_id"] for _ in range(3)]
    listed = (await client.get("/uploads", headers=headers)).json()["uploads"]
    assert [u["upload_id"] for u in listed] == ids[::-1]
    assert all(u["status"] == "queued" for u in listed)


async def test_rows_are_typed_and_paged(
    client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    _user, _org, headers = who()
    upload_id = (await post_raw(client, headers, PEOPLE)).json()["upload_id"]
    early = await client.get(f"/uploads/{upload_id}/rows", headers=headers)
    assert (early.status_code, early.json()["error"]["code"]) == (409, "upload_not_completed")
    work(redis_client)
    page = (await client.get(f"/uploads/{upload_id}/rows?limit=2&offset=1", headers=headers)).json()
    assert page["total"] == 3 and (page["limit"], page["offset"]) == (2, 1)
    assert page["rows"] == [
        {"id": 2, "name": "Bob", "joined": None, "active": False, "score": 2.0},
        {"id": 3, "name": "Cy", "joined": "2024-03-04", "active": True, "score": None},
    ]
    for query in [
        "limit=0",
        "limit=abc",
        f"limit={settings.UPLOAD_ROWS_PAGE_MAX + 1}",
        "offset=-1",
    ]:
        bad = await client.get(f"/uploads/{upload_id}/rows?{query}", headers=headers)
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "validation_error"), query


async def test_errors_csv_is_neutralised(
    client: httpx.AsyncClient, redis_client: redis.Redis
) -> None:
    _user, _org, headers = who()
    lines = ["n,label"] + [f"{i},x{i}" for i in range(1, 101)]
    lines[10] = "=HYPERLINK(1),a"
    lines[20] = "@SUM(A1),b"
    lines[30] = "-cmd|' /C calc'!A0,c"
    lines[40] = "+1+1,d"
    lines[50] = "1,2,3"
    data = "\n".join(lines).encode()
    # `n` forced to int: the formula-like cells are rejected, and land in the errors CSV.
    query = '?filename=q=1.csv&columns={"n":"int"}'
    upload_id = (await post_raw(client, headers, data, query)).json()["upload_id"]
    work(redis_client)
    response = await client.get(f"/uploads/{upload_id}/errors", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="q=1-errors.csv"'
    rows = list(csv.reader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert rows == [
        ["row", "column", "value", "error"],
        ["10", "n", "'=HYPERLINK(1)", "not an integer"],
        ["20", "n", "'@SUM(A1)", "not an integer"],
        ["30", "n", "'-cmd|' /C calc'!A0", "not an integer"],
        ["40", "n", "'+1+1", "not an integer"],
        ["50", "", "1,2,3", "too many fields: expected 2, got 3"],
    ]


async def test_delete_removes_everything(
    client: httpx.AsyncClient, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    _user, org, headers = who()
    upload_id = (await post_raw(client, headers, PEOPLE + b"x,y,z,w,v\n")).json()["upload_id"]
    work(redis_client)
    assert table_exists(db, upload_id)
    response = await client.delete(f"/uploads/{upload_id}", headers=headers)
    assert response.status_code == 204
    assert (await client.get(f"/uploads/{upload_id}", headers=headers)).status_code == 404
    assert not table_exists(db, upload_id)
    assert db.execute(
        "SELECT count(*) FROM upload_errors WHERE upload_id = %s", (upload_id,)
    ).fetchone() == (0,)
    assert uploads_of(db, org) == 0
    assert upload_events(redis_client, upload_id) == []


async def test_cancel_before_the_worker_runs(
    client: httpx.AsyncClient, db: psycopg.Connection, redis_client: redis.Redis
) -> None:
    _user, _org, headers = who()
    upload_id = (await post_raw(client, headers, PEOPLE)).json()["upload_id"]
    response = await client.post(f"/uploads/{upload_id}/cancel", headers=headers)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    again = await client.post(f"/uploads/{upload_id}/cancel", headers=headers)
    assert again.status_code == 200
    work(redis_client)  # the job finds it cancelled and does nothing
    assert (await client.get(f"/uploads/{upload_id}", headers=headers)).json()[
        "status"
    ] == "cancelled"
    assert not table_exists(db, upload_id)
    done_id = (await post_raw(client, headers, PEOPLE)).json()["upload_id"]
    work(redis_client)
    late = await client.post(f"/uploads/{done_id}/cancel", headers=headers)
    assert (late.status_code, late.json()["error"]["code"]) == (409, "upload_finished")


async def test_rate_limited(client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "UPLOAD_RATE_LIMIT", "2/minute")
    _user, _org, headers = who()
    for remaining in ("1", "0"):
        ok = await post_raw(client, headers, PEOPLE)
        assert ok.status_code == 202 and ok.headers["ratelimit-remaining"] == remaining
    refused = await post_raw(client, headers, PEOPLE)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-limit"] == "2"


async def test_rows_of_a_wide_file(client: httpx.AsyncClient, redis_client: redis.Redis) -> None:
    _user, _org, headers = who()
    width = 1100  # too wide for one column per field: stored as jsonb, read back the same
    header = ",".join(f"c{i}" for i in range(width))
    body = "\n".join(",".join(str(r + i) for i in range(width)) for r in range(2))
    data = f"{header}\n{body}\n".encode()
    upload_id = (await post_raw(client, headers, data)).json()["upload_id"]
    work(redis_client)
    page = (await client.get(f"/uploads/{upload_id}/rows?offset=1", headers=headers)).json()
    assert page["total"] == 2 and len(page["columns"]) == width
    assert list(page["rows"][0]) == [f"c{i}" for i in range(width)]
    assert page["rows"][0]["c0"] == 1 and page["rows"][0]["c1099"] == 1100


async def test_many_small_form_fields_are_refused(
    client: httpx.AsyncClient, db: psycopg.Connection
) -> None:
    # Each field under the per-field cap, together far over it: refused, nothing kept.
    _user, org, headers = who()
    fields = {f"f{n}": "x" * 1000 for n in range(200)}
    response = await client.post(
        "/uploads", headers=headers, data=fields, files={"file": ("a.csv", PEOPLE)}
    )
    assert (response.status_code, response.json()["error"]["code"]) == (400, "validation_error")
    assert uploads_of(db, org) == 0


async def test_every_multipart_byte_counts_against_the_limit(
    client: httpx.AsyncClient, db: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Empty parts carry no file bytes and no field bytes, only framing: they were never
    # counted, so a chunked body of them was parsed without bound.
    monkeypatch.setattr(settings, "UPLOAD_MAX_BYTES", 1000)
    _user, org, headers = who()
    empty_part = b'--B\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'
    sent = 0

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: chunked
        nonlocal sent
        for _ in range(200):  # ~2 MB of empty parts, then a small file
            sent += len(empty_part) * 200
            yield empty_part * 200
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.csv"\r\n\r\n'
        yield PEOPLE + b"\r\n--B--\r\n"

    response = await client.post(
        "/uploads",
        content=body(),
        headers={**headers, "content-type": "multipart/form-data; boundary=B"},
    )
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "upload_too_large"
    assert sent < 200 * 1024  # refused near the limit (plus the framing slack), not at the end
    assert uploads_of(db, org) == 0


ID_SPELLINGS = [
    "urn:uuid:{id}",
    "{{{id}}}",
    "{upper}",
    "{bare}",
    " {id}",
    "{id}\u00a0",
]


@pytest.mark.parametrize("spelling", ID_SPELLINGS)
async def test_other_spellings_of_an_id_name_nothing(
    client: httpx.AsyncClient, redis_client: redis.Redis, spelling: str
) -> None:
    # uuid.UUID() reads all of these, PostgreSQL's uuid type not all: they were 500s.
    _user, _org, headers = who()
    upload_id = (await post_raw(client, headers, PEOPLE)).json()["upload_id"]
    work(redis_client)
    alias = spelling.format(id=upload_id, upper=upload_id.upper(), bare=upload_id.replace("-", ""))
    quoted = "/uploads/" + quote(alias, safe=":{}")
    for method, suffix in [
        ("GET", ""),
        ("GET", "/rows"),
        ("GET", "/errors"),
        ("POST", "/cancel"),
        ("DELETE", ""),
    ]:
        response = await client.request(method, quoted + suffix, headers=headers)
        assert response.status_code == 404, (method, alias, suffix, response.text)
        assert response.json()["error"]["code"] == "not_found"
    assert (await client.get(f"/uploads/{upload_id}", headers=headers)).status_code == 200


async def test_bidi_controls_are_stripped_from_filenames(client: httpx.AsyncClient) -> None:
    _user, _org, headers = who()
    # Displayed as "invoicecsv.exe" with the override, a different file than it is.
    raw = await post_raw(client, headers, PEOPLE, "?filename=invoice%E2%80%AEexe.csv")
    form = await client.post(
        "/uploads",
        headers=headers,
        files={"file": ("r\u2066ep\u2069ort\u200f.csv", PEOPLE)},
    )
    names = []
    for response in (raw, form):
        upload_id = response.json()["upload_id"]
        names.append(
            (await client.get(f"/uploads/{upload_id}", headers=headers)).json()["filename"]
        )
    assert names == ["invoiceexe.csv", "report.csv"]


async def test_only_the_uploader_or_an_admin_may_cancel_or_delete(
    client: httpx.AsyncClient,
) -> None:
    _owner, org, headers = who()
    mate = auth("a-colleague", org)
    admin = {"authorization": f"Bearer {mint_token('the-admin', org_id=org, roles=['admin'])}"}
    upload_id = (await post_raw(client, headers, PEOPLE)).json()["upload_id"]
    # Every member sees it (API.md), so refusing is 403, not 404.
    assert (await client.get(f"/uploads/{upload_id}", headers=mate)).status_code == 200
    for method, path in [
        ("POST", f"/uploads/{upload_id}/cancel"),
        ("DELETE", f"/uploads/{upload_id}"),
    ]:
        refused = await client.request(method, path, headers=mate)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
    assert (await client.get(f"/uploads/{upload_id}", headers=headers)).json()["status"] == "queued"
    cancelled = await client.post(f"/uploads/{upload_id}/cancel", headers=admin)
    assert cancelled.json()["status"] == "cancelled"
    assert (await client.delete(f"/uploads/{upload_id}", headers=headers)).status_code == 204
    other_id = (await post_raw(client, headers, PEOPLE)).json()["upload_id"]
    assert (await client.delete(f"/uploads/{other_id}", headers=admin)).status_code == 204
