"""Fixtures of the fault suite: one private Redis + PostgreSQL for the session (so a
test can stop and restart them), and a fresh set of processes for each test."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.faults.stack import Stack, private_stack


@pytest.fixture(scope="session")
def private() -> Iterator[Stack]:
    with private_stack() as stack:
        yield stack


@pytest.fixture
def stack(private: Stack) -> Iterator[Stack]:
    """The private servers, running; every process a test starts is stopped after it."""
    if private.redis.proc is None:
        private.redis.start()
    if not private.pg.ready():
        private.pg.start()
    # A clean Redis per test: queued jobs left by an earlier test (schemathesis queues
    # thousands of chats) would otherwise sit ahead of this test's jobs.
    private.wipe_private_redis()
    # ...and their record in PostgreSQL ended with them, or a worker's reconciler would
    # enqueue that work again (it reads PostgreSQL as the record of work).
    with psycopg.connect(private.pg.url, autocommit=True) as conn:
        conn.execute("UPDATE messages SET status = 'failed' WHERE status = 'queued'")
        conn.execute(
            "UPDATE uploads SET status = 'failed'"
            " WHERE status IN ('queued', 'validating', 'processing')"
        )
        conn.execute("DELETE FROM uploads WHERE status = 'receiving'")
    try:
        yield private
    finally:
        private.stop_all()
