"""The reconciler: PostgreSQL is the record of work, Redis may forget it.

Every accepted chat message and upload has its state in PostgreSQL. Every
``RECONCILE_INTERVAL_SECONDS`` the one leading reconciler (a Redis lock with a TTL,
renewed each pass, so one leader across every worker machine) compares the unfinished
work there with RQ, and judges each item's job:

- **live**: queued in its queue, scheduled for a retry, or started by a live worker
  (jobs/worker/liveness.py): left alone, so a job that still exists is never doubled;
- **dead worker**: started by a worker whose machine stopped vouching for it: RQ's own
  abandoned-job handling is run for that worker at once (``reap_abandoned``), which
  retries the job (or fails it) with RQ's retry count;
- **ended**: finished, failed, stopped or cancelled while PostgreSQL still says
  unfinished (the job's own failure path could not write, e.g. PostgreSQL was down):
  enqueued again;
- **missing**: no job at all (a Redis flush, failover or restart without persistence)
  or a queued job that is in no queue: enqueued again once a second pass, at least an
  interval later, still finds it missing (a job that was running when Redis forgot it
  has usually finished by then; an import in progress is seen by its advisory lock).

Every enqueue is under the deterministic job id and first adds one to the item's
``attempts`` column, in a statement that also checks the item is still unfinished (a job
writes PostgreSQL before RQ records its end, so work done meanwhile is never re-run).
Past ``RECONCILE_MAX_ATTEMPTS`` the item ends ``failed`` with the code ``work_lost`` and
the client is told (``chat.error`` / ``upload.error``). Uploads whose body stopped
arriving ``UPLOAD_RECEIVE_TIMEOUT_SECONDS`` ago (their web process died) are deleted
with their chunks. docs/design.md "Reconciliation" has the reasoning.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
import redis
from psycopg.types.json import Jsonb
from redis.exceptions import LockError
from redis.lock import Lock
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from core import events, jobkinds, jobmetrics, settings
from core.drafts import discard_draft
from core.eventclients import events_client_for
from core.eventkinds import EventKind
from core.history import invalidate_history
from core.jobkinds import FAILURE_TTL_SECONDS, RESULT_TTL_SECONDS, JobKind, chat_job_id
from core.logs import configure_logging
from core.principal import Identity
from core.replies import reply_id
from core.statuses import ACTIVE_UPLOAD_STATUSES, MessageStatus, UploadStatus
from jobs.worker import liveness

logger = logging.getLogger("herald.reconciler")

WORK_LOST = "work_lost"
WORK_LOST_MESSAGE = "The work was lost repeatedly (its queue or its worker failed); giving up."
# What RQ will still run on its own.
_PENDING = {JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED}
UPLOAD_ACTIVE = [str(status) for status in ACTIVE_UPLOAD_STATUSES]
_LOGGED_IDS = 20

Reap = Callable[[redis.Redis, str, list[str]], list[str]]


class Verdict(StrEnum):
    LIVE = "live"
    DEAD_WORKER = "dead_worker"
    ENDED = "ended"
    MISSING = "missing"


CHAT = jobkinds.CHAT
UPLOAD = jobkinds.CSV_IMPORT


def job_id_for(kind: JobKind, work_id: str) -> str:
    """The deterministic job id the web process enqueued the work under: a reply's is
    derived from its message, an import's is its upload's id (app/routes/uploads.py)."""
    return chat_job_id(work_id) if kind is CHAT else work_id


@dataclass
class Report:
    """What one pass did, by item id."""

    requeued: list[str] = field(default_factory=list)
    reaped: list[str] = field(default_factory=list)
    given_up: list[str] = field(default_factory=list)
    suspected: list[str] = field(default_factory=list)
    orphans_removed: list[str] = field(default_factory=list)


def leader_key() -> str:
    return f"{settings.REDIS_PREFIX}:reconciler:leader"


def upload_lock_key(upload_id: str) -> int:
    # The import's own advisory lock, held for its whole transaction (jobs/csvimport/job.py).
    from jobs.csvimport.job import lock_key

    return lock_key(upload_id)


class Reconciler:
    def __init__(
        self,
        connection: redis.Redis,
        dsn: str,
        reap: Reap,
        *,
        interval: float = settings.RECONCILE_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.redis = connection
        self.dsn = dsn
        self.reap = reap
        self.interval = interval
        self.clock = clock
        # Leadership lapses after three missed passes; renewed by every pass.
        self.lock = Lock(
            connection, leader_key(), timeout=max(1.0, 3 * interval), thread_local=False
        )
        self.leading = False
        # Items seen missing, and when: enqueued again only when still missing an interval on.
        self.suspects: dict[str, float] = {}

    # --- Leadership -----------------------------------------------------------------------
    def lead(self) -> bool:
        """Take or keep the leader lock; False when another reconciler holds it."""
        if self.leading:
            try:
                self.lock.reacquire()
                return True
            except LockError:  # lapsed (a long stall) or lost with Redis's data
                self.leading = False
                logger.info("reconciler leadership lost")
        self.leading = bool(self.lock.acquire(blocking=False))
        if self.leading:
            logger.info("this reconciler leads")
        return self.leading

    def resign(self) -> None:
        if self.leading:
            with contextlib.suppress(LockError, redis.RedisError):
                self.lock.release()
            self.leading = False

    def run(self, stopping: Callable[[], bool]) -> None:
        """Pass after pass until ``stopping()``; failures of Redis or PostgreSQL only
        delay the next pass (either may be down: that is what this is for)."""
        try:
            while not stopping():
                started = self.clock()
                try:
                    if self.lead():
                        report = self.reconcile()
                        log_report(report)
                except (redis.RedisError, psycopg.Error, OSError) as exc:
                    logger.warning("reconcile pass failed: %s", exc)
                self.sleep(self.interval - (self.clock() - started), stopping)
        finally:
            self.resign()

    def sleep(self, seconds: float, stopping: Callable[[], bool]) -> None:
        deadline = self.clock() + max(0.0, seconds)
        while not stopping() and self.clock() < deadline:
            time.sleep(min(0.2, max(0.0, deadline - self.clock())))

    # --- One pass -----------------------------------------------------------------------------
    def reconcile(self) -> Report:
        report = Report()
        seen: set[str] = set()
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            report.orphans_removed = remove_orphan_uploads(conn)
            for kind, rows in ((CHAT, unfinished_chats(conn)), (UPLOAD, unfinished_uploads(conn))):
                listed: set[str] | None = None
                for row in rows:
                    work_id = str(row["id"])
                    seen.add(work_id)
                    if listed is None:
                        listed = queued_ids(self.redis, kind.queue)
                    verdict, job = judge(self.redis, kind, work_id, listed)
                    if (
                        verdict is Verdict.MISSING
                        and kind is UPLOAD
                        and import_running(conn, work_id)
                    ):
                        verdict = Verdict.LIVE
                    self.act(conn, kind, row, verdict, job, report)
        # A suspect not seen this pass has finished (or was given up): forget it.
        for work_id in list(self.suspects):
            if work_id not in seen:
                del self.suspects[work_id]
        return report

    def act(
        self,
        conn: psycopg.Connection[Any],
        kind: JobKind,
        row: dict[str, Any],
        verdict: Verdict,
        job: Job | None,
        report: Report,
    ) -> None:
        work_id = str(row["id"])
        if verdict is Verdict.LIVE:
            self.suspects.pop(work_id, None)
            return
        if verdict is Verdict.DEAD_WORKER:
            assert job is not None and job.worker_name
            self.reap(self.redis, job.worker_name, jobkinds.queue_names())
            liveness.withdraw(self.redis, job.worker_name)
            report.reaped.append(work_id)
            # RQ retried (or failed) it; if its execution record had lapsed RQ could not,
            # and the next pass finds it started by a dead worker again, then ended.
            if job.get_status(refresh=True) is not JobStatus.STARTED:
                return
            verdict = Verdict.ENDED
        if verdict is Verdict.MISSING:
            first = self.suspects.setdefault(work_id, self.clock())
            if self.clock() - first < self.interval:
                report.suspected.append(work_id)
                return
        self.suspects.pop(work_id, None)
        if requeue(conn, self.redis, kind, work_id, job):
            report.requeued.append(work_id)
        elif give_up(conn, self.redis, kind, row):
            report.given_up.append(work_id)


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


# --- Judging a job ------------------------------------------------------------------------------
def queued_ids(connection: redis.Redis, queue_name: str) -> set[str]:
    """Every job id waiting in the queue, or just taken from it by a worker (RQ moves a
    job to the intermediate list before it marks it started)."""
    queue = Queue(queue_name, connection=connection)
    with connection.pipeline(transaction=False) as pipe:
        pipe.lrange(queue.key, 0, -1)
        pipe.lrange(queue.intermediate_queue_key, 0, -1)
        waiting, taken = pipe.execute()
    return {m.decode() if isinstance(m, bytes) else str(m) for m in [*waiting, *taken]}


def judge(
    connection: redis.Redis, kind: JobKind, work_id: str, listed: set[str]
) -> tuple[Verdict, Job | None]:
    job_id = job_id_for(kind, work_id)
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return Verdict.MISSING, None
    status = job.get_status(refresh=False)
    if status is JobStatus.QUEUED:
        return (Verdict.LIVE if job_id in listed else Verdict.MISSING), job
    if status in _PENDING:
        return Verdict.LIVE, job
    if status is JobStatus.STARTED:
        if not job.worker_name or liveness.is_alive(connection, job.worker_name):
            return Verdict.LIVE, job
        return Verdict.DEAD_WORKER, job
    return Verdict.ENDED, job  # finished, failed, stopped, cancelled (or unknown)


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


def log_report(report: Report) -> None:
    for what, ids in (
        ("uploads whose body never finished, removed", report.orphans_removed),
        ("work on dead workers, handed back to RQ", report.reaped),
        ("work with no live job, enqueued again", report.requeued),
    ):
        if ids:
            logger.warning("%s: %d (%s)", what, len(ids), ", ".join(ids[:_LOGGED_IDS]))
    if report.suspected:
        logger.info("work with no job, enqueued next pass if still so: %d", len(report.suspected))


def run_reconciler(reap: Reap) -> None:
    """A reconciler process's body (jobs/worker/supervisor.py starts one per machine);
    SIGTERM or SIGINT ends it after the step in hand, giving up the leadership."""
    configure_logging()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: stop.set())
    connection = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=10
    )
    try:
        Reconciler(connection, str(settings.DATABASE_URL), reap).run(stop.is_set)
    finally:
        connection.close()
