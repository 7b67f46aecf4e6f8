"""A test run touches only what it writes (issue 10 item 2): its own key prefix in the
Redis database named by ``REDIS_URL`` (rq's keys included) and its own PostgreSQL
schema. Other applications' data on the same servers, in any database, survives."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from rq import Queue

from core import settings
from tests.conftest import BASE_DATABASE_URL, BASE_REDIS_URL

ROOT = Path(__file__).resolve().parents[1]
# The small file run as a whole suite below: it writes app keys, rq queues, jobs,
# workers and registries, and PostgreSQL rows.
SUITE_FILE = "tests/test_chat_worker.py"


def redis_db_url(db: int) -> str:
    base, _, last = BASE_REDIS_URL.rpartition("/")
    root = base if last.isdigit() and base.count("/") >= 2 else BASE_REDIS_URL.rstrip("/")
    return f"{root}/{db}"


def base_db_number() -> int:
    last = BASE_REDIS_URL.rpartition("/")[2]
    return int(last) if last.isdigit() else 0


def unclaimed_db() -> int:
    """The database an earlier version of conftest.py would have taken, and flushed."""
    for db in range(1, 16):
        client = redis.Redis.from_url(redis_db_url(db))
        try:
            if not client.exists("herald-test:claim"):
                return db
        finally:
            client.close()
    return 15


@pytest.fixture
def planted() -> Iterator[dict[int, dict[str, str]]]:
    """Foreign keys in several databases; in the run's own database, some that look
    like rq's and like another test run's. Removed afterwards (we wrote them)."""
    tag = uuid.uuid4().hex[:8]
    own = base_db_number()
    plan = {
        own: {
            f"foreign-app-{tag}": "keep",
            f"rq:queue:foreign-{tag}": "keep",
            f"herald-test-other{tag}:events": "keep",
        },
        unclaimed_db(): {f"foreign-app-{tag}": "keep"},
        15: {f"foreign-app-{tag}:db15": "keep"},
    }
    for db, keys in plan.items():
        client = redis.Redis.from_url(redis_db_url(db))
        try:
            client.mset(keys)
        finally:
            client.close()
    yield plan
    for db, keys in plan.items():
        client = redis.Redis.from_url(redis_db_url(db))
        try:
            client.delete(*keys)
        finally:
            client.close()


@pytest.fixture
def foreign_schema() -> Iterator[str]:
    schema = f"foreign_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        conn.execute(f'CREATE TABLE "{schema}".keep (x int)')
        conn.execute(f'INSERT INTO "{schema}".keep VALUES (1)')
    yield schema
    with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run_suite(*args: str) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Run pytest on SUITE_FILE in a subprocess with a run id of its own; (run id, result)."""
    run_id = f"iso{uuid.uuid4().hex[:7]}"
    env = {
        **os.environ,
        "REDIS_URL": BASE_REDIS_URL,
        "DATABASE_URL": BASE_DATABASE_URL,
        "HERALD_TEST_RUN_ID": run_id,
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", SUITE_FILE, "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return run_id, done


def schema_exists(run_id: str) -> bool:
    with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (f"test_{run_id}",)
        ).fetchone()
    return found != (0,)


def test_issue10_suite_run_leaves_foreign_data(
    planted: dict[int, dict[str, str]], foreign_schema: str
) -> None:
    run_id, done = run_suite("-q")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for db, keys in planted.items():
        client = redis.Redis.from_url(redis_db_url(db))
        try:
            assert client.mget(list(keys)) == [b"keep"] * len(keys), f"DB {db} lost data"
        finally:
            client.close()
    client = redis.Redis.from_url(BASE_REDIS_URL)
    try:
        # And the run cleaned up after itself: nothing left under its prefix.
        assert list(client.scan_iter(match=f"herald-test-{run_id}:*", count=1000)) == []
    finally:
        client.close()
    with psycopg.connect(BASE_DATABASE_URL, autocommit=True) as conn:
        assert conn.execute(f'SELECT x FROM "{foreign_schema}".keep').fetchall() == [(1,)]
    assert not schema_exists(run_id)


def test_a_run_stopped_by_a_usage_error_drops_its_schema() -> None:
    # conftest creates the schema when pytest imports it, before the arguments are checked.
    run_id, done = run_suite("--no-such-option")
    assert done.returncode == 4, done.stdout[-3000:] + done.stderr[-3000:]  # usage error
    assert not schema_exists(run_id)


def test_issue10_rq_keys_sit_under_the_run_prefix(redis_client: redis.Redis) -> None:
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    job = queue.enqueue("builtins.print", "never run")
    try:
        for key in (queue.key, job.key, queue.started_job_registry.key, queue.redis_queues_keys):
            name = key.decode() if isinstance(key, bytes) else key
            assert name.startswith(f"{settings.REDIS_PREFIX}:"), name
    finally:
        job.delete()


def test_the_fault_suites_private_redis_is_proven_before_use(
    tmp_path: Path, redis_client: redis.Redis
) -> None:
    """No test empties a Redis database: the fault suite's "Redis lost its data" unlinks
    the run's own keys, and only on the private server it started. Another program's
    Redis answering on that port fails the proof (password and PID)."""
    from tests.support.servers import RedisServer

    server = RedisServer(tmp_path)
    server.start()
    try:
        assert server.ping()
        server.port = redis_client.connection_pool.connection_kwargs["port"]
        assert not server.ping()  # as if another program's Redis held "our" port
    finally:
        server.stop()
