"""Enqueue RQ jobs from the web process, by dotted path (``app/`` never imports ``jobs/``)."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import redis
from rq import Queue, Retry
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.rate_limit import RateLimit

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

    def keys(self, *names: str) -> dict[str, dict[str, str]]:
        """Redis keys of each queue's list and registries, for /metrics."""
        keys = {}
        for name in names:
            queue = self.queue(name)
            keys[name] = {
                "queued": queue.key,
                "started": queue.started_job_registry.key,
                "failed": queue.failed_job_registry.key,
                "scheduled": queue.scheduled_job_registry.key,
            }
        return keys

    async def enqueue(
        self,
        queue_name: str,
        func_path: str,
        *args: Any,
        job_id: str | None = None,
        timeout: int | None = None,
        retries: int = 0,
        at_front: bool = False,
        limit: tuple[str, int] | None = None,
    ) -> str:
        """``limit``: (key, n) — at most n jobs of this key queued-and-running at once;
        the rest wait as ``rate_limited`` (RQ's RateLimit) and run as slots free."""
        queue = self.queue(queue_name)
        retry = Retry(max=retries, interval=[1, 5, 15][:retries]) if retries else None

        def enqueue_limited() -> Job:
            # RQ promotes waiting jobs inside its own transaction, so a rate-limited job
            # cannot ride on our pipeline (rq Queue.enqueue_job).
            assert limit is not None
            return queue.enqueue_call(
                func_path,
                args=args,
                job_id=job_id,
                timeout=timeout,
                retry=retry,
                result_ttl=3600,
                failure_ttl=7 * 86400,
                at_front=at_front,
                rate_limit=RateLimit(key=limit[0], concurrency=max(1, limit[1])),
            )

        def enqueue() -> Job:
            # Through our own pipeline, so RQ's writes (queue registration, job hash,
            # RPUSH) go in one round trip instead of two (rq Queue.enqueue_job runs the
            # queue-set SADD on its own pipeline when none is given).
            with self._client.pipeline() as pipe:
                job = queue.enqueue_call(
                    func_path,
                    args=args,
                    job_id=job_id,
                    timeout=timeout,
                    retry=retry,
                    result_ttl=3600,
                    failure_ttl=7 * 86400,
                    at_front=at_front,
                    pipeline=pipe,
                )
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
