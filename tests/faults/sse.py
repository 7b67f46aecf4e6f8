"""A spec-compliant SSE parser and a light raw-socket SSE client.

The parser follows WHATWG HTML, section 9.2.6 "Interpreting an event stream"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):
UTF-8 decode (one leading BOM stripped), lines end at CRLF, LF or CR, a blank line
dispatches, ``data`` lines join with LF, the last-event-ID buffer survives dispatches,
``id`` values containing NULL are ignored, ``retry`` must be all ASCII digits, and an
event without data is not dispatched.

The client speaks HTTP/1.1 over ``asyncio.open_connection`` (chunked bodies, as uvicorn
sends streaming responses): a thousand of them cost far less than httpx clients.
"""

from __future__ import annotations

import asyncio
import codecs
from dataclasses import dataclass, field


@dataclass
class Event:
    type: str
    data: str
    last_event_id: str


@dataclass
class SSEParser:
    events: list[Event] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
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
        return self._lines()

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
        self.events.extend(out)
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


class HTTPError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200]!r}")
        self.status = status
        self.body = body


async def open_sse(
    host: str, port: int, path: str, headers: dict[str, str]
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send the GET and read the response head; raises HTTPError unless 200."""
    reader, writer = await asyncio.open_connection(host, port)
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}", "Accept: text/event-stream"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except BaseException:
        writer.close()
        raise
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        body = b""
        try:
            body = await asyncio.wait_for(_read_body(reader, head), timeout=5)
        finally:
            writer.close()
        raise HTTPError(status, body)
    return reader, writer


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    if b"chunked" in head.lower():
        return b"".join([c async for c in chunks(reader)])
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


async def chunks(reader: asyncio.StreamReader):  # type: ignore[no-untyped-def]
    """The chunks of an HTTP/1.1 chunked body (RFC 9112 section 7.1); ends at 0."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]
