"""A benchmark run's own corner of the shared Redis and PostgreSQL.

Like the test run (tests/conftest.py): its keys under one prefix (RQ's too, through
``RQ_KEY_PREFIX``), its own chat queue, its own schema; removed at the end by prefix and
by schema, never by flushing. Settings are read once at import, so ``isolate_run`` runs
before any ``app``, ``core``, ``jobs`` or ``rq`` import; the processes a bench starts
inherit the environment, and with it the run.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

import psycopg
import redis

from app.dev import embedded  # reads no settings


@dataclass(frozen=True)
class BenchRun:
    run: str
    prefix: str
    schema: str
    base_database_url: str

    def create_schema(self) -> None:
        with psycopg.connect(self.base_database_url, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{self.schema}"')

    def remove(self) -> None:
        """Unlink the run's keys (SCAN by prefix) and drop its schema."""
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        try:
            keys = list(client.scan_iter(match=f"{self.prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.unlink(*keys[i : i + 500])
        finally:
            client.close()
        with psycopg.connect(self.base_database_url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


def isolate_run(name: str, **settings: str) -> BenchRun:
    """Point this process (and its children) at run-owned keys, queue and schema, with a
    loopback OpenAI-compatible provider and no request limits; ``settings`` add to it."""
    tag = name.upper()
    run = os.environ.setdefault(f"BENCH_{tag}_RUN", secrets.token_hex(4))
    embedded.ensure_services()
    base = os.environ.setdefault(f"BENCH_{tag}_DATABASE_URL", os.environ["DATABASE_URL"])
    prefix, schema = f"bench-{name}-{run}", f"bench_{run}"
    sep = "&" if "?" in base else "?"
    os.environ.update(
        DATABASE_URL=f"{base}{sep}options=-csearch_path%3D{schema}",
        REDIS_PREFIX=prefix,
        RQ_KEY_PREFIX=f"{prefix}:rq",
        # Its own queue: workers of a dev stack on the same Redis never see bench jobs.
        CHAT_QUEUE=prefix,
        JWT_SECRET=os.environ.get("JWT_SECRET") or "bench-" + secrets.token_hex(24),
        LOG_LEVEL="WARNING",
        CHAT_RATE_LIMIT="1000000/hour",
        LLM_PROVIDER="openai",
        LLM_MODEL="loopback-bench",
        LLM_API_KEY="not-a-key",
        **settings,
    )
    return BenchRun(run, prefix, schema, base)
