"""Helpers shared by the CSV upload tests: stage an upload in PostgreSQL as the web does,
run its import the RQ way, and read back what it left (rows, errors, events)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
import psycopg
import redis
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from rq import Queue, SimpleWorker
from rq.job import Job

from core import events, jobkinds, settings
from core.principal import Identity


def slow_csv(rows: int) -> bytes:
    """A CSV for tests that need an import still running a while after it starts: decimal
    commas keep it off PostgreSQL's pass-through (docs/csv.md), which loads ~1M rows a
    second, on the Python path at roughly a third of that."""
    lines = ["id;name;amount"] + [f"{i};n{i};{i},5" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def stage(
    db: psycopg.Connection[Any],
    data: bytes,
    *,
    org: str = "org-a",
    user: str | None = None,
    columns: dict[str, str] | None = None,
    chunk: int | None = None,
) -> tuple[str, str]:
    """An upload in status ``queued`` with ``data`` in chunks; returns (upload_id, user)."""
    upload_id = str(uuid.uuid4())
    user = user or f"user-{uuid.uuid4().hex[:8]}"
    db.execute(
        "INSERT INTO uploads (id, tenant, user_id, filename, status, size_bytes, column_types)"
        " VALUES (%s, %s, %s, 'test.csv', 'queued', %s, %s)",
        (upload_id, f"org:{org}", user, len(data), Jsonb(columns) if columns else None),
    )
    size = chunk or settings.UPLOAD_CHUNK_BYTES
    with db.cursor() as cur:
        for seq, start in enumerate(range(0, len(data), size)):
            cur.execute(
                "INSERT INTO upload_chunks (upload_id, seq, data) VALUES (%s, %s, %b)",
                (upload_id, seq, data[start : start + size]),
            )
    return upload_id, user


def run_import(client: redis.Redis, upload_id: str) -> Job:
    queue = Queue(settings.UPLOAD_QUEUE, connection=client)
    job = queue.enqueue(jobkinds.CSV_IMPORT.target, upload_id)
    SimpleWorker([queue], connection=client).work(burst=True)
    job.refresh()
    return job


def upload_row(db: psycopg.Connection[Any], upload_id: str) -> dict[str, Any]:
    with db.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM uploads WHERE id = %s", (upload_id,)).fetchone()
    assert row is not None
    return row


def table_rows(db: psycopg.Connection[Any], upload_id: str) -> list[tuple[Any, ...]]:
    name = "upload_rows_" + uuid.UUID(upload_id).hex
    query = sql.SQL("SELECT * FROM {} ORDER BY _row").format(sql.Identifier(name))
    return db.execute(query).fetchall()


def table_exists(db: psycopg.Connection[Any], upload_id: str) -> bool:
    name = "upload_rows_" + uuid.UUID(upload_id).hex
    return db.execute("SELECT to_regclass(%s) IS NOT NULL", (name,)).fetchone() == (True,)


def error_rows(db: psycopg.Connection[Any], upload_id: str) -> list[tuple[Any, ...]]:
    return db.execute(
        "SELECT row_number, column_name, value, error FROM upload_errors"
        " WHERE upload_id = %s ORDER BY row_number, ctid",
        (upload_id,),
    ).fetchall()


def chunk_count(db: psycopg.Connection[Any], upload_id: str) -> int:
    row = db.execute("SELECT count(*) FROM upload_chunks WHERE upload_id = %s", (upload_id,))
    return int(row.fetchone()[0])  # type: ignore[index]


def stream_events(client: redis.Redis, key: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (fields[b"e"].decode(), orjson.loads(fields[b"d"]))
        for _, fields in client.xrange(key, "-", "+")
    ]


def user_events(
    client: redis.Redis, user: str, org: str = "org-a"
) -> list[tuple[str, dict[str, Any]]]:
    """The events of ``user`` of ``org`` (``stage``'s default org)."""
    return stream_events(client, events.user_stream(Identity(user, org).key))


def upload_events(client: redis.Redis, upload_id: str) -> list[tuple[str, dict[str, Any]]]:
    return stream_events(client, events.upload_stream(upload_id))
