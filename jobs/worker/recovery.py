"""Recovering work Redis lost: the unfinished items PostgreSQL records, enqueued again
under their deterministic job ids, or ended ``work_lost`` when their attempts ran out.

The reconciler (jobs/worker/reconciler.py) decides which item needs this; here is how
each is read, counted and enqueued, or given up. Every enqueue first adds one to the
item's ``attempts`` in a statement that also checks the item is still unfinished, so
work that ended meanwhile is never run again (docs/design.md "Reconciliation").
"""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import redis
from psycopg.types.json import Jsonb
from rq import Queue
from rq.job import Job

from core import events, jobkinds, jobmetrics, settings
from core.drafts import discard_draft
from core.eventclients import events_client_for
from core.eventkinds import EventKind
from core.history import invalidate_history
from core.jobkinds import FAILURE_TTL_SECONDS, RESULT_TTL_SECONDS, JobKind, chat_job_id
from core.principal import Identity
from core.replies import reply_id
from core.statuses import ACTIVE_UPLOAD_STATUSES, MessageStatus, UploadStatus

logger = logging.getLogger("herald.reconciler")

WORK_LOST = "work_lost"
WORK_LOST_MESSAGE = "The work was lost repeatedly (its queue or its worker failed); giving up."
UPLOAD_ACTIVE = [str(status) for status in ACTIVE_UPLOAD_STATUSES]

CHAT = jobkinds.CHAT
UPLOAD = jobkinds.CSV_IMPORT


def job_id_for(kind: JobKind, work_id: str) -> str:
    """The deterministic job id the web process enqueued the work under: a reply's is
    derived from its message, an import's is its upload's id (app/routes/uploads.py)."""
    return chat_job_id(work_id) if kind is CHAT else work_id


def upload_lock_key(upload_id: str) -> int:
    # The import's own advisory lock, held for its whole transaction (jobs/csvimport/job.py).
    from jobs.csvimport.job import lock_key

    return lock_key(upload_id)


# --- Reading the record ------------------------------------------------------------------------
def unfinished_chats(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """User messages still waiting for their reply, past the grace period, oldest first."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT m.id, m.conversation_id, c.tenant, c.user_id FROM messages m"
            " JOIN conversations c ON c.id = m.conversation_id"
            " WHERE m.role = 'user' AND m.status = %s"
            " AND m.created_at < now() - make_interval(secs => %s)"
            " ORDER BY m.created_at LIMIT %s",
            (MessageStatus.QUEUED, settings.RECONCILE_GRACE_SECONDS, settings.RECONCILE_BATCH),
        )
        return cur.fetchall()


def unfinished_uploads(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(
            "SELECT id, tenant, user_id FROM uploads WHERE status = ANY(%s)"
            " AND updated_at < now() - make_interval(secs => %s)"
            " ORDER BY updated_at LIMIT %s",
            (UPLOAD_ACTIVE, settings.RECONCILE_GRACE_SECONDS, settings.RECONCILE_BATCH),
        )
        return cur.fetchall()


def import_running(conn: psycopg.Connection[Any], upload_id: str) -> bool:
    """An import transaction holds the upload's advisory lock (jobs/csvimport/job.py); a
    killed one's lock went with its connection."""
    with conn.transaction():
        row = conn.execute(
            "SELECT pg_try_advisory_xact_lock(%s)", (upload_lock_key(upload_id),)
        ).fetchone()
    return not (row and row[0])


def remove_orphan_uploads(conn: psycopg.Connection[Any]) -> list[str]:
    """Uploads whose body stopped arriving long ago: their web process died mid-body
    (a live one deletes a refused body itself, app/upload_body.py). Chunks cascade."""
    rows = conn.execute(
        "DELETE FROM uploads WHERE id IN (SELECT id FROM uploads WHERE status = %s"
        " AND updated_at < now() - make_interval(secs => %s) LIMIT %s) RETURNING id",
        (
            UploadStatus.RECEIVING,
            settings.UPLOAD_RECEIVE_TIMEOUT_SECONDS,
            settings.RECONCILE_BATCH,
        ),
    ).fetchall()
    return [str(r[0]) for r in rows]


# --- Acting ---------------------------------------------------------------------------------------
_COUNT_ATTEMPT = {
    # Only while the work is unfinished: a job that ended meanwhile wrote its end first.
    CHAT.name: "UPDATE messages SET attempts = attempts + 1"
    " WHERE id = %s AND role = 'user' AND status = ANY(%s) RETURNING attempts",
    UPLOAD.name: "UPDATE uploads SET attempts = attempts + 1, updated_at = now()"
    " WHERE id = %s AND status = ANY(%s) RETURNING attempts",
}
_UNFINISHED = {CHAT.name: [str(MessageStatus.QUEUED)], UPLOAD.name: UPLOAD_ACTIVE}


def requeue(
    conn: psycopg.Connection[Any],
    connection: redis.Redis,
    kind: JobKind,
    work_id: str,
    old: Job | None,
) -> bool:
    """Count an attempt and enqueue the job again, in one transaction (an enqueue that
    fails counts nothing); False when no attempt is left or the work finished meanwhile."""
    enqueued = False
    with conn.transaction():
        row = conn.execute(_COUNT_ATTEMPT[kind.name], (work_id, _UNFINISHED[kind.name])).fetchone()
        if row is None or row[0] > settings.RECONCILE_MAX_ATTEMPTS:
            raise psycopg.Rollback()  # leaves the block; the count is undone
        enqueue(connection, kind, work_id, old)
        enqueued = True
    if enqueued:
        jobmetrics.record_job_metric(connection, "herald_reconciler_requeued_total", kind=kind.name)
    return enqueued


def enqueue(connection: redis.Redis, kind: JobKind, work_id: str, old: Job | None) -> None:
    """The same job the web process enqueues (app/jobqueue.py), under the same id."""
    if old is not None:
        # An ended job sits in a registry that would later delete the new job's hash
        # along with its own.
        old.delete()
    Queue(kind.queue, connection=connection).enqueue_call(
        kind.target,
        args=(work_id,),
        job_id=job_id_for(kind, work_id),
        timeout=kind.timeout_seconds,
        retry=kind.retry(),
        result_ttl=RESULT_TTL_SECONDS,
        failure_ttl=FAILURE_TTL_SECONDS,
    )


def give_up(
    conn: psycopg.Connection[Any], connection: redis.Redis, kind: JobKind, row: dict[str, Any]
) -> bool:
    """End the work ``failed`` with ``work_lost`` and tell its client; False when it
    finished meanwhile."""
    work_id = str(row["id"])
    data = {"code": WORK_LOST, "message": WORK_LOST_MESSAGE}
    # Events and caches are keyed by the pair (tenant, user), as the jobs key them.
    owner = Identity.from_tenant(row["tenant"], row["user_id"]).key
    if kind is CHAT:
        with conn.transaction():
            ended = conn.execute(
                "UPDATE messages SET status = %s"
                " WHERE id = %s AND role = 'user' AND status = %s RETURNING id",
                (MessageStatus.FAILED, work_id, MessageStatus.QUEUED),
            ).fetchone()
            if ended is None:
                return False
            # The reply row says why, as a crashed job's does (jobs/chat/job.py).
            conn.execute(
                "INSERT INTO messages (id, conversation_id, role, text, status, error_code,"
                " reply_to) VALUES (%s, %s, 'assistant', '', %s, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status,"
                " error_code = EXCLUDED.error_code",
                (
                    reply_id(work_id),
                    row["conversation_id"],
                    MessageStatus.FAILED,
                    WORK_LOST,
                    work_id,
                ),
            )
        conversation_id = str(row["conversation_id"])
        discard_draft(connection, work_id)  # a cut reply's text so far (core/drafts.py)
        invalidate_history(connection, owner, conversation_id)
        base = {"conversation_id": conversation_id, "message_id": work_id}
        with events_client_for(connection) as bus:  # rare: a client of its own is fine
            events.publish_event(bus, EventKind.CHAT_ERROR, {**base, **data}, owner=owner)
    else:
        ended = conn.execute(
            "UPDATE uploads SET status = %s, error = %s, updated_at = now()"
            " WHERE id = %s AND status = ANY(%s) RETURNING id",
            (UploadStatus.FAILED, Jsonb(data), work_id, UPLOAD_ACTIVE),
        ).fetchone()
        if ended is None:
            return False
        conn.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (work_id,))
        where = {"owner": owner, "upload_id": work_id}
        upload = {"upload_id": work_id}
        status = {**upload, "status": UploadStatus.FAILED}
        with events_client_for(connection) as bus:
            events.publish_event(bus, EventKind.UPLOAD_STATUS, status, **where)
            events.publish_event(bus, EventKind.UPLOAD_ERROR, {**upload, **data}, **where)
    jobmetrics.record_job_metric(connection, "herald_reconciler_given_up_total", kind=kind.name)
    logger.error(
        "%s %s lost %d times; ended with %s",
        kind.name,
        work_id,
        settings.RECONCILE_MAX_ATTEMPTS,
        WORK_LOST,
    )
    return True
