"""Real Redis and PostgreSQL for every test run, isolated from any other run.

Each run takes a free Redis DB number (claimed with SET NX in that DB) plus a unique
key/channel prefix (PUBLISH is not scoped by DB), and its own PostgreSQL schema via
``search_path``. Without REDIS_URL / DATABASE_URL the embedded servers are started.
Settings are read once at import, so all of this happens before ``app`` is imported.
"""

from __future__ import annotations

import os
import uuid
from urllib.parse import quote

import psycopg
import redis

RUN_ID = uuid.uuid4().hex[:10]

from app.dev import embedded  # noqa: E402 - embedded reads no settings

embedded.ensure_services()
_base_redis = os.environ["REDIS_URL"]
_base_db = os.environ["DATABASE_URL"]


def _claim_redis_db() -> tuple[str, int]:
    base = _base_redis.rsplit("/", 1)[0] if _base_redis.count("/") >= 3 else _base_redis
    for db in range(1, 16):
        client = redis.Redis.from_url(f"{base}/{db}")
        try:
            if client.set("herald-test:claim", RUN_ID, nx=True, ex=3600):
                return f"{base}/{db}", db
        finally:
            client.close()
    raise RuntimeError("no free Redis DB (1-15) for this test run")


REDIS_URL, REDIS_DB = _claim_redis_db()
SCHEMA = f"test_{RUN_ID}"
_sep = "&" if "?" in _base_db else "?"
DATABASE_URL = f"{_base_db}{_sep}options={quote(f'-csearch_path={SCHEMA}')}"

with psycopg.connect(_base_db, autocommit=True) as _conn:
    _conn.execute(f'CREATE SCHEMA "{SCHEMA}"')

os.environ.update(
    REDIS_URL=REDIS_URL,
    DATABASE_URL=DATABASE_URL,
    REDIS_PREFIX=f"herald-test-{RUN_ID}",
    JWT_SECRET="test-secret-for-herald-tests-only-32bytes",
    LOG_LEVEL=os.environ.get("LOG_LEVEL", "WARNING"),
    SSE_HEARTBEAT_SECONDS="0.5",
    SSE_QUEUE_SIZE="64",
    DEMO_WORD_DELAY_SECONDS="0",
)

import pytest  # noqa: E402

from app.migrations import apply_migrations  # noqa: E402

apply_migrations()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.flushdb()
    finally:
        client.close()
    with psycopg.connect(_base_db, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def redis_client() -> redis.Redis:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def db() -> psycopg.Connection:
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        yield conn
