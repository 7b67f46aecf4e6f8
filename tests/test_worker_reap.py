"""``jobs.worker.reap_abandoned``: the jobs of a dead worker are retried at once (or
failed when no retry is left), the jobs of live workers are not touched. Real Redis,
RQ's own registries; tests/faults/test_worker_kill.py does the same with SIGKILL."""

from __future__ import annotations

import uuid

import redis
from rq import Queue, Retry
from rq.executions import Execution
from rq.job import Job, JobStatus

from core import jobkinds
from jobs.worker.supervisor import reap_abandoned


def started(queue: Queue, worker_name: str, retries: int) -> Job:
    """A job as a worker leaves it when it starts running it (then dies)."""
    job = queue.enqueue_call(
        jobkinds.CHAT.target,
        args=("x",),
        retry=Retry(max=retries, interval=[1]) if retries else None,
    )
    queue.remove(job)  # dequeued
    with queue.connection.pipeline() as pipe:
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        Execution.create(job, ttl=600, pipeline=pipe, worker_name=worker_name)
        pipe.execute()
    return job


def test_dead_workers_job_is_requeued_now_and_live_ones_untouched(
    redis_client: redis.Redis,
) -> None:
    queue = Queue(f"reap-{uuid.uuid4().hex[:8]}", connection=redis_client)
    dead = started(queue, "dead-worker", retries=1)
    alive = started(queue, "live-worker", retries=1)
    assert set(queue.started_job_registry.get_job_ids()) == {dead.id, alive.id}

    assert reap_abandoned(redis_client, "dead-worker", [queue.name]) == [dead.id]

    # Enqueued again right away (not parked in the scheduled registry for its interval).
    assert queue.job_ids == [dead.id]
    assert dead.get_status(refresh=True) == JobStatus.QUEUED
    assert queue.started_job_registry.get_job_ids() == [alive.id]
    assert alive.get_status(refresh=True) == JobStatus.STARTED


def test_dead_workers_job_without_retries_fails(redis_client: redis.Redis) -> None:
    queue = Queue(f"reap-{uuid.uuid4().hex[:8]}", connection=redis_client)
    job = started(queue, "dead-worker-2", retries=0)
    assert reap_abandoned(redis_client, "dead-worker-2", [queue.name]) == [job.id]
    assert job.get_status(refresh=True) == JobStatus.FAILED
    assert job.id in queue.failed_job_registry.get_job_ids()
    assert queue.started_job_registry.get_job_ids() == []
