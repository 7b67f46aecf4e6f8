"""LLM providers behind one small interface: ``stream(messages) -> async text chunks``.

``openai`` speaks any OpenAI-compatible ``/v1/chat/completions`` with ``stream: true``
(server-sent ``data:`` lines, ending ``data: [DONE]``; OpenAI API reference, "Streaming").
``demo`` is offline: a deterministic reply, word by word, no network, no weights.

Every wait is bounded: connect, first token, each gap between chunks, and the whole
call (``LLM_TIMEOUT_SECONDS``, across retries), so a stalled upstream never hangs a
worker. Failures are ``LLMError`` with the ``chat.error`` code they map to.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
import orjson

from core import settings
from jobs.chat.transport import SpreadTransport

Message = dict[str, str]  # {"role": ..., "content": ...}


class LLMError(Exception):
    """``code`` is the chat.error code; ``transient`` errors may be retried (before any
    chunk was sent); ``breaker`` says whether it counts against the circuit breaker."""

    def __init__(
        self, code: str, message: str, *, transient: bool = False, breaker: bool = True
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.transient = transient
        self.breaker = breaker


def timeout_error(message: str) -> LLMError:
    return LLMError("llm_timeout", message, transient=True)


def total_timeout_error(streaming: bool) -> LLMError:
    """The whole call's time (``LLM_TIMEOUT_SECONDS``) ran out. If tokens were still
    arriving, the upstream is healthy and the reply merely long: the breaker must not
    count it, or long replies alone would open it for everyone."""
    return LLMError(
        "llm_timeout",
        "The reply took longer than LLM_TIMEOUT_SECONDS.",
        transient=True,
        breaker=not streaming,
    )


class Provider(Protocol):
    name: str
    model: str

    def stream(self, messages: Sequence[Message], deadline: float) -> AsyncIterator[str]:
        """Yield reply text as it arrives; ``deadline`` is a ``loop.time()`` bound."""
        ...


# --- Output sanitising ----------------------------------------------------------------------
# Chat-template control tokens and role markers a model may echo (ChatML "<|im_start|>",
# Llama 2 "[INST]"/"<<SYS>>", Llama 3 "<|eot_id|>", "<s>"): a client must never see
# them, and they must not re-enter the next prompt as instructions.
_MARKERS = re.compile(
    r"<\|[^|<>\n]{0,40}\|>|\[/?INST\]|<</?SYS>>|</?s>|<\|?(?:system|assistant|user)\|?>",
    re.IGNORECASE,
)
_HOLD = 48  # longest marker we look for, plus slack


class Sanitizer:
    """Removes markers from a stream, even when one is split across chunks."""

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> str:
        buf = _MARKERS.sub("", self._pending + text)
        # Hold back a tail that may be the start of a marker completed by the next chunk.
        cut = max(buf.rfind("<"), buf.rfind("["))
        if cut != -1 and len(buf) - cut < _HOLD and not re.search(r"[>\]]", buf[cut:]):
            self._pending, buf = buf[cut:], buf[:cut]
        else:
            self._pending = ""
        return buf

    def flush(self) -> str:
        rest, self._pending = _MARKERS.sub("", self._pending), ""
        return rest


# --- Providers -----------------------------------------------------------------------------
class DemoProvider:
    """The offline default: says what it is and echoes the message, word by word."""

    name = "demo"

    def __init__(self, delay: float) -> None:
        self.model = settings.DEMO_MODEL
        self._delay = delay

    @staticmethod
    def reply_for(messages: Sequence[Message]) -> str:
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        words = last.split()
        quoted = " ".join(words[:40]) + (" …" if len(words) > 40 else "")
        turns = sum(1 for m in messages if m["role"] == "user")
        return (
            f"This is the Herald demo model, not a real language model. "
            f"You said: “{quoted}” ({len(words)} words; turn {turns} of this conversation). "
            f"Set LLM_PROVIDER=openai with LLM_BASE_URL and LLM_API_KEY for real answers."
        )

    async def stream(self, messages: Sequence[Message], deadline: float) -> AsyncIterator[str]:
        words = self.reply_for(messages).split(" ")
        for i, word in enumerate(words):
            if self._delay > 0:
                await asyncio.sleep(self._delay)
            yield word if i == 0 else " " + word


class OpenAIProvider:
    """Any OpenAI-compatible chat-completions endpoint, streamed over httpx."""

    name = "openai"

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: str,
        model: str,
        first_token_timeout: float,
        idle_timeout: float,
        max_tokens: int,
    ) -> None:
        self.model = model
        self._client = client
        self._url = base_url.rstrip("/") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._first = first_token_timeout
        self._idle = idle_timeout
        self._max_tokens = max_tokens

    async def stream(self, messages: Sequence[Message], deadline: float) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        body: dict[str, object] = {"model": self.model, "messages": list(messages), "stream": True}
        if self._max_tokens > 0:
            # "max_tokens": what OpenAI-compatible servers (vLLM, llama.cpp, Ollama) read;
            # OpenAI itself still accepts it for chat models (API reference, Chat).
            body["max_tokens"] = self._max_tokens
        try:
            async with self._client.stream(
                "POST", self._url, json=body, headers=self._headers
            ) as response:
                await _check_status(response)
                lines = response.aiter_lines()
                got_text = False
                while True:
                    # First token and later gaps have their own bounds; both are capped
                    # by what is left of the whole call.
                    bound = self._idle if got_text else self._first
                    wait = min(bound, deadline - loop.time())
                    if wait <= 0:
                        raise total_timeout_error(streaming=got_text)
                    try:
                        async with asyncio.timeout(wait):
                            line = await anext(lines)
                    except StopAsyncIteration:
                        raise LLMError(
                            "llm_error", "The model's stream ended without [DONE].", transient=True
                        ) from None
                    except TimeoutError:
                        if wait < bound:  # the whole call's time ran out, not this gap's
                            raise total_timeout_error(streaming=got_text) from None
                        what = "the next chunk" if got_text else "the first token"
                        raise timeout_error(f"The model stalled waiting for {what}.") from None
                    text, done = parse_line(line)
                    if done:
                        await _drain(lines, min(self._idle, _DRAIN_SECONDS))
                        return
                    if text:
                        got_text = True
                        yield text
        except httpx.TimeoutException as exc:
            raise timeout_error(
                f"The model did not answer in time ({type(exc).__name__})."
            ) from exc
        except httpx.TransportError as exc:
            raise LLMError(
                "llm_error", f"Could not reach the model ({type(exc).__name__}).", transient=True
            ) from exc


# After [DONE] the body's end (the last chunk of the chunked encoding) is a moment
# away; reading it lets httpcore keep the connection alive for the next reply, where
# leaving it unread closes the connection (a TCP, or TLS, handshake per reply).
_DRAIN_SECONDS = 0.5


async def _drain(lines: AsyncIterator[str], seconds: float) -> None:
    with contextlib.suppress(TimeoutError, httpx.HTTPError):
        async with asyncio.timeout(seconds):
            async for _ in lines:
                pass


async def _check_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    await response.aread()
    status = response.status_code
    # 408/429/5xx are the upstream's trouble (RFC 9110 section 15): retried and counted by
    # the breaker. Other 4xx are this request's fault: neither retried nor counted.
    upstream = status >= 500 or status in (408, 429)
    raise LLMError(
        "llm_error",
        f"The model answered HTTP {status}.",
        transient=upstream,
        breaker=upstream,
    )


def parse_line(line: str) -> tuple[str, bool]:
    """One SSE line of a chat-completions stream → (text, done). Raises on malformed."""
    if not line or line.startswith(":"):
        return "", False
    field, _, value = line.partition(":")
    if field != "data":
        return "", False  # "event:", "id:", "retry:" carry nothing we need
    value = value.removeprefix(" ")
    if value == "[DONE]":
        return "", True
    try:
        chunk = orjson.loads(value)
        if "error" in chunk:
            raise LLMError("llm_error", "The model reported an error mid-stream.")
        choices = chunk["choices"]
        if not choices:  # usage-only chunk (stream_options.include_usage)
            return "", False
        content = choices[0].get("delta", {}).get("content") or ""
    except LLMError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, IndexError):
        raise LLMError("llm_error", "The model sent a malformed stream chunk.") from None
    if not isinstance(content, str):
        raise LLMError("llm_error", "The model sent a malformed stream chunk.")
    return content, False


@dataclass
class ProviderHandle:
    provider: Provider
    client: httpx.AsyncClient | None

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()


@functools.cache
def ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~20 ms; a client per job must not pay it each time.
    return httpx.create_ssl_context()


def open_provider() -> ProviderHandle:
    """The configured provider; close the handle when the job (or process) is done."""
    if settings.LLM_PROVIDER == "demo":
        return ProviderHandle(DemoProvider(settings.DEMO_WORD_DELAY_SECONDS), None)
    if settings.LLM_PROVIDER != "openai":
        raise ValueError(f"LLM_PROVIDER must be 'demo' or 'openai', not {settings.LLM_PROVIDER!r}")
    # read= is a backstop only: stream() enforces first-token, idle and total bounds.
    timeout = httpx.Timeout(
        connect=settings.LLM_CONNECT_TIMEOUT_SECONDS,
        read=settings.LLM_TIMEOUT_SECONDS,
        write=settings.LLM_CONNECT_TIMEOUT_SECONDS,
        pool=settings.LLM_CONNECT_TIMEOUT_SECONDS,
    )
    transport = SpreadTransport(settings.LLM_MAX_CONCURRENCY, ssl_context())
    client = httpx.AsyncClient(timeout=timeout, transport=transport)
    provider = OpenAIProvider(
        client,
        base_url=settings.LLM_BASE_URL,
        api_key=str(settings.LLM_API_KEY),
        model=settings.LLM_MODEL,
        first_token_timeout=settings.LLM_FIRST_TOKEN_TIMEOUT_SECONDS,
        idle_timeout=settings.LLM_IDLE_TIMEOUT_SECONDS,
        max_tokens=settings.LLM_MAX_TOKENS,
    )
    return ProviderHandle(provider, client)


def configured_model() -> str:
    """The model name metrics are labelled with (from configuration, never hard-coded)."""
    return settings.DEMO_MODEL if settings.LLM_PROVIDER == "demo" else settings.LLM_MODEL


async def stream_with_retry(
    provider: Provider, messages: Sequence[Message], timeout: float
) -> AsyncIterator[str]:
    """``provider.stream`` with retries of transient errors before the first chunk
    (exponential backoff), never after: a client must not see a reply twice."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    attempt = 0
    while True:
        sanitizer = Sanitizer()
        sent = False
        try:
            async for raw in provider.stream(messages, deadline):
                clean = sanitizer.feed(raw)
                if clean:
                    sent = True
                    yield clean
            rest = sanitizer.flush()
            if rest:
                yield rest
            return
        except LLMError as exc:
            backoff = settings.LLM_RETRY_BACKOFF_SECONDS * 2**attempt
            if sent or not exc.transient or attempt >= settings.LLM_RETRIES:
                raise
            if loop.time() + backoff >= deadline:
                raise
            attempt += 1
            await asyncio.sleep(backoff)
