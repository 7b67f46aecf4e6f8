"""The one SSE client of the tests and the benchmarks: a WHATWG parser, an HTTP/1.1
chunked decoder, a raw-socket opener and an adapter for httpx streaming responses.

The parser follows WHATWG HTML, section 9.2.6 "Interpreting an event stream"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
UTF-8 decode (one leading BOM stripped), lines end at CRLF, LF or CR, a blank line
dispatches, ``data`` lines join with LF, the last-event-ID buffer survives dispatches,
``id`` values containing NULL are ignored, ``retry`` must be all ASCII digits, and an
event without data is not dispatched.

Raw sockets (``open_sse``, ``ChunkedDecoder``) are for many clients at once: a thousand
of them cost far less than httpx clients (tests/faults, scripts/bench_sse.py). uvicorn
sends a streaming body chunked (RFC 9112 section 7.1).
"""

from __future__ import annotations

import asyncio
import codecs
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: str
    last_event_id: str

    def json(self) -> Any:
        return orjson.loads(self.data)


@dataclass
class SSEParser:
    events: list[Event] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    keep: bool = True  # False: events are only returned by feed(), not kept in .events
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace")
    )
    _buf: str = ""
    _started: bool = False
    _skip_lf: bool = False  # the previous chunk ended in CR: a leading LF belongs to it
    _data: str = ""
    _type: str = ""
    _last_id: str = ""

    def feed(self, chunk: bytes) -> list[Event]:
        text = self._decoder.decode(chunk)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")
        self._buf += text
        out = self._lines()
        if self.keep:
            self.events.extend(out)
        return out

    def _lines(self) -> list[Event]:
        out: list[Event] = []
        buf = self._buf
        start = 0
        while True:
            cr = buf.find("\r", start)
            lf = buf.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                line = buf[start:cr]
                if cr + 1 < len(buf):
                    start = cr + 2 if buf[cr + 1] == "\n" else cr + 1
                else:
                    start = cr + 1
                    self._skip_lf = True
            else:
                line = buf[start:lf]
                start = lf + 1
            event = self._line(line)
            if event is not None:
                out.append(event)
        self._buf = buf[start:]
        return out

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:])
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\0" not in value:
                self._last_id = value
        elif name == "retry" and value and all("0" <= c <= "9" for c in value):
            self.retry = int(value)
        return None

    def _dispatch(self) -> Event | None:
        if self._data == "":
            self._type = ""
            return None
        data = self._data.removesuffix("\n")
        event = Event(self._type or "message", data, self._last_id)
        self._data = ""
        self._type = ""
        return event


class ChunkedDecoder:
    """Incremental HTTP/1.1 chunked transfer decoding; ``done`` after the last chunk."""

    def __init__(self) -> None:
        self.done = False
        self._buf = b""
        self._left = 0  # bytes of the current chunk still to come
        self._crlf = False  # the CRLF that ends a chunk's data is still to come

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out: list[bytes] = []
        while not self.done:
            if self._left:
                piece = self._buf[: self._left]
                out.append(piece)
                self._left -= len(piece)
                self._buf = self._buf[len(piece) :]
                if self._left:
                    break
                self._crlf = True
            if self._crlf:
                if len(self._buf) < 2:
                    break
                self._buf = self._buf[2:]
                self._crlf = False
            end = self._buf.find(b"\r\n")
            if end < 0:
                break
            size = int(self._buf[:end].split(b";")[0], 16)
            self._buf = self._buf[end + 2 :]
            if size == 0:
                self.done = True
            self._left = size
        return b"".join(out)


class HTTPError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


def request(host: str, port: int, path: str, headers: dict[str, str]) -> bytes:
    """The bytes of an SSE GET, as EventSource sends it."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


async def open_sse(
    host: str, port: int, path: str, headers: dict[str, str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send the GET and read the response head; raises HTTPError unless 200."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request(host, port, path, headers))
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except BaseException:
        writer.close()
        raise
    status = status_of(head)
    if status != 200:
        body = b""
        try:
            body = await asyncio.wait_for(_read_body(reader, head), timeout=5)
        finally:
            writer.close()
        raise HTTPError(status, body)
    return reader, writer


async def read_events(reader: asyncio.StreamReader, parser: SSEParser) -> AsyncIterator[Event]:
    """The events of an open stream (after ``open_sse``) until the body ends."""
    decoder = ChunkedDecoder()
    while not decoder.done:
        data = await reader.read(65536)
        if not data:
            raise asyncio.IncompleteReadError(b"", None)
        for event in parser.feed(decoder.feed(data)):
            yield event


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    if b"chunked" in head.lower():
        decoder = ChunkedDecoder()
        body = b""
        while not decoder.done:
            data = await reader.read(65536)
            if not data:
                break
            body += decoder.feed(data)
        return body
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


class EventStream:
    """The events of an httpx streaming response: ``async for event in EventStream(r)``."""

    def __init__(self, response: httpx.Response) -> None:
        self.parser = SSEParser(keep=False)
        self._bytes = response.aiter_bytes()
        self._pending: deque[Event] = deque()

    async def connected(self) -> None:
        """Wait for the stream's opening comment (``: connected``); events read on the
        way are kept for the iteration."""
        while not self.parser.comments:
            self._pending.extend(self.parser.feed(await anext(self._bytes)))

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._pending:
            self._pending.extend(self.parser.feed(await anext(self._bytes)))
        return self._pending.popleft()

    async def until(self, types: str | set[str], **match: Any) -> list[Event]:
        """Events up to and including the first of ``types`` whose JSON data has the
        ``match`` fields; AssertionError if the stream ends first."""
        wanted = {types} if isinstance(types, str) else types
        seen = []
        async for event in self:
            seen.append(event)
            if event.type in wanted:
                data = event.json()
                if all(data.get(k) == v for k, v in match.items()):
                    return seen
        raise AssertionError(f"stream ended before {types}: {[e.type for e in seen]}")
