"""The event bus on its own Redis (EVENTS_REDIS_URL) and on a real local Redis Cluster:
sharded announcements, one hub connection per shard, rerouting when a slot moves, and
a primary killed mid-stream (docs/design.md "Event bus on a Redis Cluster")."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import psycopg
import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from starlette.applications import Starlette

from core import eventclients, events, settings
from core.principal import Identity
from tests.support.asgi import StreamCall, running_app, token
from tests.support.rediscluster import LocalCluster, redis_binaries, skip_reason
from tests.support.servers import RedisServer
from tests.support.sse import Event, SSEParser
from tests.test_chat_job import post, run_jobs


def owned(user: str) -> str:
    """The owner key a token for ``user`` (no org) streams under."""
    return Identity(user).key


pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(redis_binaries() is None, reason=skip_reason()),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    local = LocalCluster(primaries=3).start()
    try:
        yield local
    finally:
        local.stop()


@pytest.fixture
def on_cluster(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    """Settings that put the event bus on ``cluster``; queues stay on REDIS_URL."""
    monkeypatch.setattr(settings, "EVENTS_REDIS_URL", cluster.url)
    monkeypatch.setattr(settings, "EVENTS_REDIS_CLUSTER", True)
    return cluster


@pytest.fixture
def bus(on_cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    client = redis.cluster.RedisCluster.from_url(on_cluster.url)
    yield client
    client.close()


def users_on(cluster: LocalCluster, per_primary: int, tag: str) -> dict[int, list[str]]:
    """User ids whose streams hash to each primary, ``per_primary`` of each."""
    found: dict[int, list[str]] = {port: [] for port in cluster.primary_ports()}
    for i in itertools.count():
        user = f"{tag}-{i}"
        owner = found.get(cluster.owner_of(events.user_stream(owned(user))))
        if owner is not None and len(owner) < per_primary:
            owner.append(user)
        if all(len(users) == per_primary for users in found.values()):
            return found
    raise AssertionError("unreachable")


def stream_call(app: Starlette, user: str, last_event_id: str | None = None) -> StreamCall:
    headers = {"authorization": f"Bearer {token(user)}"}
    if last_event_id is not None:
        headers["last-event-id"] = last_event_id
    return StreamCall(app, "/events", headers)


def move_slot(cluster: LocalCluster, key: str, target: int) -> None:
    """Migrate ``key``'s slot, keys and all, to the primary on ``target`` (the steps of
    redis-cli --cluster reshard, Redis cluster spec "Live reconfiguration")."""
    slot = redis.crc.key_slot(key.encode())
    source = cluster.owner_of(key)
    nodes = {port: redis.Redis(port=port) for port in cluster.primary_ports()}
    try:
        ids = {port: nodes[port].execute_command("CLUSTER", "MYID").decode() for port in nodes}
        nodes[target].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source])
        nodes[source].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target])
        while keys := nodes[source].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            nodes[source].migrate("127.0.0.1", target, keys, 0, 5000)
        for node in nodes.values():
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target])
    finally:
        for node in nodes.values():
            node.close()


async def test_streams_on_every_shard_one_hub_connection_each(
    on_cluster: LocalCluster, bus: redis.cluster.RedisCluster
) -> None:
    by_owner = users_on(on_cluster, 2, "every-shard")
    users = [user for group in by_owner.values() for user in group]
    async with running_app() as app, anyio.create_task_group() as tg:
        calls = {user: stream_call(app, user) for user in users}
        for call in calls.values():
            tg.start_soon(call.run)
        for call in calls.values():
            await call.wait_for(lambda c: b": connected" in c.body)
        # One subscriber connection per primary, not per stream.
        assert sorted(shard.address for shard in app.state.hub.shards) == sorted(
            f"127.0.0.1:{port}" for port in by_owner
        )
        assert app.state.hub.connections == len(users)
        sent = {}
        for user in users:
            # A user's and an upload's stream: two slots, one script call each.
            sent[user] = events.publish_event(
                bus, "upload.progress", {"percent": 5}, owner=owned(user), upload_id=f"up-{user}"
            )
            assert len(sent[user]) == 2
        for user, call in calls.items():
            await call.wait_for(lambda c, u=user: sent[u][0].encode() in c.body)
            assert bytes(call.body).count(b"event: upload.progress") == 1
            call.disconnect()
    for user, (user_id, upload_id) in sent.items():
        assert [e[0].decode() for e in bus.xrange(events.user_stream(owned(user)))] == [user_id]
        upload_key = events.upload_stream(f"up-{user}")
        assert [e[0].decode() for e in bus.xrange(upload_key)] == [upload_id]


async def test_resume_on_a_cluster_replays_exactly_once(
    on_cluster: LocalCluster, bus: redis.cluster.RedisCluster
) -> None:
    user = "resume-cluster"
    ids = [
        events.publish_event(bus, "chat.chunk", {"n": n}, owner=owned(user))[0] for n in range(4)
    ]
    async with running_app() as app, anyio.create_task_group() as tg:
        call = stream_call(app, user, ids[1])
        tg.start_soon(call.run)
        await call.wait_for(lambda c: ids[3].encode() in c.body)
        [live] = await anyio.to_thread.run_sync(
            lambda: events.publish_event(bus, "chat.chunk", {"n": 4}, owner=owned(user))
        )
        await call.wait_for(lambda c: live.encode() in c.body)
        call.disconnect()
    parser = SSEParser()
    parser.feed(bytes(call.body))
    got = [e.last_event_id for e in parser.events if e.type == "chat.chunk"]
    assert got == [ids[2], ids[3], live]


async def test_async_publish_on_a_cluster(
    on_cluster: LocalCluster, bus: redis.cluster.RedisCluster
) -> None:
    client = redis.asyncio.cluster.RedisCluster.from_url(on_cluster.url)
    try:
        ids = await events.apublish_event(
            client, "upload.status", {"status": "queued"}, owner=owned("apub"), upload_id="apub-up"
        )
    finally:
        await client.aclose()
    assert bus.xrange(events.user_stream(owned("apub")))[0][0].decode() == ids[0]
    assert bus.xrange(events.upload_stream("apub-up"))[0][0].decode() == ids[1]


async def test_moved_slot_reroutes_and_streams_resume(
    on_cluster: LocalCluster, bus: redis.cluster.RedisCluster
) -> None:
    """A slot moved away: the old owner drops its subscribers (an unasked SUNSUBSCRIBE),
    so the stream ends and resumes through the new owner; a channel whose slot moved
    before anyone subscribed gets MOVED, and the hub asks the slot map again."""
    by_owner = users_on(on_cluster, 1, "moved")
    (first, [user_a]), (second, [user_b]), *_ = by_owner.items()
    key_a, key_b = events.user_stream(owned(user_a)), events.user_stream(owned(user_b))
    before = events.publish_event(bus, "chat.chunk", {"n": 0}, owner=owned(user_a))[0]
    async with running_app() as app, anyio.create_task_group() as tg:
        call_a = stream_call(app, user_a, before)
        tg.start_soon(call_a.run)
        await call_a.wait_for(lambda c: b": connected" in c.body)
        # The hub's slot map is now loaded; B's slot moves without telling it.
        await anyio.to_thread.run_sync(move_slot, on_cluster, key_b, first)
        call_b = stream_call(app, user_b)
        tg.start_soon(call_b.run)
        await call_b.wait_for(lambda c: b": connected" in c.body)
        [b_id] = events.publish_event(bus, "chat.chunk", {"n": 1}, owner=owned(user_b))
        await call_b.wait_for(lambda c: b_id.encode() in c.body)
        # A's slot moves, history and all: its stream ends rather than going quiet.
        await anyio.to_thread.run_sync(move_slot, on_cluster, key_a, second)
        await call_a.wait_for(lambda c: c.finished)
        [missed] = events.publish_event(bus, "chat.chunk", {"n": 2}, owner=owned(user_a))
        again = stream_call(app, user_a, before)
        tg.start_soon(again.run)
        await again.wait_for(lambda c: missed.encode() in c.body)
        [live] = events.publish_event(bus, "chat.chunk", {"n": 3}, owner=owned(user_a))
        await again.wait_for(lambda c: live.encode() in c.body)
        assert b"event: resync" not in again.body
        for call in (call_b, again):
            call.disconnect()
    assert on_cluster.owner_of(key_a) == second and on_cluster.owner_of(key_b) == first


def test_chat_job_publishes_to_the_cluster(
    on_cluster: LocalCluster,
    bus: redis.cluster.RedisCluster,
    db: psycopg.Connection,
    redis_client: redis.Redis,
) -> None:
    """The worker side: chunks and chat.done go to the cluster, the draft and the queue
    stay on REDIS_URL."""
    user = "cluster-chat"
    _, message_id = post(db, user, "hello cluster")
    run_jobs(redis_client, message_id)
    kinds = [
        fields[b"e"].decode()
        for _, fields in bus.xrange(events.user_stream(owned(user)))
        if json.loads(fields[b"d"])["message_id"] == message_id
    ]
    assert kinds[-1] == "chat.done" and kinds.count("chat.chunk") >= 1
    assert set(kinds) == {"chat.chunk", "chat.done"}
    assert redis_client.exists(events.user_stream(owned(user))) == 0


async def test_events_redis_url_separates_the_bus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: redis.Redis
) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        monkeypatch.setattr(settings, "EVENTS_REDIS_URL", server.url)
        monkeypatch.setattr(settings, "EVENTS_REDIS_CLUSTER", False)
        own = server.client()
        user = "separate-bus"
        async with running_app() as app, anyio.create_task_group() as tg:
            assert app.state.events is not app.state.redis
            call = stream_call(app, user)
            tg.start_soon(call.run)
            await call.wait_for(lambda c: b": connected" in c.body)
            [event_id] = events.publish_event(own, "chat.chunk", {"n": 1}, owner=owned(user))
            await call.wait_for(lambda c: event_id.encode() in c.body)
            call.disconnect()
            ready = StreamCall(app, "/readyz")
            await ready.run()
            assert json.loads(bytes(ready.body))["checks"] == {
                "redis": "ok",
                "postgresql": "ok",
                "redis_events": "ok",
            }
        # History on the bus's Redis only.
        assert own.xlen(events.user_stream(owned(user))) == 1
        assert redis_client.exists(events.user_stream(owned(user))) == 0
        own.close()
    finally:
        server.stop()


# --- Failover ------------------------------------------------------------------------------


class Resumer:
    """An EventSource: reconnects with Last-Event-ID whenever its stream ends or is refused."""

    def __init__(self, app: Starlette, user: str) -> None:
        self.app, self.user = app, user
        self.done: list[Event] = []  # events of finished connections
        self.call: StreamCall | None = None
        self.last_id: str | None = None
        self.connects = 0
        self.stopping = False

    def seen(self) -> list[Event]:
        current = []
        if self.call is not None and self.call.status == 200:
            parser = SSEParser()
            parser.feed(bytes(self.call.body))
            current = parser.events
        return self.done + [e for e in current if e.type != "heartbeat"]

    async def run(self) -> None:
        while not self.stopping:
            self.call = call = stream_call(self.app, self.user, self.last_id)
            self.connects += 1
            await call.run()
            if call.status == 200:
                parser = SSEParser()
                parser.feed(bytes(call.body))
                self.done += [e for e in parser.events if e.type != "heartbeat"]
                if parser.events:
                    self.last_id = parser.events[-1].last_event_id or self.last_id
            self.call = None
            await anyio.sleep(0.05)

    def stop(self) -> None:
        self.stopping = True
        if self.call is not None:
            self.call.disconnect()


def publish_until(
    client: redis.cluster.RedisCluster, users: list[str], stop: threading.Event
) -> dict[str, list[str]]:
    """Publish round-robin until ``stop``; the ids Redis acknowledged, per user."""
    acked: dict[str, list[str]] = {user: [] for user in users}
    for n in itertools.count():
        if stop.is_set():
            return acked
        for user in users:
            try:
                acked[user] += events.publish_event(
                    client, "chat.chunk", {"n": n}, owner=owned(user)
                )
            except (redis.RedisError, redis.exceptions.RedisClusterException):
                time.sleep(0.05)  # the slot's primary is down; a job would retry too
        time.sleep(0.005)
    raise AssertionError("unreachable")


def check_no_silent_gap(received: list[Event], history: list[str], acked: list[str]) -> None:
    """Every data event follows its predecessor: in the surviving ``history``, or, for
    events failover lost that the client saw live before the kill, in publish order
    (``acked``). Once past a lost event, only a ``resync`` leads back into history; a
    resync comes only where history did not survive. Nothing twice, nothing skipped."""
    in_history = {event_id: i for i, event_id in enumerate(history)}
    in_order = {event_id: i for i, event_id in enumerate(acked)}
    data = [e.last_event_id for e in received if e.type == "chat.chunk"]
    assert len(data) == len(set(data)), "an event was delivered twice"
    assert data and in_order[data[0]] == 0, "the first events were skipped"
    previous: str | None = None
    for event in received:
        current = event.last_event_id
        if event.type == "resync":
            assert previous not in in_history, "resync though history survived"
            previous = None
            continue
        if previous is not None:
            if previous in in_history and current in in_history:
                assert in_history[current] == in_history[previous] + 1, (
                    f"gap between {previous} and {current}"
                )
            else:
                assert current not in in_history, f"{previous} was lost and no resync followed"
                assert in_order[current] == in_order[previous] + 1, "gap before the kill"
        previous = current


@pytest.mark.parametrize("replica_behind", [False, True], ids=["in-sync", "replica-behind"])
async def test_failover_resumes_without_silent_gaps(
    monkeypatch: pytest.MonkeyPatch, replica_behind: bool
) -> None:
    """3 primaries + 3 replicas; the primary serving some streams is SIGKILLed while
    events flow. Its streams end, clients reconnect through the promoted replica and
    resume from history; the other shards' streams carry on untouched. With the replica
    held back (SIGSTOP) the last events before the kill never reach it: clients that
    saw them get ``resync``, never a silent gap."""
    local = LocalCluster(primaries=3, replicas=1, node_timeout_ms=1000).start()
    try:
        # Every node listed: a client first used after the kill still finds the cluster.
        all_nodes = ",".join(local.node_url(port) for port in local.ports)
        monkeypatch.setattr(settings, "EVENTS_REDIS_URL", all_nodes)
        monkeypatch.setattr(settings, "EVENTS_REDIS_CLUSTER", True)
        monkeypatch.setattr(settings, "HUB_SUBSCRIBE_TIMEOUT_SECONDS", 30.0)
        by_owner = users_on(local, 2, "failover")
        victim = next(iter(by_owner))
        users = [user for group in by_owner.values() for user in group]
        client = eventclients.open_events_client()
        assert isinstance(client, redis.cluster.RedisCluster)
        stop = threading.Event()
        async with running_app() as app, anyio.create_task_group() as tg:
            clients = {user: Resumer(app, user) for user in users}
            # A failure before `stop` is set must not leave the publishing thread running:
            # the task group would wait for it forever (it cannot be cancelled), and its
            # cluster client's use of `random` upsets Hypothesis in the tests after.
            try:
                for resumer in clients.values():
                    tg.start_soon(resumer.run)
                with anyio.fail_after(10):
                    while app.state.hub.connections < len(users):
                        await anyio.sleep(0.02)
                result: dict[str, dict[str, list[str]]] = {}

                async def publish() -> None:
                    result["acked"] = await anyio.to_thread.run_sync(
                        publish_until, client, users, stop
                    )

                tg.start_soon(publish)
                await anyio.sleep(0.5)
                replica = local.replica_of(victim)
                if replica_behind:
                    local.hold_back(victim, replica)
                    await anyio.sleep(0.3)  # events the clients see and the replica does not
                await anyio.to_thread.run_sync(local.kill, victim)
                if replica_behind:
                    local.resume(replica)
                victim_key = events.user_stream(owned(by_owner[victim][0]))
                await anyio.to_thread.run_sync(local.wait_owner_changed, victim_key, victim)
                await anyio.sleep(1.0)  # events through the promoted replica
                stop.set()
                with anyio.fail_after(10):
                    while "acked" not in result:
                        await anyio.sleep(0.02)
                histories = {
                    user: [e[0].decode() for e in client.xrange(events.user_stream(owned(user)))]
                    for user in users
                }
                with anyio.fail_after(30):  # every client catches up with what survived
                    for user, resumer in clients.items():
                        while histories[user][-1] not in [e.last_event_id for e in resumer.seen()]:
                            await anyio.sleep(0.05)
                for resumer in clients.values():
                    resumer.stop()
            finally:
                stop.set()
        client.close()
    finally:
        local.stop()
    for user, resumer in clients.items():
        seen = resumer.seen()
        check_no_silent_gap(seen, histories[user], result["acked"][user])
        if user not in by_owner[victim]:
            assert resumer.connects == 1, "a stream on a healthy shard was disturbed"
    for user in by_owner[victim]:
        assert clients[user].connects >= 2, "the killed primary's streams did not end"
        resynced = any(e.type == "resync" for e in clients[user].seen())
        lost = set(result["acked"][user]) - set(histories[user])
        assert resynced == replica_behind and bool(lost) == replica_behind
