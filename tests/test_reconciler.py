"""The reconciler's decisions (jobs/worker/reconciler.py), against real Redis, real
PostgreSQL and RQ's own registries: what is left alone, what is enqueued again, what is
handed back to RQ, what is given up with ``work_lost``, and who leads. Time is an
injected clock, never a sleep. tests/faults/test_reconcile.py does the same with real
process deaths and Redis data loss."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import psycopg
import pytest
import redis
from rq import Queue, Worker
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.registry import FailedJobRegistry

from core import events, settings
from core.jobkinds import chat_job_id
from core.principal import Identity
from core.replies import reply_id
from jobs.csvimport.job import lock_key
from jobs.worker import liveness
from jobs.worker.reconciler import Reconciler, queued_ids
from jobs.worker.recovery import CHAT, UPLOAD, enqueue
from jobs.worker.supervisor import reap_abandoned
from tests.conftest import DATABASE_URL

INTERVAL = 5.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module", autouse=True)
def no_earlier_work() -> None:
    """A pass reads every unfinished item in the run's schema; earlier test files leave
    messages and uploads whose jobs no worker will run (they are done with them), which
    these tests would otherwise enqueue again into queues later tests look at."""
    with psycopg.connect(DATABASE_URL, autocommit=True) as conn:
        conn.execute("UPDATE messages SET status = 'failed' WHERE status = 'queued'")
        conn.execute(
            "UPDATE uploads SET status = 'failed'"
            " WHERE status IN ('queued', 'validating', 'processing')"
        )


# The work each test made: ended and its jobs deleted after the test, so no later pass
# enqueues it again and no test leaves jobs in the queues others look at (/metrics).
_MADE: dict[str, list[str]] = {"messages": [], "uploads": []}


@pytest.fixture(autouse=True)
def end_work(db: psycopg.Connection[Any], redis_client: redis.Redis) -> Iterator[None]:
    yield
    messages, uploads = _MADE["messages"], _MADE["uploads"]
    db.execute(
        "UPDATE messages SET status = 'failed' WHERE id = ANY(%s) AND status = 'queued'",
        (messages,),
    )
    db.execute(
        "UPDATE uploads SET status = 'failed' WHERE id = ANY(%s)"
        " AND status IN ('receiving', 'queued', 'validating', 'processing')",
        (uploads,),
    )
    for job_id in [chat_job_id(m) for m in messages] + uploads:
        with contextlib.suppress(NoSuchJobError):
            Job.fetch(job_id, connection=redis_client).delete()
    messages.clear()
    uploads.clear()


@pytest.fixture
def reconciler(redis_client: redis.Redis, clock: Clock) -> Iterator[Reconciler]:
    rec = Reconciler(redis_client, DATABASE_URL, reap_abandoned, interval=INTERVAL, clock=clock)
    yield rec
    rec.resign()


def make_message(
    db: psycopg.Connection[Any], *, age_seconds: float = 60, attempts: int = 0
) -> tuple[str, str, str]:
    """A user's message waiting for its reply; returns (message, conversation, user)."""
    user, conversation, message = (
        f"rec-{uuid.uuid4().hex[:8]}",
        str(uuid.uuid4()),
        str(uuid.uuid4()),
    )
    db.execute(
        "INSERT INTO conversations (id, user_id, tenant) VALUES (%s, %s, %s)",
        (conversation, user, f"user:{user}"),
    )
    db.execute(
        "INSERT INTO messages (id, conversation_id, role, text, status, attempts, created_at)"
        " VALUES (%s, %s, 'user', 'hello', 'queued', %s,"
        " now() - make_interval(secs => %s))",
        (message, conversation, attempts, age_seconds),
    )
    _MADE["messages"].append(message)
    return message, conversation, user


def make_upload(
    db: psycopg.Connection[Any],
    *,
    status: str = "queued",
    age_seconds: float = 60,
    attempts: int = 0,
) -> tuple[str, str]:
    upload, user = str(uuid.uuid4()), f"rec-{uuid.uuid4().hex[:8]}"
    db.execute(
        "INSERT INTO uploads (id, tenant, user_id, filename, status, job_id, attempts, updated_at)"
        " VALUES (%s, %s, %s, 'a.csv', %s, %s, %s, now() - make_interval(secs => %s))",
        (upload, f"user:{user}", user, status, upload, attempts, age_seconds),
    )
    db.execute(
        "INSERT INTO upload_chunks (upload_id, seq, data) VALUES (%s, 0, 'a\n1\n')", (upload,)
    )
    _MADE["uploads"].append(upload)
    return upload, user


def attempts(db: psycopg.Connection[Any], table: str, work_id: str) -> int:
    row = db.execute(f"SELECT attempts FROM {table} WHERE id = %s", (work_id,)).fetchone()
    assert row is not None
    return int(row[0])


def user_events(client: redis.Redis, user: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (fields[b"e"].decode(), orjson.loads(fields[b"d"]))
        for _, fields in client.xrange(events.user_stream(Identity(user).key))
    ]


def start_job(client: redis.Redis, job: Job, worker_name: str) -> None:
    """As a worker leaves a job when it starts running it."""
    Queue(job.origin, connection=client).remove(job)
    with client.pipeline() as pipe:
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        job.worker_name = worker_name
        pipe.hset(job.key, "worker_name", worker_name)
        Execution.create(job, ttl=600, pipeline=pipe, worker_name=worker_name)
        pipe.execute()


def chat_job(client: redis.Redis, message: str) -> Job:
    return Job.fetch(chat_job_id(message), connection=client)


# --- Missing jobs --------------------------------------------------------------------------------
def test_missing_job_is_enqueued_again_when_a_second_pass_still_misses_it(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler, clock: Clock
) -> None:
    message, _, _ = make_message(db)
    first = reconciler.reconcile()
    assert message in first.suspected and message not in first.requeued
    clock.now += INTERVAL / 2
    assert message in reconciler.reconcile().suspected  # not yet an interval on
    clock.now += INTERVAL / 2
    second = reconciler.reconcile()
    assert message in second.requeued
    job = chat_job(redis_client, message)
    assert job.get_status() is JobStatus.QUEUED
    assert job.func_name == CHAT.target and tuple(job.args) == (message,)
    assert job.retries_left == settings.CHAT_JOB_RETRIES
    assert job.id in queued_ids(redis_client, CHAT.queue)
    assert attempts(db, "messages", message) == 1
    # Now it is queued: later passes leave it alone, never doubled.
    clock.now += INTERVAL
    third = reconciler.reconcile()
    assert message not in third.requeued and message not in third.suspected
    assert Queue(CHAT.queue, connection=redis_client).get_job_ids().count(job.id) == 1


def test_work_younger_than_the_grace_period_is_left_alone(
    db: psycopg.Connection[Any], reconciler: Reconciler, clock: Clock
) -> None:
    # The web process may be between its INSERT and its enqueue.
    message, _, _ = make_message(db, age_seconds=0)
    reconciler.reconcile()
    clock.now += INTERVAL
    report = reconciler.reconcile()
    assert message not in report.suspected + report.requeued
    assert attempts(db, "messages", message) == 0


def test_a_queued_job_missing_from_its_queue_is_enqueued_again(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler, clock: Clock
) -> None:
    # An evicted queue list (allkeys-lru) leaves the job hash "queued" in no queue.
    message, _, _ = make_message(db)
    enqueue(redis_client, CHAT, message, None)
    Queue(CHAT.queue, connection=redis_client).remove(chat_job_id(message))
    assert message in reconciler.reconcile().suspected
    clock.now += INTERVAL
    assert message in reconciler.reconcile().requeued
    assert chat_job_id(message) in queued_ids(redis_client, CHAT.queue)


# --- Live jobs ----------------------------------------------------------------------------------
def test_a_queued_job_is_left_alone(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler, clock: Clock
) -> None:
    message, _, _ = make_message(db)
    enqueue(redis_client, CHAT, message, None)
    for _ in range(3):
        report = reconciler.reconcile()
        assert message not in report.suspected + report.requeued + report.reaped
        clock.now += INTERVAL
    assert attempts(db, "messages", message) == 0
    assert Queue(CHAT.queue, connection=redis_client).get_job_ids().count(chat_job_id(message)) == 1


def test_a_job_started_by_a_vouched_for_worker_is_left_alone(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler, clock: Clock
) -> None:
    message, _, _ = make_message(db)
    enqueue(redis_client, CHAT, message, None)
    worker = f"live-{uuid.uuid4().hex[:8]}"
    liveness.vouch(redis_client, [worker])
    start_job(redis_client, chat_job(redis_client, message), worker)
    for _ in range(2):
        report = reconciler.reconcile()
        assert message not in report.suspected + report.requeued + report.reaped
        clock.now += INTERVAL
    assert chat_job(redis_client, message).get_status() is JobStatus.STARTED


def test_a_reply_redis_forgot_while_its_worker_runs_it_is_left_alone(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler, clock: Clock
) -> None:
    """Redis lost RQ's record of a reply in progress (a restart without persistence, a
    failover): no job at all. Its worker still says it runs it, so no second run starts
    beside the first (the client would get two interleaved streams)."""
    message, _, _ = make_message(db)
    worker = f"running-{uuid.uuid4().hex[:8]}"
    liveness.vouch_running(redis_client, worker, [chat_job_id(message)], ttl_seconds=60)
    try:
        for _ in range(3):
            report = reconciler.reconcile()
            assert message not in report.suspected + report.requeued
            clock.now += INTERVAL
        # The worker no longer lists it (it ended, or died and its set lapsed): the
        # usual two passes.
        liveness.vouch_running(redis_client, worker, [], ttl_seconds=60)
        assert message in reconciler.reconcile().suspected
        clock.now += INTERVAL
        assert message in reconciler.reconcile().requeued
    finally:
        liveness.withdraw(redis_client, worker)


def test_a_worker_no_supervisor_vouches_for_is_judged_by_rq_own_worker_key(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler
) -> None:
    message, _, _ = make_message(db)
    enqueue(redis_client, CHAT, message, None)
    worker = f"byhand-{uuid.uuid4().hex[:8]}"
    start_job(redis_client, chat_job(redis_client, message), worker)
    redis_client.hset(
        Worker.redis_worker_namespace_prefix + worker, "birth", "x"
    )  # `rq worker` registered itself
    try:
        assert liveness.is_alive(redis_client, worker)
        report = reconciler.reconcile()
        assert message not in report.reaped + report.requeued
    finally:
        redis_client.delete(Worker.redis_worker_namespace_prefix + worker)
    assert not liveness.is_alive(redis_client, worker)


def test_an_import_holding_its_lock_is_live_even_without_a_job(
    db: psycopg.Connection[Any], reconciler: Reconciler, clock: Clock
) -> None:
    # Redis forgot the job of an import that is still running: its transaction's
    # advisory lock says so.
    upload, _ = make_upload(db, status="processing")
    with psycopg.connect(DATABASE_URL) as running, running.transaction():
        running.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(upload),))
        for _ in range(2):
            report = reconciler.reconcile()
            assert upload not in report.suspected + report.requeued
            clock.now += INTERVAL
    assert upload in reconciler.reconcile().suspected  # the lock is gone with its run


# --- Dead workers and ended jobs -----------------------------------------------------------------
def test_a_job_of_a_dead_supervised_worker_is_handed_back_to_rq(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler
) -> None:
    message, _, _ = make_message(db)
    enqueue(redis_client, CHAT, message, None)
    worker = f"dead-{uuid.uuid4().hex[:8]}"
    liveness.vouch(redis_client, [worker])
    start_job(redis_client, chat_job(redis_client, message), worker)
    redis_client.delete(liveness.alive_key(worker))  # its machine stopped vouching
    report = reconciler.reconcile()
    assert message in report.reaped and message not in report.requeued
    job = chat_job(redis_client, message)
    # RQ's own retry ran (interval dropped: a crash is no transient error).
    assert job.get_status() is JobStatus.QUEUED
    assert job.retries_left == settings.CHAT_JOB_RETRIES - 1
    assert attempts(db, "messages", message) == 0  # RQ's retry, not an attempt of ours
    assert not redis_client.sismember(liveness.supervised_key(), worker)


def test_a_failed_job_of_unfinished_work_is_enqueued_again_at_once(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler
) -> None:
    # The import's own failure path could not write "failed": PostgreSQL was down.
    upload, _ = make_upload(db, status="processing")
    enqueue(redis_client, UPLOAD, upload, None)
    job = Job.fetch(upload, connection=redis_client)
    Queue(UPLOAD.queue, connection=redis_client).remove(job)
    registry = FailedJobRegistry(UPLOAD.queue, connection=redis_client)
    with redis_client.pipeline() as pipe:
        job.set_status(JobStatus.FAILED, pipeline=pipe)
        registry.add(job, ttl=600, pipeline=pipe)
        pipe.execute()
    report = reconciler.reconcile()
    assert upload in report.requeued
    assert upload not in registry.get_job_ids()
    fresh = Job.fetch(upload, connection=redis_client)
    assert fresh.get_status() is JobStatus.QUEUED
    assert fresh.retries_left == settings.UPLOAD_JOB_RETRIES
    assert attempts(db, "uploads", upload) == 1


def test_finished_work_is_never_enqueued_again(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler
) -> None:
    message, _, _ = make_message(db)
    db.execute("UPDATE messages SET status = 'answered' WHERE id = %s", (message,))
    upload, _ = make_upload(db, status="completed")
    reconciler.reconcile()
    report = reconciler.reconcile()
    assert not {message, upload} & set(report.suspected + report.requeued + report.given_up)
    assert not redis_client.exists(Job.key_for(chat_job_id(message)))


# --- Giving up ------------------------------------------------------------------------------------
def test_a_message_lost_too_often_ends_in_work_lost(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler, clock: Clock
) -> None:
    message, conversation, user = make_message(db, attempts=settings.RECONCILE_MAX_ATTEMPTS)
    reconciler.reconcile()
    clock.now += INTERVAL
    report = reconciler.reconcile()
    assert message in report.given_up and message not in report.requeued
    rows = db.execute(
        "SELECT id, role, status, error_code FROM messages WHERE conversation_id = %s"
        " ORDER BY role DESC",
        (conversation,),
    ).fetchall()
    assert rows == [
        (uuid.UUID(message), "user", "failed", None),
        (uuid.UUID(reply_id(message)), "assistant", "failed", "work_lost"),
    ]
    assert attempts(db, "messages", message) == settings.RECONCILE_MAX_ATTEMPTS
    [(kind, data)] = user_events(redis_client, user)
    assert kind == "chat.error"
    assert data["code"] == "work_lost" and data["message"]
    assert data["message_id"] == message and data["conversation_id"] == conversation
    assert not redis_client.exists(Job.key_for(chat_job_id(message)))
    # Ended for good: later passes do not look at it again.
    clock.now += INTERVAL
    assert message not in reconciler.reconcile().given_up


def test_an_upload_lost_too_often_ends_in_work_lost(
    db: psycopg.Connection[Any], redis_client: redis.Redis, reconciler: Reconciler, clock: Clock
) -> None:
    upload, user = make_upload(db, status="processing", attempts=settings.RECONCILE_MAX_ATTEMPTS)
    reconciler.reconcile()
    clock.now += INTERVAL
    assert upload in reconciler.reconcile().given_up
    status, error = db.execute(
        "SELECT status, error FROM uploads WHERE id = %s", (upload,)
    ).fetchone()  # type: ignore[misc]
    assert status == "failed" and error["code"] == "work_lost"
    chunks = db.execute("SELECT count(*) FROM upload_chunks WHERE upload_id = %s", (upload,))
    assert chunks.fetchone() == (0,)
    kinds = [
        (kind, data.get("status") or data.get("code"))
        for kind, data in user_events(redis_client, user)
    ]
    assert kinds == [("upload.status", "failed"), ("upload.error", "work_lost")]


# --- Orphan bodies, leadership, Redis policy ---------------------------------------------
def test_uploads_whose_body_stopped_arriving_are_removed_with_their_chunks(
    db: psycopg.Connection[Any], reconciler: Reconciler
) -> None:
    timeout = settings.UPLOAD_RECEIVE_TIMEOUT_SECONDS
    orphan, _ = make_upload(db, status="receiving", age_seconds=timeout + 60)
    arriving, _ = make_upload(db, status="receiving", age_seconds=timeout / 2)
    report = reconciler.reconcile()
    assert orphan in report.orphans_removed and arriving not in report.orphans_removed
    left = db.execute(
        "SELECT upload_id FROM upload_chunks WHERE upload_id = ANY(%s)", ([orphan, arriving],)
    ).fetchall()
    assert left == [(uuid.UUID(arriving),)]


def test_one_reconciler_leads_at_a_time(redis_client: redis.Redis, clock: Clock) -> None:
    first = Reconciler(redis_client, DATABASE_URL, reap_abandoned, interval=1, clock=clock)
    second = Reconciler(redis_client, DATABASE_URL, reap_abandoned, interval=1, clock=clock)
    try:
        assert first.lead()
        assert not second.lead()
        assert first.lead()  # renewed
        # Redis forgot the lock (a flush): the next to ask leads, the old leader learns it.
        redis_client.delete(first.lock.name)
        assert second.lead()
        assert not first.lead()
        second.resign()
        assert first.lead()
    finally:
        first.resign()
        second.resign()


def test_the_running_index_forgets_a_worker_whose_set_is_gone(redis_client: redis.Redis) -> None:
    """Readers find running sets through an index, not a SCAN of the keyspace; a dead
    worker's name leaves it once its set lapsed (an idle one adds itself back)."""
    busy, dead = (f"idx-{uuid.uuid4().hex[:8]}" for _ in range(2))
    liveness.vouch_running(redis_client, busy, ["job-a", "job-b"], ttl_seconds=60)
    liveness.vouch_running(redis_client, dead, ["job-c"], ttl_seconds=60)
    try:
        assert {"job-a", "job-b", "job-c"} <= liveness.running_job_ids(redis_client)
        redis_client.delete(liveness.running_key(dead))  # as if its TTL lapsed
        running = liveness.running_job_ids(redis_client)
        assert {"job-a", "job-b"} <= running and "job-c" not in running
        index = {m.decode() for m in redis_client.smembers(liveness.running_index_key())}
        assert busy in index and dead not in index
        liveness.withdraw(redis_client, busy)
        assert busy.encode() not in redis_client.smembers(liveness.running_index_key())
        assert "job-a" not in liveness.running_job_ids(redis_client)
    finally:
        for name in (busy, dead):
            liveness.withdraw(redis_client, name)
