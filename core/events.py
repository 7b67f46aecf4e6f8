"""The event bus: publish an event for a user (and an upload), read history back.

A user's stream is keyed by ``Identity.key`` (core/principal.py): the pair (tenant,
user), never ``sub`` alone, which another tenant's user may share.

Each stream (a user's, an upload's) is a Redis Stream holding the last
``EVENT_HISTORY_MAX`` events for ``EVENT_HISTORY_TTL_SECONDS`` after its last event,
and a pub/sub channel of the same name announces each event, already framed as SSE
bytes, so a web process forwards it without re-encoding. One Lua script appends and
announces atomically, so announcement order is id order on every stream.

On a Redis Cluster (``EVENTS_REDIS_CLUSTER``) each stream's key carries a hash tag and
its channel is the key's own name, so both live in one slot; the announcement is a
sharded ``SPUBLISH`` (Redis >= 7.0), delivered only within the shard. A publish to a
user's and an upload's stream is then one script call per stream, each atomic for its
stream (docs/design.md "Event bus on a Redis Cluster").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis
import redis.asyncio

from core import settings
from core.eventclients import AsyncEventsClient, EventsClient, is_cluster
from core.eventkinds import EventKind

# XADD ids are "<ms>-<seq>", strictly increasing per stream (Redis docs: Streams intro).
# ARGV[5] is PUBLISH, or SPUBLISH on a cluster: a script may call SPUBLISH on a channel
# of its keys' slot (Redis docs, "Sharded Pub/Sub").
_PUBLISH_LUA = """
local ids = {}
for i, key in ipairs(KEYS) do
  local id = redis.call('XADD', key, 'MAXLEN', '~', ARGV[3], '*', 'e', ARGV[1], 'd', ARGV[2])
  redis.call('PEXPIRE', key, ARGV[4])
  local framed = 'id: ' .. id .. '\\nevent: ' .. ARGV[1] .. '\\ndata: ' .. ARGV[2] .. '\\n\\n'
  redis.call(ARGV[5], key, framed)
  ids[i] = id
end
return ids
"""


# The braces are a hash tag: on a cluster only "user:<owner>" picks the slot (Redis
# cluster spec, "Hash tags"), so the stream and its channel of one name, and anything
# later keyed on the same owner, share a node. A key holding "}" only shortens the tag.
def user_stream(owner: str) -> str:
    return f"{settings.REDIS_PREFIX}:events:{{user:{owner}}}"


def upload_stream(upload_id: str) -> str:
    return f"{settings.REDIS_PREFIX}:events:{{upload:{upload_id}}}"


def stream_keys(owner: str | None, upload_id: str | None) -> list[str]:
    keys = []
    if owner:
        keys.append(user_stream(owner))
    if upload_id:
        keys.append(upload_stream(upload_id))
    return keys


def encode_data(data: dict[str, Any]) -> bytes:
    # orjson escapes every control character, so the payload is always one line and
    # fits in a single `data:` field (WHATWG HTML, "Server-sent events", parsing).
    return orjson.dumps(data)


def frame(event_id: str | None, event: str, data: bytes) -> bytes:
    head = b"id: " + event_id.encode() + b"\n" if event_id is not None else b""
    return head + b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


def parse_id(event_id: str | bytes) -> tuple[int, int]:
    text = event_id.decode() if isinstance(event_id, bytes) else event_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def frame_id(framed: bytes) -> tuple[int, int]:
    # A published frame always starts with b"id: <id>\n" (see _PUBLISH_LUA).
    return parse_id(framed[4 : framed.index(b"\n")])


# Exactly what XRANGE accepts: "<ms>" or "<ms>-<seq>", each an unsigned 64-bit integer.
# int() alone is too lenient ("+1", " 1", "1_0") and lets Redis raise on client input.
_ID_RE = re.compile(r"([0-9]{1,20})(?:-([0-9]{1,20}))?")
_U64_MAX = 2**64 - 1


def valid_id(event_id: str) -> bool:
    match = _ID_RE.fullmatch(event_id)
    return match is not None and all(
        int(part) <= _U64_MAX for part in match.groups() if part is not None
    )


def _args(event: EventKind, data: dict[str, Any], *, sharded: bool) -> list[Any]:
    return [
        event,
        encode_data(data),
        settings.EVENT_HISTORY_MAX,
        settings.EVENT_HISTORY_TTL_SECONDS * 1000,
        "SPUBLISH" if sharded else "PUBLISH",
    ]


def _ids(result: Sequence[bytes | str]) -> list[str]:
    return [r.decode() if isinstance(r, bytes) else r for r in result]


def publish_event(
    client: EventsClient,
    event: EventKind,
    data: dict[str, Any],
    *,
    owner: str | None = None,
    upload_id: str | None = None,
) -> list[str]:
    """Append ``event`` to the owner's (``Identity.key``) and/or the upload's stream
    and announce it.

    Called by workers with the bus's synchronous client (core/eventclients.py).
    Returns the new ids, one per stream.
    """
    keys = stream_keys(owner, upload_id)
    if not keys:
        raise ValueError("publish_event needs an owner or an upload_id")
    script = client.register_script(_PUBLISH_LUA)
    if not is_cluster(client):
        return _ids(script(keys=keys, args=_args(event, data, sharded=False)))
    # One call per stream: the keys hash to different slots (CROSSSLOT otherwise).
    args = _args(event, data, sharded=True)
    return [_ids(script(keys=[key], args=args))[0] for key in keys]


def queue_event(
    pipe: redis.client.Pipeline,
    event: EventKind,
    data: dict[str, Any],
    *,
    owner: str | None = None,
    upload_id: str | None = None,
    sharded: bool = False,
) -> None:
    """``publish_event`` queued on a pipeline, to go out in one round trip with the
    caller's own commands (and after those queued before it).

    Only on a pipeline of one server: the bus's own single Redis, or (``sharded``) the
    cluster node owning every stream named (scripts/bench_capacity.py batches per node
    so). A cluster client: execute the pipeline, then ``publish_event``."""
    if is_cluster(pipe):
        raise TypeError("queue_event needs a single-server pipeline; use publish_event")
    keys = stream_keys(owner, upload_id)
    if not keys:
        raise ValueError("queue_event needs an owner or an upload_id")
    script = pipe.register_script(_PUBLISH_LUA)
    script(keys=keys, args=_args(event, data, sharded=sharded), client=pipe)


async def aqueue_event(
    pipe: redis.asyncio.client.Pipeline,
    event: EventKind,
    data: dict[str, Any],
    *,
    owner: str | None = None,
    upload_id: str | None = None,
) -> None:
    """``queue_event`` for an asyncio pipeline (the same single-server rule)."""
    if is_cluster(pipe):
        raise TypeError("aqueue_event needs a single-server pipeline; use apublish_event")
    keys = stream_keys(owner, upload_id)
    if not keys:
        raise ValueError("aqueue_event needs an owner or an upload_id")
    script = pipe.register_script(_PUBLISH_LUA)
    await script(keys=keys, args=_args(event, data, sharded=False), client=pipe)


async def apublish_event(
    client: AsyncEventsClient,
    event: EventKind,
    data: dict[str, Any],
    *,
    owner: str | None = None,
    upload_id: str | None = None,
) -> list[str]:
    """``publish_event`` for an asyncio client of the bus."""
    keys = stream_keys(owner, upload_id)
    if not keys:
        raise ValueError("apublish_event needs an owner or an upload_id")
    script = client.register_script(_PUBLISH_LUA)
    if not is_cluster(client):
        return _ids(await script(keys=keys, args=_args(event, data, sharded=False)))
    args = _args(event, data, sharded=True)
    return [_ids(await script(keys=[key], args=args))[0] for key in keys]


@dataclass(frozen=True, slots=True)
class Replay:
    """History after a client's Last-Event-ID, or ``complete=False`` when it is gone."""

    complete: bool
    frames: list[bytes]
    last_id: str | None


def _entries_to_frames(
    entries: Any,
) -> tuple[list[bytes], str | None]:
    frames = []
    last = None
    for raw_id, fields in entries:
        last = raw_id.decode() if isinstance(raw_id, bytes) else raw_id
        event = fields[b"e"].decode()
        frames.append(frame(last, event, fields[b"d"]))
    return frames, last


async def read_history(client: AsyncEventsClient, key: str, after: str) -> Replay:
    """Events of ``key`` after the id ``after``, if nothing between was trimmed away.

    The check is conservative and needs no Redis 7 features: history is complete when
    ``after`` itself is still in the stream. ``0-0`` means "before the first event"
    and is complete while the stream has never been trimmed.
    """
    if after in ("0", "0-0"):
        length = await client.xlen(key)
        if length >= settings.EVENT_HISTORY_MAX:
            return Replay(False, [], None)
        frames, last = _entries_to_frames(await client.xrange(key, "-", "+"))
        return Replay(True, frames, last or "0-0")
    entries = await client.xrange(key, after, "+")
    if not entries:
        return Replay(False, [], None)
    first_id = entries[0][0]
    if (first_id.decode() if isinstance(first_id, bytes) else first_id) != after:
        return Replay(False, [], None)
    frames, last = _entries_to_frames(entries[1:])
    return Replay(True, frames, last or after)


async def latest_id(client: AsyncEventsClient, key: str) -> str:
    entries = await client.xrevrange(key, "+", "-", count=1)
    if not entries:
        return "0-0"
    raw = entries[0][0]
    return raw.decode() if isinstance(raw, bytes) else str(raw)
