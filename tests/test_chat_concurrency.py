"""Many replies at once on one chat worker process (issue 12), the RQ way.

``AsyncWorker`` runs in this process on real Redis and PostgreSQL against a paced
loopback OpenAI server that echoes each message back word by word, so every stream can
be checked for exactly its own text, in order.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from app.jobqueue import JobQueue
from core import jobkinds, settings
from core.jobkinds import chat_job_id
from core.principal import Identity
from core.replies import reply_id
from jobs.chat.runtime import open_runtime
from jobs.worker import liveness
from jobs.worker.asyncworker import AsyncWorker
from tests.support.openai_server import Fault, OpenAIServer, openai_server
from tests.test_chat_job import chat_events, post

RUN_CHAT = jobkinds.CHAT.target


@pytest.fixture
def echo(monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis) -> Iterator[OpenAIServer]:
    with openai_server(chunk_delay=0.05, echo=True) as server:
        monkeypatch.setattr(settings, "LLM_PROVIDER", "openai")
        monkeypatch.setattr(settings, "LLM_BASE_URL", server.base_url)
        monkeypatch.setattr(settings, "LLM_MODEL", "echo-1")
        monkeypatch.setattr(settings, "LLM_RETRIES", 0)
        monkeypatch.setattr(settings, "LLM_IDLE_TIMEOUT_SECONDS", 2.0)
        breaker = f"{settings.REDIS_PREFIX}:breaker:llm:openai"
        redis_client.delete(breaker, breaker + ":probe")
        yield server
        redis_client.delete(breaker, breaker + ":probe")


def _worker(queue: Queue, client: redis.Redis, **kwargs: object) -> AsyncWorker:
    return AsyncWorker([queue], connection=client, lifespan=open_runtime, **kwargs)


# Plain words: the injection guard must let every test message through.
_PLAIN = [
    "tell",
    "me",
    "about",
    "the",
    "river",
    "and",
    "the",
    "old",
    "bridge",
    "near",
    "the",
    "town",
    "square",
    "today",
    "please",
]


def _words(tag: str, n: int = 8) -> str:
    """A distinct, harmless message of ``n`` words (the echo server replies with it)."""
    return " ".join([f"note{tag}"] + [_PLAIN[k % len(_PLAIN)] for k in range(n - 1)])


def _assert_exact_stream(client: redis.Redis, user: str, message_id: str, text: str) -> None:
    got = chat_events(client, user, message_id)
    kinds = [kind for kind, _ in got]
    assert kinds[-1] == "chat.done" and set(kinds[:-1]) == {"chat.chunk"}
    chunks = [data for kind, data in got if kind == "chat.chunk"]
    assert [c["index"] for c in chunks] == list(range(len(chunks)))
    assert "".join(c["text"] for c in chunks) == text == got[-1][1]["text"]


def test_200_replies_at_once_each_stream_exact(
    redis_client: redis.Redis, db: psycopg.Connection, echo: OpenAIServer
) -> None:
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    posted = []
    for i in range(200):
        text = _words(f"m{i}")
        posted.append((f"cc-{i}", post(db, f"cc-{i}", text)[1], text))
    for _, message_id, _ in posted:
        queue.enqueue(RUN_CHAT, message_id, job_id=chat_job_id(message_id))
    assert _worker(queue, redis_client, concurrency=200).work(burst=True)

    for user, message_id, text in posted:
        _assert_exact_stream(redis_client, user, message_id, text)
        assert Job.fetch(chat_job_id(message_id), connection=redis_client).get_status() == (
            JobStatus.FINISHED
        )
    # One process carried many streams at once, not one after another.
    assert echo.max_in_flight >= 20
    rows = db.execute(
        "SELECT count(*) FROM messages WHERE id = ANY(%s) AND status = 'completed'",
        ([reply_id(m) for _, m, _ in posted],),
    ).fetchone()
    assert rows == (200,)


def test_per_user_cap_makes_a_users_messages_wait_their_turn(
    redis_client: redis.Redis, db: psycopg.Connection, echo: OpenAIServer
) -> None:
    user = "cap-user"
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    jobs = JobQueue(redis_client)
    posted = []
    for i in range(6):
        text = _words(f"c{i}", 6)
        message_id = post(db, user, text)[1]
        posted.append((message_id, text))
        asyncio.run(
            jobs.enqueue(
                jobkinds.CHAT,
                message_id,
                job_id=chat_job_id(message_id),
                limit=(f"chat-user:{user}", 2),
            )
        )
    statuses = [Job.fetch(chat_job_id(m), connection=redis_client).get_status() for m, _ in posted]
    # Not refused: the ones over the cap wait as RQ's rate_limited.
    assert statuses.count(JobStatus.QUEUED) == 2
    assert statuses.count(JobStatus.RATE_LIMITED) == 4
    # A live (not burst) worker: promoted jobs arrive while it runs; it stops once idle.
    _worker(queue, redis_client, concurrency=50).work(max_idle_time=2)

    spans = []
    for message_id, text in posted:
        _assert_exact_stream(redis_client, user, message_id, text)
        ids = [eid for eid, _ in _event_ids(redis_client, user, message_id)]
        spans.append((ids[0], ids[-1]))
    # Never more than two of this user's replies streaming at once.
    for start, _ in spans:
        assert sum(1 for s, e in spans if s <= start <= e) <= 2


def _event_ids(
    client: redis.Redis, user: str, message_id: str
) -> list[tuple[tuple[int, int], str]]:
    from core import events

    out = []
    for raw_id, fields in client.xrange(events.user_stream(Identity(user).key), "-", "+"):
        if message_id.encode() in fields[b"d"]:
            ms, seq = raw_id.decode().split("-")
            out.append(((int(ms), int(seq)), fields[b"e"].decode()))
    return out


def test_a_job_timeout_ends_that_reply_only(
    redis_client: redis.Redis, db: psycopg.Connection, echo: OpenAIServer, monkeypatch
) -> None:
    monkeypatch.setattr(settings, "LLM_IDLE_TIMEOUT_SECONDS", 30.0)
    echo.script(Fault("stall", after=1, match="STALLME"))
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    stalled_user, stalled = "to-user-x", post(db, "to-user-x", "STALLME please")[1]
    queue.enqueue(RUN_CHAT, stalled, job_id=chat_job_id(stalled), job_timeout=1)
    others = []
    for i in range(5):
        text = _words(f"t{i}", 4)
        others.append((f"to-user-{i}", post(db, f"to-user-{i}", text)[1], text))
    for _, message_id, _ in others:
        queue.enqueue(RUN_CHAT, message_id, job_id=chat_job_id(message_id))
    _worker(queue, redis_client, concurrency=10).work(burst=True)

    job = Job.fetch(chat_job_id(stalled), connection=redis_client)
    assert job.get_status() == JobStatus.FAILED
    assert "JobTimeoutException" in (job.latest_result().exc_string or "")
    kinds = [k for k, _ in chat_events(redis_client, stalled_user, stalled)]
    assert kinds[-1] == "chat.error"
    for user, message_id, text in others:
        _assert_exact_stream(redis_client, user, message_id, text)


def _when_streaming(client: redis.Redis, user: str, message_id: str, action) -> threading.Thread:
    def watch() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(k == "chat.chunk" for k, _ in chat_events(client, user, message_id)):
                action()
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_the_worker_lists_the_replies_it_runs_while_it_runs_them(
    redis_client: redis.Redis, db: psycopg.Connection, echo: OpenAIServer
) -> None:
    """The set the reconciler reads when Redis lost RQ's record (jobs/worker/liveness.py):
    renewed every third of its TTL while the reply streams, removed when the worker stops."""
    user = "running-user"
    message_id = post(db, user, _words("r", 30))[1]  # 30 pieces 50 ms apart
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    queue.enqueue(RUN_CHAT, message_id, job_id=chat_job_id(message_id))
    listed: list[bool] = []

    def look() -> None:
        deadline = time.monotonic() + 1.0  # the reply streams for 1.5 s
        while time.monotonic() < deadline and not listed:
            if chat_job_id(message_id) in liveness.running_job_ids(redis_client):
                listed.append(True)
            time.sleep(0.02)

    watcher = _when_streaming(redis_client, user, message_id, look)
    worker = _worker(queue, redis_client, concurrency=10, running_ttl=0.6)
    assert worker.work(burst=True)
    watcher.join(timeout=5)
    assert listed == [True]
    assert not redis_client.exists(liveness.running_key(worker.name))
    _assert_exact_stream(redis_client, user, message_id, _words("r", 30))


def test_stop_a_streaming_reply_keeps_its_partial_text(
    redis_client: redis.Redis, db: psycopg.Connection, echo: OpenAIServer
) -> None:
    user = "stop-user"
    text = _words("s", 40)  # 40 pieces, 50 ms apart: still streaming when stopped
    message_id = post(db, user, text)[1]
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    queue.enqueue(RUN_CHAT, message_id, job_id=chat_job_id(message_id))
    jobs = JobQueue(redis_client)

    def cancel() -> None:
        redis_client.set(f"{settings.REDIS_PREFIX}:chat:cancel:{message_id}", 1, ex=60)
        assert asyncio.run(jobs.cancel(chat_job_id(message_id))) == JobStatus.STARTED

    watcher = _when_streaming(redis_client, user, message_id, cancel)
    _worker(queue, redis_client, concurrency=5).work(burst=True)
    watcher.join(timeout=5)

    got = chat_events(redis_client, user, message_id)
    kinds = [k for k, _ in got]
    assert kinds[-1] == "chat.done" and kinds.count("chat.done") == 1
    done = got[-1][1]
    assert done["cancelled"] is True
    partial = "".join(d["text"] for k, d in got if k == "chat.chunk")
    assert partial == done["text"] and text.startswith(partial) and partial != text
    row = db.execute(
        "SELECT text, status FROM messages WHERE id = %s", (reply_id(message_id),)
    ).fetchone()
    assert row == (partial, "cancelled")
    job = Job.fetch(chat_job_id(message_id), connection=redis_client)
    assert job.get_status() == JobStatus.STOPPED  # RQ's own verdict: never retried


def test_sigterm_hands_unfinished_replies_back_and_they_restart_cleanly(
    redis_client: redis.Redis, db: psycopg.Connection, echo: OpenAIServer
) -> None:
    queue = Queue(settings.CHAT_QUEUE, connection=redis_client)
    posted = []
    for i in range(5):
        text = _words(f"h{i}", 30)
        posted.append((f"hb-{i}", post(db, f"hb-{i}", text)[1], text))
    for _, message_id, _ in posted:
        queue.enqueue(RUN_CHAT, message_id, job_id=chat_job_id(message_id), retry=None)
    user0, first, _ = posted[0]
    # SIGTERM to ourselves once replies are streaming: RQ's own handler in the main
    # thread starts the warm shutdown; the grace period is too short to finish.
    watcher = _when_streaming(
        redis_client, user0, first, lambda: os.kill(os.getpid(), signal.SIGTERM)
    )
    _worker(queue, redis_client, concurrency=10, grace_seconds=0.2).work()
    watcher.join(timeout=5)
    statuses = {
        Job.fetch(chat_job_id(m), connection=redis_client).get_status() for _, m, _ in posted
    }
    assert statuses == {JobStatus.QUEUED}  # handed back, no retry spent

    _worker(queue, redis_client, concurrency=10).work(burst=True)
    for user, message_id, text in posted:
        got = chat_events(redis_client, user, message_id)
        kinds = [k for k, _ in got]
        # The first run's chunks, then chat.restart, then the whole reply once more.
        restart = kinds.index("chat.restart")
        after = [d for k, d in got[restart + 1 :] if k == "chat.chunk"]
        assert [c["index"] for c in after] == list(range(len(after)))
        assert "".join(c["text"] for c in after) == text == got[-1][1]["text"]
        assert kinds[-1] == "chat.done" and kinds.count("chat.done") == 1
    count = db.execute(
        "SELECT count(*) FROM messages WHERE reply_to = ANY(%s)",
        ([m for _, m, _ in posted],),
    ).fetchone()
    assert count == (5,)  # one assistant row per message, never two
