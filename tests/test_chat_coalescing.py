"""Reply pieces into chat.chunk events (jobs/chat/chunks.py, ChunkPublisher), on real Redis.

The first piece leaves at once; after it no piece waits for a write: while an event is
being written (slow under load) the pieces that arrive wait together and leave as one
event. The text is exact and the indexes gapless either way; a window of 0 sends one
event per piece; a failed write fails the reply.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis
import redis.asyncio

from core import settings
from core.principal import Identity
from jobs.chat.chunks import ChunkPublisher
from jobs.chat.outbox import Outbox, Write
from tests.test_chat_job import chat_events

pytestmark = pytest.mark.anyio

PIECES = ["Once ", "upon ", "a ", "time ", "there ", "was ", "a ", "lighthouse."]


class SlowOutbox(Outbox):
    """Every write takes ``delay`` longer, as on a loop with hundreds of replies."""

    def __init__(self, client: redis.asyncio.Redis, delay: float) -> None:
        super().__init__(client)
        self.delay = delay

    async def send(self, write: Write) -> None:
        await asyncio.sleep(self.delay)
        await super().send(write)


async def publish(
    outbox: Outbox, user: str, window: float, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, ChunkPublisher]:
    monkeypatch.setattr(settings, "CHAT_CHUNK_COALESCE_SECONDS", window)
    message_id = str(uuid.uuid4())
    base = {"conversation_id": str(uuid.uuid4()), "message_id": message_id}
    chunks = ChunkPublisher(outbox, None, Identity(user).key, base, 0.0, {})
    for piece in PIECES:  # as a fast upstream delivers them: no pause between pieces
        await chunks.add(piece)
    await chunks.close()
    return message_id, chunks


async def test_pieces_wait_together_while_an_event_is_written(
    aredis: redis.asyncio.Redis, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = f"coalesce-{uuid.uuid4().hex[:8]}"
    message_id, chunks = await publish(SlowOutbox(aredis, 0.05), user, 0.02, monkeypatch)
    got = [data for kind, data in chat_events(redis_client, user, message_id)]
    assert [d["index"] for d in got] == list(range(len(got)))
    assert "".join(d["text"] for d in got) == "".join(PIECES)
    assert got[0]["text"] == PIECES[0]  # the first piece alone, at once
    # Each write takes longer than the window: an awaited write per piece made eight
    # events; here the seven pieces after the first leave together.
    assert len(got) == chunks.events == 2


async def test_a_window_of_zero_sends_every_piece(
    aredis: redis.asyncio.Redis, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = f"coalesce-{uuid.uuid4().hex[:8]}"
    message_id, _ = await publish(SlowOutbox(aredis, 0.01), user, 0.0, monkeypatch)
    got = [data["text"] for _, data in chat_events(redis_client, user, message_id)]
    assert got == PIECES


async def test_a_failed_write_fails_the_reply(
    aredis: redis.asyncio.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FailingOutbox(SlowOutbox):
        async def send(self, write: Write) -> None:
            if self.writes >= 1:  # the first event goes; the next write fails
                raise redis.exceptions.ConnectionError("Redis went away")
            await super().send(write)

    with pytest.raises(redis.exceptions.ConnectionError):
        await publish(FailingOutbox(aredis, 0.0), "coalesce-failing", 0.02, monkeypatch)
