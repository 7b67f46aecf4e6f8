"""The Redis writes of every reply on one event loop, sent together (group commit).

Each ``chat.chunk`` is a draft append and an event publish: one pipelined round trip of
its own costs a socket write, a read, a future and a task wake-up, and hundreds of
replies at once make thousands of them a second (and redis-py's pipeline first asks
``SCRIPT EXISTS`` for the event script: two round trips). Here writes queue up while
the previous batch is in flight and leave as one pipeline: the first write of a quiet
loop goes out at once, as before; under load the batch grows instead of the queue of
round trips. The same idea as PostgreSQL's group commit or Nagle's algorithm without its
timer.

Writes of one caller keep their order (a batch is sent whole, batches one after the
other); a command that fails fails only the write that queued it.

redis-py's pipeline asks ``SCRIPT EXISTS`` before every execute that carries a script
(``Pipeline.load_scripts``): a second round trip per batch. Once a script ran here, later
batches skip the question; if Redis has forgotten it meanwhile (a restart, a failover,
``SCRIPT FLUSH``), the commands that got ``NOSCRIPT`` are sent again as ``EVAL`` with the
script's text, in their order, and the check comes back until the script runs again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

# Queues its commands on the pipeline it is given (it may await, e.g. an event script).
Write = Callable[[Pipeline], Awaitable[None]]


@dataclass(slots=True)
class _Queued:
    write: Write
    done: asyncio.Future[None]


class Outbox:
    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.batches = 0  # pipelines sent
        self.writes = 0  # writes they carried
        self._queue: list[_Queued] = []
        self._sender: asyncio.Task[None] | None = None
        self._loaded: set[str] = set()  # SHAs of scripts that ran through this outbox

    async def send(self, write: Write) -> None:
        """Queue ``write`` for the next batch; returns once Redis has executed it."""
        loop = asyncio.get_running_loop()
        queued = _Queued(write, loop.create_future())
        queued.done.add_done_callback(_retrieved)
        self._queue.append(queued)
        if self._sender is None:
            self._sender = loop.create_task(self._send_all())
        # A cancelled caller leaves its write queued: it goes out (the chunk it carries
        # was produced; its draft and event stay together).
        await asyncio.shield(queued.done)

    async def _send_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[_Queued]) -> None:
        sent: list[tuple[_Queued, int, int]] = []
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for queued in batch:
                    start = len(pipe.command_stack)
                    try:
                        await queued.write(pipe)
                    except Exception as exc:  # this write only: drop what it queued
                        del pipe.command_stack[start:]
                        _settle(queued.done, exc)
                        continue
                    sent.append((queued, start, len(pipe.command_stack)))
                scripts = {script.sha: script.script for script in pipe.scripts}
                if scripts.keys() <= self._loaded:
                    pipe.scripts.clear()  # no SCRIPT EXISTS round trip
                stack = list(pipe.command_stack)
                results = await pipe.execute(raise_on_error=False) if sent else []
            if any(isinstance(r, NoScriptError) for r in results):
                self._loaded.clear()
                results = await self._evaluate(stack, results, scripts)
            else:
                self._loaded |= scripts.keys()
        except Exception as exc:  # the connection: every write of the batch failed
            for queued, _start, _end in sent:
                _settle(queued.done, exc)
            return
        self.batches += 1
        self.writes += len(sent)
        for queued, start, end in sent:
            error = next((r for r in results[start:end] if isinstance(r, Exception)), None)
            _settle(queued.done, error)

    async def _evaluate(
        self, stack: list[Any], results: list[Any], scripts: dict[str, Any]
    ) -> list[Any]:
        """Send again, as EVAL, the EVALSHA commands that Redis answered NOSCRIPT."""
        again = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        async with self.client.pipeline(transaction=False) as pipe:
            for i in again:
                args, options = stack[i]
                pipe.execute_command("EVAL", scripts[args[1]], *args[2:], **options)
            retried = await pipe.execute(raise_on_error=False)
        results = list(results)
        for i, result in zip(again, retried, strict=True):
            results[i] = result
        return results


def _retrieved(done: asyncio.Future[None]) -> None:
    # A caller cancelled meanwhile never awaits its result: mark an error as seen, or
    # asyncio logs "exception was never retrieved" (the caller that awaits still gets it).
    if not done.cancelled():
        done.exception()


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)
