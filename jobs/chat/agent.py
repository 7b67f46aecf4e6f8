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

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AIMessage, AnyMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.graph.message import add_messages
from langgraph.runtime import Runtime
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from core import settings
from core.principal import Identity
from core.replies import reply_id, store_reply
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
    # Connections are borrowed per statement: hundreds of replies stream at once per
    # process, and none holds a PostgreSQL connection while it waits on the model.
    pool: AsyncConnectionPool[AsyncConnection[dict[str, Any]]]
    provider: Provider
    breaker: Breaker
    owner: Identity
    # Takes each piece of the reply as it arrives (the job publishes it as chat.chunk).
    on_chunk: Callable[[str], Awaitable[None]]
    # The process-wide cap on concurrent upstream requests (ChatRuntime.upstream).
    upstream: Any = None
    labels: dict[str, str] = field(default_factory=dict)
    # The reply so far: a stopped reply is stored with what it had.
    parts: list[str] = field(default_factory=list)


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
        permit = await ctx.breaker.before_call()
    except BreakerOpen:
        return _fail("llm_unavailable", "The language model is unavailable; retry later.")
    parts = ctx.parts
    try:
        async with ctx.upstream or _unlimited():
            async for text in stream_with_retry(
                ctx.provider, prompt(state), settings.LLM_TIMEOUT_SECONDS
            ):
                parts.append(text)
                await ctx.on_chunk(text)
    except LLMError as exc:
        if exc.breaker:
            await ctx.breaker.failed(permit)
        else:
            await ctx.breaker.succeeded(permit)  # the upstream answered; the request was at fault
        return {"error_code": exc.code, "error_message": exc.message, "reply": "".join(parts)}
    except BaseException:
        await ctx.breaker.release(permit)
        raise
    await ctx.breaker.succeeded(permit)
    reply = "".join(parts)
    turn: list[AnyMessage] = [
        HumanMessage(state["text"], id=state["message_id"]),
        AIMessage(reply, id=reply_id(state["message_id"])),
    ]
    return {"messages": turn, "reply": reply, "error_code": "", "error_message": ""}


async def persist(state: ChatState, runtime: Runtime[AgentContext]) -> ChatState:
    ctx = runtime.context
    code = state.get("error_code", "")
    async with ctx.pool.connection() as conn:
        await store_reply(
            conn,
            message_id=state["message_id"],
            conversation_id=state["conversation_id"],
            text=state.get("reply", ""),
            model=ctx.provider.model,
            error_code=code,
            flagged=state.get("flagged", False),
        )
    # The history cache is invalidated by the job's end write (jobs/chat/job.py), in the
    # round trip that carries chat.done, before a client could refetch.
    return {}


@contextlib.asynccontextmanager
async def _unlimited() -> AsyncIterator[None]:
    yield


async def after_guard(state: ChatState) -> str:
    # A coroutine: LangGraph runs a plain function in a thread of the loop's executor
    # (langgraph/_internal/_runnable.py, coerce_to_runnable), a hop per reply.
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
