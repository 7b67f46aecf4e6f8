"""The chat job: ``run_chat(message_id)`` turns one user message into a streamed reply.

Runs the agent graph (jobs/chat/agent.py) and publishes what it streams as ``chat.chunk``
events, then ``chat.done`` or ``chat.error`` (API.md "Event streams"), after the reply
row is stored, so a client that refetches history on ``chat.done`` finds it.

It is a coroutine: a chat worker (``jobs.worker.asyncworker.AsyncWorker``) runs hundreds
at once on one loop. Pieces that arrive within ``CHAT_CHUNK_COALESCE_SECONDS`` of the
last event go out as one ``chat.chunk`` (jobs/chat/chunks.py).

A run that follows one which already published chunks (a retry after a crash, a job
handed back at shutdown) first publishes ``chat.restart``, so a client drops the
partial text instead of showing it twice. A stop on request (``rq stop-job``, sent by
``POST /chat/messages/{id}/cancel``) stores the partial reply as ``cancelled`` and ends
with ``chat.done`` carrying ``"cancelled": true``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from redis.asyncio.client import Pipeline
from rq import get_current_job

from core import settings
from core.drafts import draft_keys
from core.eventkinds import EventKind
from core.events import apublish_event, aqueue_event
from core.history import ainvalidate_history, queue_invalidation
from core.jobmetrics import metric_field
from core.principal import Identity
from core.replies import reply_id, store_reply
from core.statuses import FINAL_REPLY_STATUSES, MessageStatus
from jobs.chat.agent import GRAPH, AgentContext, ChatState
from jobs.chat.chunks import ChunkPublisher
from jobs.chat.llm import configured_model
from jobs.chat.runtime import ChatRuntime, chat_runtime
from jobs.worker.jobcontrol import STOP, TIMEOUT, cancel_reason

logger = logging.getLogger("herald.chat")

ERROR_MESSAGES = {
    "internal_error": "Something went wrong on our side.",
    "llm_timeout": "The reply took too long and was stopped.",
}


async def run_chat(message_id: str) -> dict[str, Any]:
    """RQ entry point (the job registry's chat target): one message, one reply."""
    async with chat_runtime() as rt:
        return await _run(rt, message_id)


def _labels() -> dict[str, str]:
    return {"provider": settings.LLM_PROVIDER, "model": configured_model()}


def _key(kind: str, message_id: str) -> str:
    return f"{settings.REDIS_PREFIX}:chat:{kind}:{message_id}"


async def _run(rt: ChatRuntime, message_id: str) -> dict[str, Any]:
    started = _enqueued_at()
    labels = _labels()
    # The message row and, beside it, one Redis round trip: did an earlier run stream
    # chunks (its draft is dropped: this run streams from index 0), and was a stop asked
    # for before this run started (the web sets the flag before it looks at the job)?
    row, (streamed, cancel_asked) = await asyncio.gather(
        _load(rt, message_id), _restart_state(rt, message_id)
    )
    if row is None:
        logger.warning("chat message %s no longer exists; nothing to do", message_id)
        return {"outcome": "missing"}
    # The owner is the pair (tenant, user) stored with the conversation: events and
    # caches are keyed by it (Identity.key), never by the user id alone.
    owner = Identity.from_tenant(row["tenant"], row["user_id"])
    base = {"conversation_id": str(row["conversation_id"]), "message_id": message_id}
    if row["reply_status"] in FINAL_REPLY_STATUSES:
        # A retry of a turn that already finished: say how it ended, once more.
        await _announce_end(rt, owner.key, base, row)
        return {"outcome": "replayed"}
    if streamed:
        await _publish(rt, owner.key, EventKind.CHAT_RESTART, {**base, "reason": "retried"})
    bus = None if rt.events is rt.redis else rt.events
    chunks = ChunkPublisher(rt.outbox, bus, owner.key, base, started, labels)
    parts: list[str] = []  # the reply so far, filled by the agent's respond node
    if cancel_asked:
        await _stop(rt, owner.key, base, "")
        return {"outcome": "cancelled"}
    try:
        return await _turn(rt, row, base, labels, chunks, parts)
    except asyncio.CancelledError:
        reason = cancel_reason()
        if reason == STOP:
            await chunks.close()
            await _stop(rt, owner.key, base, "".join(parts))
        elif reason == TIMEOUT:
            await _fail_if_last_try(rt, owner.key, base, labels, "llm_timeout")
        raise  # HANDBACK (or the loop closing): the next run restarts the reply
    except BaseException:
        await _fail_if_last_try(rt, owner.key, base, labels, "internal_error")
        raise


async def _fail_if_last_try(
    rt: ChatRuntime, owner: str, base: dict[str, Any], labels: dict[str, str], code: str
) -> None:
    job = get_current_job()
    if job is not None and job.retries_left:
        return  # RQ runs it again; the client hears of the end from that run
    message = ERROR_MESSAGES.get(code, ERROR_MESSAGES["internal_error"])
    error = {**base, "code": code, "message": message}
    await _publish(rt, owner, EventKind.CHAT_ERROR, error)
    counter = metric_field("herald_chat_jobs_total", {**labels, "outcome": code})

    async def count(pipe: Pipeline) -> None:
        pipe.hincrbyfloat(*counter, 1)

    await rt.outbox.send(count)
    await _mark_failed(rt, owner, base, code)


async def _stop(rt: ChatRuntime, owner: str, base: dict[str, Any], partial: str) -> None:
    async with rt.pool.connection() as conn:
        stored = await store_reply(
            conn,
            message_id=base["message_id"],
            conversation_id=base["conversation_id"],
            text=partial,
            model=rt.handle.provider.model,
            cancelled=True,
        )
    if stored:
        await ainvalidate_history(rt.redis, owner, base["conversation_id"])
        done = {**base, "text": partial, "model": rt.handle.provider.model, "cancelled": True}
        await _publish(rt, owner, EventKind.CHAT_DONE, done)


async def _mark_failed(rt: ChatRuntime, owner: str, base: dict[str, Any], code: str) -> None:
    # Best effort: the failure may be PostgreSQL itself. History then shows the turn as
    # failed instead of waiting for ever.
    try:
        async with rt.pool.connection() as conn:
            await store_reply(
                conn,
                message_id=base["message_id"],
                conversation_id=base["conversation_id"],
                error_code=code,
            )
        await ainvalidate_history(rt.redis, owner, base["conversation_id"])
    except Exception:
        logger.warning("could not mark chat message %s failed", base["message_id"], exc_info=True)


async def _restart_state(rt: ChatRuntime, message_id: str) -> list[Any]:
    async with rt.redis.pipeline(transaction=False) as pipe:
        pipe.delete(*draft_keys(message_id))
        pipe.exists(_key("cancel", message_id))
        return list(await pipe.execute())


async def _load(rt: ChatRuntime, message_id: str) -> dict[str, Any] | None:
    async with rt.pool.connection() as conn:
        cur = await conn.execute(
            "SELECT m.text, m.conversation_id, c.tenant, c.user_id, r.status AS reply_status,"
            " r.text AS reply_text, r.model AS reply_model, r.error_code AS reply_error"
            " FROM messages m JOIN conversations c ON c.id = m.conversation_id"
            " LEFT JOIN messages r ON r.id = %s"
            " WHERE m.id = %s AND m.role = 'user'",
            (reply_id(message_id), message_id),
        )
        row: dict[str, Any] | None = await cur.fetchone()
    return row


async def _turn(
    rt: ChatRuntime,
    row: dict[str, Any],
    base: dict[str, Any],
    labels: dict[str, str],
    chunks: ChunkPublisher,
    parts: list[str],
) -> dict[str, Any]:
    owner = Identity.from_tenant(row["tenant"], row["user_id"])
    saver = AsyncPostgresSaver(rt.pool)
    graph = GRAPH_COMPILED.copy(update={"checkpointer": saver})
    handle = rt.handle
    ctx = AgentContext(
        pool=rt.pool,
        provider=handle.provider,
        breaker=rt.breaker,
        owner=owner,
        on_chunk=chunks.add,
        upstream=rt.upstream,
        labels=labels,
        parts=parts,
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
    # Memory is saved once, when the turn ends: no checkpoint writes before the first
    # token (a crashed turn is re-run whole by the RQ retry anyway).
    state: dict[str, Any] = await graph.ainvoke(turn, config, context=ctx, durability="exit")
    await chunks.close()
    code = state.get("error_code", "")
    outcome = code or "completed"
    if code:
        kind, end = EventKind.CHAT_ERROR, {**base, "code": code, "message": state["error_message"]}
    else:
        done = {**base, "text": state.get("reply", ""), "model": handle.provider.model}
        kind, end = EventKind.CHAT_DONE, done

    async def write(pipe: Pipeline) -> None:
        # The reply row is stored (the graph's persist node): the draft has served, and
        # cached history is stale.
        pipe.delete(*draft_keys(base["message_id"]))
        queue_invalidation(pipe, owner.key, base["conversation_id"])
        if chunks.events:
            pipe.hincrbyfloat(*metric_field("herald_chat_tokens_total", labels), len(parts))
        if code == "message_blocked":
            pipe.hincrbyfloat(*metric_field("herald_chat_blocked_total", labels), 1)
        pipe.hincrbyfloat(
            *metric_field("herald_chat_jobs_total", {**labels, "outcome": outcome}), 1
        )
        if rt.events is rt.redis:
            await aqueue_event(pipe, kind, end, owner=owner.key)

    await rt.outbox.send(write)
    if rt.events is not rt.redis:
        await apublish_event(rt.events, kind, end, owner=owner.key)
    return {"outcome": outcome, "chunks": len(parts), "events": chunks.events}


GRAPH_COMPILED = GRAPH.compile()


async def _announce_end(
    rt: ChatRuntime, owner: str, base: dict[str, Any], row: dict[str, Any]
) -> None:
    if row["reply_status"] == MessageStatus.COMPLETED:
        data = {**base, "text": row["reply_text"], "model": row["reply_model"]}
        await _publish(rt, owner, EventKind.CHAT_DONE, data)
    elif row["reply_status"] == MessageStatus.CANCELLED:
        data = {**base, "text": row["reply_text"], "model": row["reply_model"], "cancelled": True}
        await _publish(rt, owner, EventKind.CHAT_DONE, data)
    else:
        code = row["reply_error"] or "internal_error"
        message = ERROR_MESSAGES.get(code, "The reply failed.")
        await _publish(rt, owner, EventKind.CHAT_ERROR, {**base, "code": code, "message": message})


async def _publish(rt: ChatRuntime, owner: str, event: EventKind, data: dict[str, Any]) -> None:
    """One event, with the loop's other Redis writes when the bus is the same Redis."""
    if rt.events is rt.redis:
        await rt.outbox.send(lambda pipe: aqueue_event(pipe, event, data, owner=owner))
    else:
        await apublish_event(rt.events, event, data, owner=owner)


def _enqueued_at() -> float:
    # Time to first chunk is measured from the enqueue, as a user feels it (queue
    # wait included); outside RQ (bench baseline, direct calls) from now.
    job = get_current_job()
    if job is not None and job.enqueued_at is not None:
        return float(job.enqueued_at.timestamp())
    return time.time()
