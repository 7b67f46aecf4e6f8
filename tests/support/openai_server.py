"""A real loopback HTTP server speaking the OpenAI chat-completions streaming protocol.

A tiny Starlette app under uvicorn in a thread, on a free port. Each request takes the
next scripted ``Fault`` (or streams normally when none is queued):

- ``Fault("500")``: HTTP 500;
- ``Fault("stall", after=n)``: sends n chunks, then goes silent (connection open);
- ``Fault("malformed", after=n)``: n good chunks, then a line that is not JSON;
- ``Fault("slow_first", delay=s)``: waits s seconds before the first chunk.

With ``echo=True`` the reply is the last user message, word by word, so concurrent
replies can each be checked for their own text. ``in_flight`` / ``max_in_flight`` count
the streams open at once (what a provider's concurrency limit would see).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

DEFAULT_REPLY = ["Hello", " from", " the", " loopback", " model", "."]


@dataclass
class Fault:
    kind: str
    after: int = 0
    delay: float = 0.0
    # Only for a request whose last message contains this (concurrent tests aim a
    # fault at one reply among many).
    match: str | None = None


class OpenAIServer:
    def __init__(
        self, reply: list[str] | None = None, chunk_delay: float = 0.0, echo: bool = False
    ) -> None:
        self.reply = list(reply or DEFAULT_REPLY)
        self.chunk_delay = chunk_delay
        self.echo = echo
        self.in_flight = 0
        self.max_in_flight = 0
        self.faults: deque[Fault] = deque()
        self.requests: list[dict[str, object]] = []
        self.peers: list[tuple[str, int]] = []  # each request's client address: a reused
        # connection shows up as the same address twice
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        app = Starlette(routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])])
        config = uvicorn.Config(
            app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self._server.run(sockets=[self._sock])

    def start(self) -> OpenAIServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("loopback OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stop.set()
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()

    def script(self, *faults: Fault) -> None:
        self.faults.extend(faults)

    async def _complete(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if request.client is not None:
            self.peers.append((request.client.host, request.client.port))
        fault = self._take_fault(body)
        if fault.kind == "500":
            return JSONResponse({"error": {"message": "upstream exploded"}}, status_code=500)
        return StreamingResponse(self._chunks(body, fault), media_type="text/event-stream")

    def _take_fault(self, body: dict[str, object]) -> Fault:
        messages = body.get("messages")
        text = str(messages[-1]["content"]) if isinstance(messages, list) and messages else ""
        for fault in self.faults:
            if fault.match is None or fault.match in text:
                self.faults.remove(fault)
                return fault
        return Fault("ok")

    async def _chunks(self, body: dict[str, object], fault: Fault) -> AsyncIterator[bytes]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            async for chunk in self._stream(body, fault):
                yield chunk
        finally:
            self.in_flight -= 1

    def _reply_for(self, body: dict[str, object]) -> list[str]:
        if not self.echo:
            return self.reply
        messages = body.get("messages")
        last = messages[-1]["content"] if isinstance(messages, list) and messages else ""
        words = str(last).split(" ")
        return [words[0], *(" " + w for w in words[1:])]

    async def _stream(self, body: dict[str, object], fault: Fault) -> AsyncIterator[bytes]:
        model = str(body.get("model", "loopback"))
        if fault.kind == "slow_first":
            await self._sleep(fault.delay)
        # The role-only delta real servers send first: it carries no text.
        yield _sse({"choices": [{"index": 0, "delta": {"role": "assistant"}}], "model": model})
        for i, piece in enumerate(self._reply_for(body)):
            if fault.kind in ("stall", "malformed") and i == fault.after:
                if fault.kind == "malformed":
                    yield b"data: {this is not json\n\n"
                    return
                await self._sleep(3600)
                return
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            delta = {"choices": [{"index": 0, "delta": {"content": piece}}], "model": model}
            yield _sse(delta)
        yield _sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        yield b"data: [DONE]\n\n"

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            await asyncio.sleep(0.02)


def _sse(data: dict[str, object]) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


@contextmanager
def openai_server(
    reply: list[str] | None = None, chunk_delay: float = 0.0, echo: bool = False
) -> Iterator[OpenAIServer]:
    server = OpenAIServer(reply, chunk_delay, echo).start()
    try:
        yield server
    finally:
        server.stop()


async def call_directly(
    base_url: str, n: int, *, at_once: int = 1
) -> tuple[list[float], list[float]]:
    """The baseline of the chat benchmarks: ``n`` requests made as a chat job's provider
    makes them (``OpenAIProvider``, the same request body, the chat worker's upstream
    transport with its keep-alive pools), ``at_once`` at a time (after one warm-up round
    that opens the connections); returns the seconds to each first piece and to each
    whole reply."""
    from core import settings
    from jobs.chat.llm import OpenAIProvider, ssl_context
    from jobs.chat.transport import SpreadTransport

    first: list[float] = []
    whole: list[float] = []
    transport = SpreadTransport(max(1, at_once), ssl_context())
    async with httpx.AsyncClient(transport=transport, timeout=60) as client:
        provider = OpenAIProvider(
            client,
            base_url=base_url,
            api_key="",
            model="loopback-bench",
            first_token_timeout=30,
            idle_timeout=30,
            max_tokens=settings.LLM_MAX_TOKENS,
        )
        messages = [{"role": "user", "content": "hello"}]

        async def one(record: bool) -> None:
            t0 = time.perf_counter()
            got_first = False
            async for _text in provider.stream(messages, asyncio.get_running_loop().time() + 60):
                if not got_first and record:
                    first.append(time.perf_counter() - t0)
                got_first = True
            if record:
                whole.append(time.perf_counter() - t0)

        if at_once > 1:
            await asyncio.gather(*(one(False) for _ in range(at_once)))
        for start in range(0, n, at_once):
            await asyncio.gather(*(one(True) for _ in range(min(at_once, n - start))))
    return first, whole
