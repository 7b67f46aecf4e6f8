"""Chat messages stranded by a restart, found and enqueued again when workers start.

A message is accepted as a row with status ``queued`` plus an RQ job. A restart can
lose the job and leave the row waiting for ever: a Redis without persistence forgets
its queues, and a worker stopped mid-reply (a second Ctrl-C, a crash) leaves its job
``started`` for a worker that no longer exists. The supervisor first has RQ retry or
fail those jobs (``reap_orphans``); then every message still ``queued`` whose job is
gone or ended is enqueued again. The chat job is idempotent (jobs/chat/job.py), so
a message answered meanwhile is only announced again; a reply that cannot be made
ends in ``chat.error`` through the job's own failure path. A general reconciler of
jobs and rows is issue 13; this covers the restart path.
"""

from __future__ import annotations

import contextlib
import logging

import psycopg
import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from core import settings
from core.jobkinds import CHAT, FAILURE_TTL_SECONDS, RESULT_TTL_SECONDS, chat_job_id
from core.statuses import MessageStatus

logger = logging.getLogger("herald.recovery")

# A job in one of these states will still run; any other (or none) will not.
_PENDING = {JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED, JobStatus.STARTED}
_LOCK_SECONDS = 60


def stranded_messages(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    """User messages still waiting for a reply, older than the grace period (a message
    accepted this instant may not have its job enqueued yet)."""
    rows = conn.execute(
        "SELECT id FROM messages WHERE role = 'user' AND status = %s"
        " AND created_at < now() - make_interval(secs => %s) ORDER BY created_at",
        (MessageStatus.QUEUED, settings.CHAT_RECOVERY_GRACE_SECONDS),
    ).fetchall()
    return [str(row[0]) for row in rows]


def has_pending_job(connection: redis.Redis, message_id: str) -> bool:
    try:
        job = Job.fetch(chat_job_id(message_id), connection=connection)
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) in _PENDING


def recover_chats(
    connection: redis.Redis, database_url: str, queue_name: str | None = None
) -> list[str]:
    """Enqueue again every stranded message; returns their ids. One supervisor at a
    time (a lock in Redis): two starting together would only enqueue duplicates."""
    lock = f"{settings.REDIS_PREFIX}:chat:recovery"
    if not connection.set(lock, "1", nx=True, ex=_LOCK_SECONDS):
        return []
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            candidates = stranded_messages(conn)
        queue = Queue(queue_name or CHAT.queue, connection=connection)
        recovered = [m for m in candidates if not has_pending_job(connection, m)]
        for message_id in recovered:
            _enqueue(queue, message_id)
        return recovered
    finally:
        connection.delete(lock)


def _enqueue(queue: Queue, message_id: str) -> None:
    job_id = chat_job_id(message_id)
    # An ended job of the same id sits in a registry that would later delete the hash
    # of the new one with it: drop it first.
    with contextlib.suppress(NoSuchJobError):
        Job.fetch(job_id, connection=queue.connection).delete()
    queue.enqueue_call(
        CHAT.target,
        args=(message_id,),
        job_id=job_id,
        timeout=CHAT.timeout_seconds,
        retry=CHAT.retry(),
        result_ttl=RESULT_TTL_SECONDS,
        failure_ttl=FAILURE_TTL_SECONDS,
    )
