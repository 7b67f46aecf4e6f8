"""The chat job: ``run_chat(message_id)`` turns one user message into a streamed reply.

Runs the agent graph (jobs/chat/agent.py) and publishes what it streams as ``chat.chunk``
events, then ``chat.done`` or ``chat.error`` (API.md "Event streams"), after the reply
row is stored, so a client that refetches history on ``chat.done`` finds it.

Under an RQ retry the job is idempotent enough: a turn whose reply is already stored
only re-announces its end; otherwise it re-runs with the same reply id (no second row).
"""

from __future__ import annotations

import atexit
import functools
import logging
import time
from typing import Any

import psycopg
import redis
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from rq import get_current_job

from core import settings
from core.drafts import add_chunk, discard_draft, reply_id, start_draft
from core.eventclients import EventsClient, open_events_client, separate
from core.eventkinds import EventKind
from core.events import publish_event, queue_event
from core.history import invalidate_history
from core.jobmetrics import record_job_metric
from core.statuses import MessageStatus
from jobs.chat import runtime
from jobs.chat.agent import GRAPH, AgentContext, ChatState, save_turn
from jobs.chat.breaker import Breaker
from jobs.chat.llm import ProviderHandle, configured_model
from jobs.chat.runtime import ProcessRuntime

logger = logging.getLogger("herald.chat")

ERROR_MESSAGES = {
    "internal_error": "Something went wrong on our side.",
}


def run_chat(message_id: str) -> dict[str, Any]:
    """RQ entry point (the CHAT job kind, core/jobkinds.py): one message, one reply."""
    client = redis_client()
    return runtime.run(lambda rt: _run(rt, client, message_id))


@functools.cache
def redis_client() -> redis.Redis:
    """One client per worker process: a new one costs ~3 ms (redis-py resolves its
    version from package metadata per connection). redis-py's pool notices a fork and
    reconnects in the child, so a forking Worker's horse is safe too."""
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=5)
    atexit.register(client.close)
    return client


@functools.cache
def events_client() -> EventsClient:
    """The event bus's client: ``redis_client()`` itself unless EVENTS_REDIS_URL names
    another Redis or a cluster (core/eventclients.py)."""
    if not separate():
        return redis_client()
    client = open_events_client()
    atexit.register(client.close)
    return client


@functools.cache
def compiled_graph() -> Any:
    # Compiling costs ~1 ms; per job only the checkpointer differs (``copy`` is cheap).
    return GRAPH.compile()


def _labels() -> dict[str, str]:
    return {"provider": settings.LLM_PROVIDER, "model": configured_model()}


async def _run(rt: ProcessRuntime, client: redis.Redis, message_id: str) -> dict[str, Any]:
    started = _enqueued_at()
    labels = _labels()
    conn = await rt.connection()
    row = await _load(conn, message_id)
    if row is None:
        logger.warning("chat message %s no longer exists; nothing to do", message_id)
        return {"outcome": "missing"}
    user_id, conversation_id = row["user_id"], str(row["conversation_id"])
    base = {"conversation_id": conversation_id, "message_id": message_id}
    if row["reply_status"] in (MessageStatus.COMPLETED, MessageStatus.FAILED):
        # A retry of a turn that already finished: say how it ended, once more.
        _announce_end(client, user_id, base, row, labels)
        return {"outcome": "replayed"}
    try:
        return await _turn(client, conn, await rt.provider(), row, base, labels, started)
    except BaseException:
        job = get_current_job()
        if job is None or not job.retries_left:
            _publish(
                client,
                user_id,
                EventKind.CHAT_ERROR,
                {**base, "code": "internal_error", "message": ERROR_MESSAGES["internal_error"]},
            )
            _metric(client, "herald_chat_jobs_total", labels, outcome="internal_error")
            await _mark_failed(conn, client, user_id, base)
        raise


async def _mark_failed(
    conn: psycopg.AsyncConnection[Any], client: redis.Redis, user_id: str, base: dict[str, Any]
) -> None:
    # Best effort: the failure may be PostgreSQL itself. History then shows the turn as
    # failed instead of waiting for ever.
    try:
        async with conn.transaction():
            await save_turn(
                conn,
                conversation_id=base["conversation_id"],
                message_id=base["message_id"],
                reply="",
                model=None,
                error_code="internal_error",
            )
        invalidate_history(client, user_id, base["conversation_id"])
    except Exception:
        logger.warning("could not mark chat message %s failed", base["message_id"], exc_info=True)


async def _load(conn: psycopg.AsyncConnection[Any], message_id: str) -> dict[str, Any] | None:
    cur = await conn.execute(
        "SELECT m.text, m.conversation_id, c.user_id, r.status AS reply_status,"
        " r.text AS reply_text, r.model AS reply_model, r.error_code AS reply_error"
        " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
        " LEFT JOIN messages r ON r.id = %s"
        " WHERE m.id = %s AND m.role = 'user'",
        (reply_id(message_id), message_id),
    )
    return await cur.fetchone()


async def _turn(
    client: redis.Redis,
    conn: psycopg.AsyncConnection[Any],
    handle: ProviderHandle,
    row: dict[str, Any],
    base: dict[str, Any],
    labels: dict[str, str],
    started: float,
) -> dict[str, Any]:
    user_id = row["user_id"]
    saver = AsyncPostgresSaver(conn)
    graph = compiled_graph().copy(update={"checkpointer": saver})
    chunks = 0

    def on_chunk(data: dict[str, Any]) -> None:
        nonlocal chunks
        # The draft before the event, in one round trip where both share a Redis:
        # whoever saw the event and reloads finds the chunk in the draft (core/drafts.py).
        bus = events_client()
        with client.pipeline(transaction=False) as pipe:
            add_chunk(pipe, base["message_id"], data["index"], data["text"])
            if bus is client:
                queue_event(pipe, EventKind.CHAT_CHUNK, {**base, **data}, user_id=user_id)
            pipe.execute()
        if bus is not client:
            publish_event(bus, EventKind.CHAT_CHUNK, {**base, **data}, user_id=user_id)
        chunks += 1
        if chunks == 1:  # recorded after the chunk is out, not before it
            first = max(0.0, time.time() - started)
            with client.pipeline(transaction=False) as pipe:
                _metric(pipe, "herald_chat_first_chunk_seconds_sum_total", labels, first)
                _metric(pipe, "herald_chat_first_chunk_seconds_count_total", labels)
                _metric(pipe, "herald_chat_first_chunk_seconds_last", labels, first)
                pipe.execute()

    ctx = AgentContext(
        conn=conn,
        db_lock=saver.lock,
        redis=client,
        provider=handle.provider,
        breaker=Breaker.for_llm(client, handle.provider.name, configured_model()),
        user_id=user_id,
        on_chunk=on_chunk,
        labels=labels,
    )
    turn: ChatState = {
        "conversation_id": base["conversation_id"],
        "message_id": base["message_id"],
        "text": row["text"],
        "reply": "",
        "error_code": "",
        "error_message": "",
    }
    config: Any = {"configurable": {"thread_id": base["conversation_id"]}}
    start_draft(client, base["message_id"])
    state: dict[str, Any] = await graph.ainvoke(
        turn,
        config,
        context=ctx,
        # Memory is saved once, when the turn ends: no checkpoint writes before the
        # first token (a crashed turn is re-run whole by the RQ retry anyway).
        durability="exit",
    )
    # The reply row is stored (the graph's persist node): the draft has served.
    discard_draft(client, base["message_id"])
    if chunks:
        _metric(client, "herald_chat_tokens_total", labels, chunks)
    code = state.get("error_code", "")
    if code:
        if code == "message_blocked":
            _metric(client, "herald_chat_blocked_total", labels)
        _publish(
            client,
            user_id,
            EventKind.CHAT_ERROR,
            {**base, "code": code, "message": state["error_message"]},
        )
    else:
        _publish(
            client,
            user_id,
            EventKind.CHAT_DONE,
            {**base, "text": state.get("reply", ""), "model": handle.provider.model},
        )
    outcome = code or "completed"
    _metric(client, "herald_chat_jobs_total", labels, outcome=outcome)
    return {"outcome": outcome, "chunks": chunks}


def _announce_end(
    client: redis.Redis,
    user_id: str,
    base: dict[str, Any],
    row: dict[str, Any],
    labels: dict[str, str],
) -> None:
    if row["reply_status"] == MessageStatus.COMPLETED:
        data = {**base, "text": row["reply_text"], "model": row["reply_model"]}
        _publish(client, user_id, EventKind.CHAT_DONE, data)
    else:
        code = row["reply_error"] or "internal_error"
        message = ERROR_MESSAGES.get(code, "The reply failed.")
        _publish(client, user_id, EventKind.CHAT_ERROR, {**base, "code": code, "message": message})


def _metric(
    client: redis.Redis, name: str, labels: dict[str, str], amount: float = 1, **extra: str
) -> None:
    record_job_metric(client, name, amount, **{**labels, **extra})


def _publish(client: redis.Redis, user_id: str, event: EventKind, data: dict[str, Any]) -> None:
    # ``client`` is the queue Redis the job was given; events go to the bus's own.
    publish_event(events_client(), event, data, user_id=user_id)


def _enqueued_at() -> float:
    # Time to first chunk is measured from the enqueue, as a user feels it (queue
    # wait included); outside RQ (bench baseline, direct calls) from now.
    job = get_current_job()
    if job is not None and job.enqueued_at is not None:
        return float(job.enqueued_at.timestamp())
    return time.time()
