"""A loopback TCP proxy that can blackhole chosen connections: bytes stop flowing both
ways but no socket is closed, as when a network partition or a NAT / load balancer drops
an idle flow. A closed connection is easy to notice; this one is not."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class _Flow:
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    subscriber: bool = False  # the client sent SUBSCRIBE on it
    frozen: bool = False


class BlackholeProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.flows: list[_Flow] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze_subscribers(self) -> int:
        frozen = 0
        for flow in self.flows:
            if flow.subscriber and not flow.frozen:
                flow.frozen = True
                frozen += 1
        return frozen

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for flow in self.flows:
            for writer in flow.writers:
                writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        flow = _Flow(writers=[writer, up_writer])
        self.flows.append(flow)
        for task in (
            asyncio.ensure_future(self._pump(reader, up_writer, flow, upstream=True)),
            asyncio.ensure_future(self._pump(up_reader, writer, flow, upstream=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flow: _Flow,
        *,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if upstream and b"SUBSCRIBE" in data.upper():
                    flow.subscriber = True
                if flow.frozen:
                    continue  # swallowed: neither side hears of it
                writer.write(data)
                await writer.drain()
        if not flow.frozen:
            writer.close()
