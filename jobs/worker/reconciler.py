"""The reconciler: PostgreSQL is the record of work, Redis may forget it.

Every accepted chat message and upload has its state in PostgreSQL. Every
``RECONCILE_INTERVAL_SECONDS`` the one leading reconciler (a Redis lock with a TTL,
renewed each pass, so one leader across every worker machine) compares the unfinished
work there with RQ, and judges each item's job:

- **live**: queued in its queue, scheduled for a retry, started by a live worker, or
  listed by a live chat worker as running even if RQ's record of it is gone
  (jobs/worker/liveness.py): left alone, so a job that still exists is never doubled;
- **dead worker**: started by a worker whose machine stopped vouching for it: RQ's own
  abandoned-job handling is run for that worker at once (``reap_abandoned``), which
  retries the job (or fails it) with RQ's retry count;
- **ended**: finished, failed, stopped or cancelled while PostgreSQL still says
  unfinished (the job's own failure path could not write, e.g. PostgreSQL was down):
  enqueued again;
- **missing**: no job at all (a Redis flush, failover or restart without persistence)
  or a queued job that is in no queue: enqueued again once a second pass, at least an
  interval later, still finds it missing (a reply in progress is listed by its worker
  by then; an import in progress is seen by its advisory lock).

Every enqueue is under the deterministic job id and first adds one to the item's
``attempts`` column, in a statement that also checks the item is still unfinished (a job
writes PostgreSQL before RQ records its end, so work done meanwhile is never re-run).
Past ``RECONCILE_MAX_ATTEMPTS`` the item ends ``failed`` with the code ``work_lost`` and
the client is told (``chat.error`` / ``upload.error``). Uploads whose body stopped
arriving ``UPLOAD_RECEIVE_TIMEOUT_SECONDS`` ago (their web process died) are deleted
with their chunks. Reading, counting, enqueueing and giving up are in
jobs/worker/recovery.py; docs/design.md "Reconciliation" has the reasoning.
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
from redis.exceptions import LockError
from redis.lock import Lock
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from core import jobkinds, settings
from core.jobkinds import JobKind
from core.logs import configure_logging
from core.redisdriver import driver_info
from jobs.worker import liveness
from jobs.worker.recovery import (
    CHAT,
    UPLOAD,
    give_up,
    import_running,
    job_id_for,
    remove_orphan_uploads,
    requeue,
    unfinished_chats,
    unfinished_uploads,
)

logger = logging.getLogger("herald.reconciler")

# What RQ will still run on its own.
_PENDING = {JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.CREATED}
_LOGGED_IDS = 20

Reap = Callable[[redis.Redis, str, list[str]], list[str]]


class Verdict(StrEnum):
    LIVE = "live"
    DEAD_WORKER = "dead_worker"
    ENDED = "ended"
    MISSING = "missing"


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
        running: set[str] | None = None
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
            report.orphans_removed = remove_orphan_uploads(conn)
            for kind, rows in ((CHAT, unfinished_chats(conn)), (UPLOAD, unfinished_uploads(conn))):
                listed: set[str] | None = None
                for row in rows:
                    work_id = str(row["id"])
                    seen.add(work_id)
                    if listed is None:
                        if running is None:
                            running = liveness.running_job_ids(self.redis)
                        listed = queued_ids(self.redis, kind.queue) | running
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
    """``listed``: job ids waiting in the queue, or that a live worker says it runs."""
    job_id = job_id_for(kind, work_id)
    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        # Redis lost RQ's record; a worker still running it says so within a third of
        # WORKER_LIVENESS_SECONDS, before a second pass would enqueue it again.
        return (Verdict.LIVE if job_id in listed else Verdict.MISSING), None
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
        settings.REDIS_URL, socket_connect_timeout=5, socket_timeout=10, driver_info=driver_info()
    )
    try:
        Reconciler(connection, str(settings.DATABASE_URL), reap).run(stop.is_set)
    finally:
        connection.close()
