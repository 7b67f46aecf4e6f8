"""A restart must not leave an accepted chat message waiting for ever (issue 10 item 3):
at start the worker supervisor has RQ retry the jobs of workers that are gone
(``reap_orphans``) and enqueues again every message still ``queued`` with no pending
job (jobs/chat/recovery.py). Real Redis, RQ and PostgreSQL; the demo provider."""

from __future__ import annotations

import uuid

import psycopg
import redis
from rq import Queue, Retry, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus

from core import settings
from core.jobkinds import CHAT, chat_job_id
from jobs.chat.recovery import recover_chats
from jobs.worker.supervisor import reap_orphans
from tests.test_chat_job import chat_events, post


def accepted_earlier(db: psycopg.Connection, user: str, text: str) -> str:
    """A message accepted a minute ago (past the recovery grace period)."""
    _, message_id = post(db, user, text)
    db.execute(
        "UPDATE messages SET created_at = now() - interval '1 minute' WHERE id = %s",
        (message_id,),
    )
    return message_id


def status(db: psycopg.Connection, message_id: str) -> str:
    row = db.execute("SELECT status FROM messages WHERE id = %s", (message_id,)).fetchone()
    assert row is not None
    return str(row[0])


def fresh_queue(redis_client: redis.Redis) -> Queue:
    return Queue(f"recovery-{uuid.uuid4().hex[:8]}", connection=redis_client)


def test_issue10_message_whose_job_was_lost_is_answered(
    redis_client: redis.Redis, db: psycopg.Connection
) -> None:
    queue = fresh_queue(redis_client)
    lost = accepted_earlier(db, "rec-lost", "was my job lost?")  # Redis forgot the job
    recovered = recover_chats(redis_client, str(settings.DATABASE_URL), queue.name)
    assert lost in recovered
    assert chat_job_id(lost) in queue.job_ids
    SimpleWorker([queue], connection=redis_client).work(burst=True)
    assert status(db, lost) == "answered"
    assert [e for e, _ in chat_events(redis_client, "rec-lost", lost)][-1] == "chat.done"


def test_pending_and_just_accepted_messages_are_left_alone(
    redis_client: redis.Redis, db: psycopg.Connection
) -> None:
    queue = fresh_queue(redis_client)
    pending = accepted_earlier(db, "rec-pending", "my job is queued")
    queue.enqueue_call(CHAT.target, args=(pending,), job_id=chat_job_id(pending))
    _, just_now = post(db, "rec-now", "my job is being enqueued right now")
    recovered = recover_chats(redis_client, str(settings.DATABASE_URL), queue.name)
    assert pending not in recovered
    assert just_now not in recovered
    assert queue.job_ids.count(chat_job_id(pending)) == 1


def test_issue10_reply_cut_by_a_stopped_worker_is_run_again(
    redis_client: redis.Redis, db: psycopg.Connection
) -> None:
    """A worker stopped mid-reply (cold shutdown) left its job ``started``; that worker
    is no longer registered, so at the next start RQ retries the job."""
    queue = fresh_queue(redis_client)
    cut = accepted_earlier(db, "rec-cut", "answer me despite the restart")
    job = queue.enqueue_call(
        CHAT.target, args=(cut,), job_id=chat_job_id(cut), retry=Retry(max=1, interval=[1])
    )
    queue.remove(job)
    with redis_client.pipeline() as pipe:
        job.set_status(JobStatus.STARTED, pipeline=pipe)
        Execution.create(job, ttl=600, pipeline=pipe, worker_name=f"gone-{uuid.uuid4().hex}")
        pipe.execute()

    assert reap_orphans(redis_client, [queue.name]) == [job.id]
    assert Job.fetch(job.id, connection=redis_client).get_status() == JobStatus.QUEUED
    # Its job is pending again: recovery does not enqueue a second one.
    assert cut not in recover_chats(redis_client, str(settings.DATABASE_URL), queue.name)
    SimpleWorker([queue], connection=redis_client).work(burst=True)
    assert status(db, cut) == "answered"
