"""Real Redis and PostgreSQL for every test run, isolated from any other run and from
any other user of those servers.

A run touches only what it writes itself: in Redis, keys under its own prefix in the
database named by ``REDIS_URL`` (RQ's keys too, through rq's ``RQ_KEY_PREFIX``); in
PostgreSQL, its own schema (``search_path``). At the end it unlinks its own keys by
prefix and drops its schema; it never flushes a database. Without REDIS_URL /
DATABASE_URL the embedded servers are started. Settings (and rq's key prefix) are read
once at import, so all of this happens before ``app``, ``jobs`` or ``rq`` is imported.
"""

from __future__ import annotations

import atexit
import os
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import psycopg
import redis
import redis.asyncio

# Overridable so a test that runs the suite in a subprocess knows what that run owns.
RUN_ID = os.environ.get("HERALD_TEST_RUN_ID") or uuid.uuid4().hex[:10]

from app.dev import embedded  # noqa: E402 - embedded reads no settings

embedded.ensure_services()
BASE_REDIS_URL = os.environ["REDIS_URL"]
BASE_DATABASE_URL = os.environ["DATABASE_URL"]

REDIS_URL = BASE_REDIS_URL
PREFIX = f"herald-test-{RUN_ID}"
SCHEMA = f"test_{RUN_ID}"


def schema_dsn(schema: str) -> str:
    """The base database URL with `schema` as the search path; its other parameters (the
    embedded server's socket `host`, say) kept."""
    sep = "&" if "?" in BASE_DATABASE_URL else "?"
    return f"{BASE_DATABASE_URL}{sep}options={quote(f'-csearch_path={schema}')}"


DATABASE_URL = schema_dsn(SCHEMA)

if "rq" in sys.modules:  # rq fixes its key prefix when first imported
    raise RuntimeError("rq was imported before tests/conftest.py set RQ_KEY_PREFIX")

with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as _conn:
    _conn.execute(f'CREATE SCHEMA "{SCHEMA}"')


def drop_run_data() -> None:
    """Unlink the run's keys and drop its schema. Also at interpreter exit: pytest can stop
    after this import without a session (a usage error), and the schema must not stay.
    Forked children (RQ work horses, test servers) inherit the hook and skip it."""
    if os.getpid() != _OWNER_PID:
        return
    client = redis.Redis.from_url(REDIS_URL)
    try:
        unlink_prefix(client, PREFIX)
    finally:
        client.close()
    with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')


_OWNER_PID = os.getpid()
atexit.register(drop_run_data)

os.environ.update(
    REDIS_URL=REDIS_URL,
    DATABASE_URL=DATABASE_URL,
    REDIS_PREFIX=PREFIX,
    RQ_KEY_PREFIX=f"{PREFIX}:rq",
    JWT_SECRET="test-secret-for-herald-tests-only-32bytes",
    LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
    SSE_HEARTBEAT_SECONDS="0.5",
    SSE_QUEUE_SIZE="64",
    DEMO_WORD_DELAY_SECONDS="0",
)

import pytest  # noqa: E402

from app.migrations import apply_migrations  # noqa: E402

apply_migrations()


def unlink_prefix(client: redis.Redis, prefix: str) -> int:
    """Unlink every key under ``prefix`` (SCAN, never KEYS nor a whole-database command);
    returns how many."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            removed += int(client.unlink(*batch))
            batch.clear()
    if batch:
        removed += int(client.unlink(*batch))
    return removed


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    drop_run_data()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
async def aredis() -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client of the run's Redis, for async tests (anyio)."""
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def db() -> Iterator[psycopg.Connection]:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        yield conn
