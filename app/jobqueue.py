"""Enqueue RQ jobs from the web process by kind (core/jobkinds.py): RQ calls the kind's
target by its dotted path, so ``app/`` never imports ``jobs/``."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimit

from core.jobkinds import FAILURE_TTL_SECONDS, RESULT_TTL_SECONDS, JobKind, queue_names

# A job in one of these has not started: cancelling it means it never runs.
_WAITING = {
    JobStatus.QUEUED,
    JobStatus.SCHEDULED,
    JobStatus.DEFERRED,
    JobStatus.RATE_LIMITED,
    JobStatus.CREATED,
}


class JobQueue:
    """RQ is synchronous: enqueue on a small sync Redis pool, off the event loop."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._queues: dict[str, Queue] = {}

    def queue(self, name: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:
            queue = self._queues[name] = Queue(name, connection=self._client)
        return queue

    def keys(self) -> dict[str, dict[str, str]]:
        """Redis keys of every job queue's list and registries, for /metrics."""
        keys = {}
        for name in queue_names():
            queue = self.queue(name)
            keys[name] = {
                "queued": queue.key,
                "started": queue.started_job_registry.key,
                "failed": queue.failed_job_registry.key,
                "scheduled": queue.scheduled_job_registry.key,
            }
        return keys

    async def enqueue(
        self, kind: JobKind, *args: Any, job_id: str, limit: tuple[str, int] | None = None
    ) -> str:
        """Queue one job of ``kind``; ``job_id`` is chosen by the caller so that a
        duplicate enqueue of the same work is the same job. ``limit``: (key, n) — at most
        n jobs of this key queued-and-running at once; the rest wait as ``rate_limited``
        (RQ's RateLimit) and run as slots free."""
        queue = self.queue(kind.queue)
        options: dict[str, Any] = {
            "args": args,
            "job_id": job_id,
            "timeout": kind.timeout_seconds,
            "retry": kind.retry(),
            "result_ttl": RESULT_TTL_SECONDS,
            "failure_ttl": FAILURE_TTL_SECONDS,
        }

        def enqueue_limited() -> Job:
            # RQ promotes waiting jobs inside its own transaction, so a rate-limited job
            # cannot ride on our pipeline (rq Queue.enqueue_job).
            assert limit is not None
            rate_limit = RateLimit(key=limit[0], concurrency=max(1, limit[1]))
            return queue.enqueue_call(kind.target, rate_limit=rate_limit, **options)

        def enqueue() -> Job:
            # Through our own pipeline, so RQ's writes (queue registration, job hash,
            # RPUSH) go in one round trip instead of two (rq Queue.enqueue_job runs the
            # queue-set SADD on its own pipeline when none is given).
            with self._client.pipeline() as pipe:
                job = queue.enqueue_call(kind.target, pipeline=pipe, **options)
                pipe.execute()
            return job

        job = await anyio.to_thread.run_sync(enqueue_limited if limit else enqueue)
        return str(job.id)

    async def cancel(self, job_id: str) -> JobStatus | None:
        """Stop a job wherever it is: a waiting one never runs (RQ's cancel); a running
        one gets RQ's ``stop-job`` command on its worker's channel. Returns the status
        the job had, or None when Redis no longer knows it."""

        def cancel() -> JobStatus | None:
            try:
                job = Job.fetch(job_id, connection=self._client)
            except NoSuchJobError:
                return None
            status = job.get_status()
            try:
                if status in _WAITING:
                    job.cancel()
                elif status == JobStatus.STARTED:
                    send_stop_job_command(self._client, job_id)
            except InvalidJobOperation:
                pass  # it moved on meanwhile; the job's own cancel check covers it
            return status

        return await anyio.to_thread.run_sync(cancel)
