"""Many SSE clients at once, each a task on a raw socket that reconnects with
Last-Event-ID the way a browser's EventSource does."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from tests.support.sse import Event, HTTPError, SSEParser, open_sse, read_events

RETRY_SECONDS = 0.1


class Client:
    def __init__(self, user: str, token: str, port: int, path: str = "/events") -> None:
        self.user = user
        self.token = token
        self.port = port
        self.path = path
        self.events: list[Event] = []
        self.last_id: str | None = None
        self.connects = 0
        self.refusals: list[int] = []
        self.connected = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        self.connected = False

    def named(self, event_type: str | None = None) -> list[Event]:
        return [e for e in self.events if event_type is None or e.type == event_type]

    async def run(self) -> None:
        while True:
            headers = {"Authorization": f"Bearer {self.token}"}
            if self.last_id:
                headers["Last-Event-ID"] = self.last_id
            try:
                reader, writer = await open_sse("127.0.0.1", self.port, self.path, headers)
            except HTTPError as exc:
                self.refusals.append(exc.status)
                await asyncio.sleep(RETRY_SECONDS * (1 + random.random()))
                continue
            except (OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(RETRY_SECONDS * (1 + random.random()))
                continue
            self.connects += 1
            self.connected = True
            parser = SSEParser(keep=False)
            try:
                async for event in read_events(reader, parser):
                    self.events.append(event)
                    self.last_id = event.last_event_id
            except (OSError, asyncio.IncompleteReadError, ValueError):
                pass
            finally:
                self.connected = False
                writer.close()
            await asyncio.sleep(RETRY_SECONDS * (1 + random.random()))


async def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)
