"""Enqueue RQ jobs from the web process by kind (core/jobkinds.py): RQ calls the kind's
target by its dotted path, so ``app/`` never imports ``jobs/``."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import redis
from rq import Queue
from rq.job import Job

from core.jobkinds import FAILURE_TTL_SECONDS, RESULT_TTL_SECONDS, JobKind, queue_names


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

    async def enqueue(self, kind: JobKind, *args: Any, job_id: str) -> str:
        """Queue one job of ``kind``; ``job_id`` is chosen by the caller so that a
        duplicate enqueue of the same work is the same job."""
        queue = self.queue(kind.queue)

        def enqueue() -> Job:
            # Through our own pipeline, so RQ's writes (queue registration, job hash,
            # RPUSH) go in one round trip instead of two (rq Queue.enqueue_job runs the
            # queue-set SADD on its own pipeline when none is given).
            with self._client.pipeline() as pipe:
                job = queue.enqueue_call(
                    kind.target,
                    args=args,
                    job_id=job_id,
                    timeout=kind.timeout_seconds,
                    retry=kind.retry(),
                    result_ttl=RESULT_TTL_SECONDS,
                    failure_ttl=FAILURE_TTL_SECONDS,
                    pipeline=pipe,
                )
                pipe.execute()
            return job

        job = await anyio.to_thread.run_sync(enqueue)
        return str(job.id)
