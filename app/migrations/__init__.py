"""Ordered SQL migrations, applied once each by ``python -m app.migrations``.

Run by the Procfile's ``release`` phase and by the dev start command. A PostgreSQL
advisory lock serialises concurrent runs (two releases racing on one database).
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg

from core import settings

logger = logging.getLogger("herald.migrations")

MIGRATIONS_DIR = Path(__file__).parent
_LOCK_ID = 0x6865_7261  # "hera": any constant shared by every Herald process


def pending(applied: set[str]) -> list[Path]:
    return [p for p in sorted(MIGRATIONS_DIR.glob("*.sql")) if p.stem not in applied]


def apply_migrations(conninfo: str | None = None) -> list[str]:
    """Apply every migration not yet applied; returns the names applied now."""
    done: list[str] = []
    with psycopg.connect(conninfo or str(settings.DATABASE_URL), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_ID,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {row[0] for row in conn.execute("SELECT name FROM schema_migrations")}
            # A migration's RAISE NOTICE tells the operator of a choice it made for this
            # server (e.g. 004: no LZ4, so upload chunks keep pglz).
            conn.add_notice_handler(_log_notice)
            for path in pending(applied):
                with conn.transaction():
                    conn.execute(path.read_text())
                    conn.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.stem,))
                logger.info("applied migration %s", path.stem)
                done.append(path.stem)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_ID,))
    # Outside the advisory lock, never under it: the checkpointer's migrations use
    # CREATE INDEX CONCURRENTLY, which waits for every older transaction in the
    # database, including other runs waiting on that lock: a deadlock PostgreSQL
    # cannot see (PostgreSQL docs, CREATE INDEX, "Building Indexes Concurrently").
    setup_checkpointer(conninfo)
    return done


def _log_notice(notice: psycopg.errors.Diagnostic) -> None:
    if notice.severity_nonlocalized == "NOTICE" and notice.message_primary:
        logger.info("migration notice: %s", notice.message_primary)


def setup_checkpointer(conninfo: str | None = None) -> None:
    """Create or upgrade the LangGraph checkpointer's tables (chat memory).

    Its own migration list, idempotent; it uses unqualified names, so it honours the
    connection's search_path like the SQL files above.
    """
    # Imported here: only the release phase needs langgraph, not the web process.
    from langgraph.checkpoint.postgres import PostgresSaver
    from psycopg.rows import dict_row

    with psycopg.connect(
        conninfo or str(settings.DATABASE_URL),
        autocommit=True,
        prepare_threshold=0,
        row_factory=dict_row,
    ) as conn:
        PostgresSaver(conn).setup()
