"""Fault: the LLM upstream refuses connections, answers 500, stalls mid-stream, sends a
malformed chunk — seen by real worker processes (tests/test_chat_job.py covers the same
logic in-process).

Promise: each chat ends with the specified ``chat.error`` code within a bound set by the
configured timeouts; after ``LLM_BREAKER_FAILURES`` failures the breaker opens and the
next chat fails fast with ``llm_unavailable`` without calling the upstream; after
``LLM_BREAKER_RESET_SECONDS`` one probe succeeds and closes it; and the worker is never
stuck: it is idle again right after every failure and takes the next job.
"""

from __future__ import annotations

import time

import anyio
import httpx
import orjson
import pytest
from rq import Queue, Worker

from app.dev.embedded import free_port
from app.security.auth import mint_token
from core import settings
from tests.faults.clients import Client, wait_for
from tests.faults.stack import Stack
from tests.support.openai_server import Fault, openai_server
from tests.support.procs import Web

pytestmark = [pytest.mark.anyio, pytest.mark.faults]

IDLE_TIMEOUT = 1.0
FIRST_TOKEN_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0
BREAKER_FAILURES = 3
BREAKER_RESET = 3.0
# Slack over the configured timeout for the job to publish its error event.
SLACK_SECONDS = 3.0
IDLE_BOUND_SECONDS = 3.0  # from the terminal event to the worker idle again

FIGURES: dict[str, float] = {}


def llm_env(base_url: str, model: str) -> dict[str, str]:
    return {
        "LLM_PROVIDER": "openai",
        "LLM_BASE_URL": base_url,
        "LLM_API_KEY": "test-key",
        "LLM_MODEL": model,
        "LLM_RETRIES": "0",
        "LLM_CONNECT_TIMEOUT_SECONDS": str(CONNECT_TIMEOUT),
        "LLM_FIRST_TOKEN_TIMEOUT_SECONDS": str(FIRST_TOKEN_TIMEOUT),
        "LLM_IDLE_TIMEOUT_SECONDS": str(IDLE_TIMEOUT),
        "LLM_BREAKER_FAILURES": str(BREAKER_FAILURES),
        "LLM_BREAKER_RESET_SECONDS": str(BREAKER_RESET),
        "CHAT_JOB_RETRIES": "0",
        "WORKER_CHAT_PROCESSES": "1",
        "WORKER_UPLOAD_PROCESSES": "0",
    }


def chat_workers_idle(stack: Stack) -> bool:
    client = stack.redis.client()
    try:
        workers = Worker.all(queue=Queue(settings.CHAT_QUEUE, connection=client))
        return bool(workers) and all(w.get_state() == "idle" for w in workers)
    finally:
        client.close()


class Chatter:
    def __init__(self, stack: Stack, web: Web, client: Client) -> None:
        self.stack = stack
        self.web = web
        self.client = client
        self.auth = {"authorization": f"Bearer {client.token}"}

    async def chat(self, text: str, bound: float) -> tuple[str, dict[str, object], float]:
        """Post one message; returns (event type, data, seconds) of its terminal event."""
        async with httpx.AsyncClient(base_url=self.web.base, timeout=10) as http:
            posted = await http.post("/chat/messages", json={"message": text}, headers=self.auth)
        assert posted.status_code == 202, posted.text
        message_id = posted.json()["message_id"]
        started = time.monotonic()

        def terminal() -> tuple[str, dict[str, object]] | None:
            for e in self.client.events:
                if e.type in ("chat.done", "chat.error"):
                    data = orjson.loads(e.data)
                    if data["message_id"] == message_id:
                        return e.type, data
            return None

        await wait_for(lambda: terminal() is not None, bound, f"the end of {text!r}")
        elapsed = time.monotonic() - started
        kind, data = terminal()  # type: ignore[misc]
        await wait_for(lambda: chat_workers_idle(self.stack), IDLE_BOUND_SECONDS, "worker idle")
        return kind, data, elapsed


def reset_breaker(stack: Stack) -> None:
    # The breaker is per provider and lives in Redis: each test starts it closed.
    client = stack.redis.client()
    try:
        client.delete(*(f"{settings.REDIS_PREFIX}:breaker:llm:openai{s}" for s in ("", ":probe")))
    finally:
        client.close()


async def open_chatter(stack: Stack, user: str) -> Chatter:
    reset_breaker(stack)
    web = stack.start_web()
    client = Client(user, mint_token(user), web.port)
    client.start()
    await wait_for(lambda: client.connected, 20, "stream")
    await wait_for(lambda: chat_workers_idle(stack), 30, "the chat worker to be up")
    return Chatter(stack, web, client)


async def test_upstream_refusing_connections_opens_the_breaker(stack: Stack) -> None:
    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    stack.start_worker("worker-llm-refused", **llm_env(closed, "fault-refused"))
    chatter = await open_chatter(stack, "llm-refused")
    try:
        codes = []
        for i in range(BREAKER_FAILURES):
            kind, data, seconds = await chatter.chat(f"refused {i}", 30)
            assert kind == "chat.error"
            codes.append(data["code"])
            FIGURES["refused_s"] = max(FIGURES.get("refused_s", 0), seconds)
        assert codes == ["llm_error"] * BREAKER_FAILURES
        kind, data, seconds = await chatter.chat(
            "breaker now open", CONNECT_TIMEOUT + SLACK_SECONDS
        )
        assert (kind, data["code"]) == ("chat.error", "llm_unavailable")
        FIGURES["open_fail_fast_s"] = seconds
    finally:
        await chatter.client.stop()
    print(
        f"\nllm refused: llm_error within {FIGURES['refused_s']:.2f} s each; breaker open → "
        f"llm_unavailable in {FIGURES['open_fail_fast_s']:.2f} s"
    )


async def test_upstream_500_stall_malformed_then_recovery(stack: Stack) -> None:
    with openai_server() as upstream:
        stack.start_worker("worker-llm-faults", **llm_env(upstream.base_url, "fault-upstream"))
        chatter = await open_chatter(stack, "llm-faults")
        try:
            upstream.script(Fault("stall", after=2))
            kind, data, seconds = await chatter.chat("stall", IDLE_TIMEOUT + SLACK_SECONDS)
            assert (kind, data["code"]) == ("chat.error", "llm_timeout")
            FIGURES["stall_s"] = seconds

            upstream.script(Fault("malformed", after=1))
            kind, data, seconds = await chatter.chat("malformed", SLACK_SECONDS)
            assert (kind, data["code"]) == ("chat.error", "llm_error")
            FIGURES["malformed_s"] = seconds

            upstream.script(Fault("500"))
            kind, data, seconds = await chatter.chat("error 500", SLACK_SECONDS)
            assert (kind, data["code"]) == ("chat.error", "llm_error")
            FIGURES["error500_s"] = seconds

            # Three failures in a row: open. The upstream is not called at all now.
            calls = len(upstream.requests)
            kind, data, seconds = await chatter.chat("while open", SLACK_SECONDS)
            assert (kind, data["code"]) == ("chat.error", "llm_unavailable")
            assert len(upstream.requests) == calls

            await anyio.sleep(BREAKER_RESET)  # the open period ends; the upstream is healthy again
            kind, data, seconds = await chatter.chat("probe", FIRST_TOKEN_TIMEOUT + SLACK_SECONDS)
            assert kind == "chat.done", data
            kind, data, _ = await chatter.chat("closed again", FIRST_TOKEN_TIMEOUT + SLACK_SECONDS)
            assert kind == "chat.done", data
            assert len(upstream.requests) == calls + 2
        finally:
            await chatter.client.stop()
    print(
        f"\nllm faults: stall → llm_timeout {FIGURES['stall_s']:.2f} s, malformed → llm_error "
        f"{FIGURES['malformed_s']:.2f} s, 500 → llm_error {FIGURES['error500_s']:.2f} s; "
        "breaker open → llm_unavailable without an upstream call; probe after reset closes it"
    )
