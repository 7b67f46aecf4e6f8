"""AsyncWorker (jobs/worker/asyncworker.py): its heartbeat takes fewer round trips.

The jobs run the RQ way (burst); what is checked is what the skipped heartbeats must
not break: the job's outcome and events, the worker's Redis record (state, a TTL long
enough to outlive a blocking dequeue), and RQ's registries.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import psycopg
import redis
from rq import Queue
from rq.job import Job

from core import jobkinds, settings
from core.jobmetrics import metric_field, worker_metrics_key
from jobs.chat.runtime import open_runtime
from jobs.worker import looplag
from jobs.worker.asyncworker import AsyncWorker
from tests.support.openai_server import DEFAULT_REPLY
from tests.test_chat_job import chat_events, post, upstream  # noqa: F401 - a fixture


def test_chat_jobs_run_on_async_worker(
    redis_client: redis.Redis,
    db: psycopg.Connection,
    upstream: object,  # noqa: F811 - the loopback OpenAI server fixture
) -> None:
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    ids = [post(db, "cw-user", f"hello {i}")[1] for i in range(3)]
    for message_id in ids:
        queue.enqueue(jobkinds.CHAT.target, message_id, job_id=f"chat-{message_id}")
    worker = AsyncWorker([queue], connection=redis_client, lifespan=open_runtime)
    assert worker.work(burst=True)

    for message_id in ids:
        job = Job.fetch(f"chat-{message_id}", connection=redis_client)
        assert job.get_status() == "finished"
        assert job.return_value()["outcome"] == "completed"
        assert job.return_value()["chunks"] == len(DEFAULT_REPLY)
        kinds = [kind for kind, _ in chat_events(redis_client, "cw-user", message_id)]
        assert kinds == ["chat.chunk"] * len(DEFAULT_REPLY) + ["chat.done"]
    assert queue.started_job_registry.get_job_ids() == []
    # Other tests of the run share the queue: ours are among the finished.
    assert {f"chat-{m}" for m in ids} <= set(queue.finished_job_registry.get_job_ids())


def test_issue12_shutdown_closes_the_lifespan_once_the_jobs_are_done(
    redis_client: redis.Redis,
    db: psycopg.Connection,
    upstream: object,  # noqa: F811 - the loopback OpenAI server fixture
) -> None:
    """The loop waits for the jobs' tasks, not for every task: the lifespan's own (the
    PostgreSQL pool's workers) end only when it closes, so waiting for them held the
    worker until the loop thread's join timed out and never closed the lifespan."""
    closed: list[bool] = []

    @contextlib.asynccontextmanager
    async def lifespan() -> AsyncIterator[object]:
        async with open_runtime() as runtime:
            yield runtime
        closed.append(True)

    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    message_id = post(db, "cw-close", "hello")[1]
    queue.enqueue(jobkinds.CHAT.target, message_id, job_id=f"chat-{message_id}")
    worker = AsyncWorker([queue], connection=redis_client, lifespan=lifespan)
    assert worker.work(burst=True)
    assert closed == [True]
    assert Job.fetch(f"chat-{message_id}", connection=redis_client).get_status() == "finished"


def test_heartbeat_is_one_round_trip_and_skipped_only_after_a_default_one(
    redis_client: redis.Redis,
) -> None:
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    worker = AsyncWorker([queue], connection=redis_client)
    worker.register_birth()
    try:
        default_ttl = worker.worker_ttl + 60
        worker.heartbeat()
        assert redis_client.ttl(worker.key) > default_ttl - 5
        # A job-length heartbeat (RQ sends it on a pipeline at job start) shortens the
        # key's TTL; the next default heartbeat must then go out, not be skipped.
        with redis_client.pipeline() as pipe:
            worker.heartbeat(30, pipeline=pipe)
            pipe.execute()
        assert redis_client.ttl(worker.key) <= 30
        worker.heartbeat()
        assert redis_client.ttl(worker.key) > default_ttl - 5
        # Right after a default heartbeat, another one is skipped: the TTL stands.
        redis_client.expire(worker.key, default_ttl - 100)
        worker.heartbeat()
        assert redis_client.ttl(worker.key) <= default_ttl - 100
        # An explicit timeout is never skipped.
        worker.heartbeat(default_ttl)
        assert redis_client.ttl(worker.key) > default_ttl - 5
    finally:
        worker.register_death()
        redis_client.delete(worker.key)


def test_state_changes_are_written(redis_client: redis.Redis) -> None:
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    worker = AsyncWorker([queue], connection=redis_client)
    worker.register_birth()
    try:
        worker.set_state("busy")
        assert redis_client.hget(worker.key, "state") == b"busy"
        worker.set_state("idle")
        assert redis_client.hget(worker.key, "state") == b"idle"
        worker.set_state("idle")  # unchanged: no round trip, same record
        assert redis_client.hget(worker.key, "state") == b"idle"
    finally:
        worker.register_death()
        redis_client.delete(worker.key)


def test_loop_lag_probe_fills_a_cumulative_histogram(
    redis_client: redis.Redis,
    db: psycopg.Connection,
    upstream: object,  # noqa: F811 - the loopback OpenAI server fixture
) -> None:
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    message_id = post(db, "lag-user", "hello lag")[1]
    queue.enqueue(jobkinds.CHAT.target, message_id, job_id=f"chat-{message_id}")
    worker = AsyncWorker(
        [queue],
        connection=redis_client,
        lifespan=open_runtime,
        loop_lag_tick=0.005,
        loop_lag_window=0.05,
    )
    assert worker.work(burst=True)

    fields = {
        k.decode(): float(v)
        for k, v in redis_client.hgetall(worker_metrics_key()).items()
        if k.startswith(looplag.NAME.encode())
    }
    labels = {"queue": settings.CHAT_QUEUE}
    count = fields[metric_field(f"{looplag.NAME}_count_total", labels)[1]]
    assert count >= 1
    assert fields[metric_field(f"{looplag.NAME}_sum_total", labels)[1]] >= 0
    buckets = [
        fields[metric_field(f"{looplag.NAME}_bucket_total", {**labels, "le": le})[1]]
        for le in [repr(b) for b in looplag.BUCKETS] + ["+Inf"]
    ]
    assert buckets == sorted(buckets)  # cumulative, as Prometheus reads them
    assert buckets[-1] == count
