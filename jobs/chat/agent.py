"""The chat agent: a LangGraph graph, guard → respond → persist, with memory.

Memory is LangGraph's PostgreSQL checkpointer (thread = conversation): each turn
appends the user's message and the reply to ``messages`` only when the reply
succeeded, so blocked prompts and failed turns never enter later context. Reply text
leaves the graph as it arrives, through the context's ``on_chunk`` callback, called by
the respond node for each piece (not LangGraph's stream writer: its hand-off to the
``astream`` consumer runs only when the node's task next yields, which with a fast
upstream held the first chunk back by ~0.8 ms; scripts/bench_chat.py).
Message ids are fixed per turn, so re-running a turn (an RQ retry) replaces rather
than duplicates it (``add_messages`` merges by id).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

import redis
from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from psycopg import AsyncConnection

from core import settings
from core.drafts import reply_id
from core.history import invalidate_history
from core.principal import Identity
from core.statuses import MessageStatus
from jobs.chat.breaker import Breaker, BreakerOpen
from jobs.chat.guard import check_message, explain
from jobs.chat.llm import LLMError, Message, Provider, stream_with_retry

security_log = logging.getLogger("herald.security")


class ChatState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    conversation_id: str
    message_id: str
    text: str
    reply: str
    error_code: str
    error_message: str
    # Set when the guard flagged the message in GUARD_MODE=flag: the reply proceeds.
    flagged: bool


@dataclass
class AgentContext:
    conn: AsyncConnection[Any]
    # The job's one connection is shared with the checkpointer, which writes from
    # background tasks; it serialises every use with this lock (AsyncPostgresSaver.lock,
    # langgraph-checkpoint-postgres aio.py ``_cursor``), so ours must take it too.
    db_lock: asyncio.Lock
    redis: redis.Redis
    provider: Provider
    breaker: Breaker
    owner: Identity
    # Publishes one piece of the reply ({"index", "text"}) at once, from the node.
    on_chunk: Callable[[dict[str, Any]], None]
    labels: dict[str, str] = field(default_factory=dict)


def symbol_ratio(text: str) -> float:
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return 0.0
    return sum(1 for c in visible if not c.isalnum()) / len(visible)


async def guard(state: ChatState, runtime: Runtime[AgentContext]) -> ChatState:
    text = state["text"]
    # The web checked these too; a job can be enqueued by other means, so check again.
    if not text.strip() or len(text) > settings.CHAT_MAX_CHARS:
        return _fail("validation_error", "The message is empty or too long.")
    ratio = symbol_ratio(text)
    if ratio > settings.CHAT_MAX_SYMBOL_RATIO:
        _log_blocked(state, runtime.context, score=ratio, reasons=("symbol_ratio",))
        return _fail("message_blocked", "The message has too many non-alphanumeric characters.")
    verdict = check_message(text)
    if not verdict.blocked:
        return {"error_code": "", "error_message": "", "flagged": False}
    flag_only = settings.GUARD_MODE == "flag"
    _log_blocked(
        state,
        runtime.context,
        score=verdict.score,
        reasons=verdict.reasons,
        parts={"rule_score": verdict.rule_score, "model_score": verdict.model_score},
        action="flagged" if flag_only else "blocked",
    )
    if flag_only:
        return {"error_code": "", "error_message": "", "flagged": True}
    return _fail("message_blocked", explain(verdict))


def _fail(code: str, message: str) -> ChatState:
    return {"error_code": code, "error_message": message, "reply": ""}


def _log_blocked(
    state: ChatState,
    ctx: AgentContext,
    *,
    score: float,
    reasons: tuple[str, ...],
    parts: dict[str, float] | None = None,
    action: str = "blocked",
) -> None:
    # The score and which part fired, never the whole text: a flagged message may be a
    # false positive, so only a short excerpt and a digest (to match repeats) are kept.
    text = state["text"]
    security_log.warning(
        f"chat message {action}",
        extra={
            "user_id": ctx.owner.user_id,
            "tenant": ctx.owner.tenant,
            "conversation_id": state["conversation_id"],
            "message_id": state["message_id"],
            "action": action,
            "score": score,
            **(parts or {}),
            "reasons": list(reasons),
            "chars": len(text),
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "excerpt": text[:80],
        },
    )


def prompt(state: ChatState) -> list[Message]:
    history = state.get("messages", [])[-settings.CHAT_CONTEXT_MESSAGES :]
    out: list[Message] = [{"role": "system", "content": settings.CHAT_SYSTEM_PROMPT}]
    for m in history:
        role = "user" if isinstance(m, HumanMessage) else "assistant"
        out.append({"role": role, "content": str(m.content)})
    out.append({"role": "user", "content": state["text"]})
    return out


async def respond(state: ChatState, runtime: Runtime[AgentContext]) -> ChatState:
    ctx = runtime.context
    try:
        permit = ctx.breaker.before_call()
    except BreakerOpen:
        return _fail("llm_unavailable", "The language model is unavailable; retry later.")
    parts: list[str] = []
    try:
        async for text in stream_with_retry(
            ctx.provider, prompt(state), settings.LLM_TIMEOUT_SECONDS
        ):
            ctx.on_chunk({"index": len(parts), "text": text})
            parts.append(text)
    except LLMError as exc:
        if exc.breaker:
            ctx.breaker.failed(permit)
        else:
            ctx.breaker.succeeded(permit)  # the upstream answered; the request was at fault
        return {"error_code": exc.code, "error_message": exc.message, "reply": "".join(parts)}
    except BaseException:
        ctx.breaker.release(permit)
        raise
    ctx.breaker.succeeded(permit)
    reply = "".join(parts)
    turn: list[AnyMessage] = [
        HumanMessage(state["text"], id=state["message_id"]),
        AIMessage(reply, id=reply_id(state["message_id"])),
    ]
    return {"messages": turn, "reply": reply, "error_code": "", "error_message": ""}


async def save_turn(
    conn: AsyncConnection[Any],
    *,
    conversation_id: str,
    message_id: str,
    reply: str,
    model: str | None,
    error_code: str,
    flagged: bool = False,
) -> None:
    """Store how a turn ended: the assistant's row (upserted under its fixed id, so a
    retry replaces it), the user message's status and the conversation's recency.
    The caller holds a transaction, so the three land together. ``flagged``: the
    guard flagged the message in GUARD_MODE=flag, and the reply went ahead."""
    answered = MessageStatus.FLAGGED if flagged else MessageStatus.ANSWERED
    user_status = {"": answered, "message_blocked": MessageStatus.BLOCKED}
    await conn.execute(
        "INSERT INTO messages (id, conversation_id, role, text, status, model, error_code,"
        " reply_to) VALUES (%s, %s, 'assistant', %s, %s, %s, %s, %s)"
        " ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, status = EXCLUDED.status,"
        " model = EXCLUDED.model, error_code = EXCLUDED.error_code",
        (
            reply_id(message_id),
            conversation_id,
            reply,
            MessageStatus.FAILED if error_code else MessageStatus.COMPLETED,
            model,
            error_code or None,
            message_id,
        ),
    )
    await conn.execute(
        "UPDATE messages SET status = %s WHERE id = %s",
        (user_status.get(error_code, MessageStatus.FAILED), message_id),
    )
    await conn.execute(
        "UPDATE conversations SET updated_at = now() WHERE id = %s", (conversation_id,)
    )


async def persist(state: ChatState, runtime: Runtime[AgentContext]) -> ChatState:
    ctx = runtime.context
    async with ctx.db_lock, ctx.conn.transaction():
        await save_turn(
            ctx.conn,
            conversation_id=state["conversation_id"],
            message_id=state["message_id"],
            reply=state.get("reply", ""),
            model=ctx.provider.model,
            error_code=state.get("error_code", ""),
            flagged=state.get("flagged", False),
        )
    invalidate_history(ctx.redis, ctx.owner.key, state["conversation_id"])
    return {}


def after_guard(state: ChatState) -> str:
    return "persist" if state.get("error_code") else "respond"


def build_graph() -> StateGraph[ChatState, AgentContext, ChatState, ChatState]:
    graph = StateGraph(ChatState, context_schema=AgentContext)
    graph.add_node("guard", guard)
    graph.add_node("respond", respond)
    graph.add_node("persist", persist)
    graph.add_edge(START, "guard")
    graph.add_conditional_edges("guard", after_guard, ["respond", "persist"])
    graph.add_edge("respond", "persist")
    graph.add_edge("persist", END)
    return graph


GRAPH = build_graph()
