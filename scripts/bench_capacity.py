#!/usr/bin/env python
"""Measure what docs/capacity.md's model is built from, then check the model.

    .venv/bin/python scripts/bench_capacity.py web      [--connections 4000 --users 500]
    .venv/bin/python scripts/bench_capacity.py bus      [--shards 1 2 3 --seconds 4]
    .venv/bin/python scripts/bench_capacity.py queue    [--jobs 3000]
    .venv/bin/python scripts/bench_capacity.py postgres [--chats 20 --rows 100000]
    .venv/bin/python scripts/bench_capacity.py check    [--web 4 --shards 3 --connections 8000]

Everything runs on loopback servers started here (a private redis-server for the queue
side, a Redis Cluster from /usr/bin/redis-server for the bus, a throwaway PostgreSQL
schema on DATABASE_URL), so nothing shared is touched or skewed. Costs are measured
as CPU time (/proc/<pid>/stat, Redis ``INFO cpu``), not wall time, so they hold on a busy box;
each run prints its load average. Results are written to --out (JSON per part); ``check``
reads web.json and bus.json from there, predicts its own run from them, and compares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
os.environ.setdefault("JWT_SECRET", "bench-" + secrets.token_hex(24))
os.environ["REDIS_PREFIX"] = os.environ.setdefault(
    "BENCH_CAPACITY_PREFIX", "capacity-" + secrets.token_hex(4)
)
os.environ["LOG_LEVEL"] = "WARNING"
os.environ["SSE_MAX_CONNECTIONS_PER_USER"] = "1000000"
os.environ.setdefault("SSE_HEARTBEAT_SECONDS", "15")

import redis  # noqa: E402
import redis.crc  # noqa: E402
from bench_sse import ClientPool  # noqa: E402

from tests.support.procs import Web, start_web  # noqa: E402
from tests.support.rediscluster import LocalCluster  # noqa: E402
from tests.support.servers import RedisServer  # noqa: E402

LOAD = 0.0


class PrivateRedis(RedisServer):
    """A loopback redis-server of this run only; its temp dir goes when it stops."""

    def __init__(self, prefix: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        super().__init__(self.root)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.root, ignore_errors=True)


def private_redis(prefix: str) -> PrivateRedis:
    return PrivateRedis(prefix)


def cpu_seconds(port: int) -> float:
    info = redis.Redis(port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (proc(5): fields 14 and 15 of /proc/pid/stat,
    in clock ticks; Linux only, as the harness's RSS reading is)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def owners(cluster: LocalCluster) -> list[tuple[int, int, int]]:
    client = redis.Redis(port=cluster.ports[0])
    try:
        slots = client.execute_command("CLUSTER", "SLOTS")
    finally:
        client.close()
    return [(int(s[0]), int(s[1]), int(s[2][1])) for s in slots]


def owner(ranges: list[tuple[int, int, int]], key: str) -> int:
    slot = redis.crc.key_slot(key.encode())
    return next(port for first, last, port in ranges if first <= slot <= last)


def by_node(cluster: LocalCluster, users: list[str]) -> dict[int, list[str]]:
    from core import events

    ranges = owners(cluster)
    grouped: dict[int, list[str]] = {}
    for user in users:
        grouped.setdefault(owner(ranges, events.user_stream(owner_key(user))), []).append(user)
    return grouped


def owner_key(user: str) -> str:
    """The stream owner of a token for ``user`` (no org claim): core.principal.Identity."""
    from core.principal import Identity

    return Identity(user).key


# --- Bus: publishers pipelining the event script per node, a subscriber per shard -----------


class ShardReader(threading.Thread):
    """A web process's hub, reduced to its socket: SSUBSCRIBE, then count messages."""

    def __init__(self, port: int, channels: list[str]) -> None:
        super().__init__(daemon=True)
        self.port, self.channels = port, channels
        self.confirmed = self.received = 0
        self.stopping = False

    def run(self) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port))
        sock.settimeout(0.2)
        sock.sendall(
            b"".join(
                b"*2\r\n$10\r\nSSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(c.encode()), c.encode())
                for c in self.channels
            )
        )
        tail = b""
        while not self.stopping:
            try:
                data = sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not data:
                break
            chunk = tail + data
            for marker, attr in (
                (b"$10\r\nssubscribe", "confirmed"),
                (b"$8\r\nsmessage", "received"),
            ):
                setattr(self, attr, getattr(self, attr) + chunk.count(marker) - tail.count(marker))
            tail = chunk[-16:]
        sock.close()


def publish_bus(
    port_users: dict[int, list[str]], seconds: float, rate: float, start_at: float, batch: int
) -> int:
    """Publish round-robin over each node's users; ``rate`` 0: flat out. Returns events."""
    from core import events
    from core.eventkinds import EventKind

    clients = {port: redis.Redis(port=port) for port in port_users}
    cursors = dict.fromkeys(port_users, 0)
    sent = 0
    while time.time() < start_at:
        time.sleep(0.001)
    end = start_at + seconds
    try:
        while (now := time.time()) < end:
            if rate and sent > (now - start_at) * rate:
                time.sleep(0.002)
                continue
            for port, users in port_users.items():
                with clients[port].pipeline(transaction=False) as pipe:
                    for _ in range(batch):
                        user = users[cursors[port] % len(users)]
                        cursors[port] += 1
                        data = {"t": time.time(), "i": cursors[port], "text": "lorem ipsum dolor "}
                        events.queue_event(
                            pipe, EventKind.CHAT_CHUNK, data, owner=owner_key(user), sharded=True
                        )
                    pipe.execute()
                sent += batch
    finally:
        for client in clients.values():
            client.close()
    return sent


def run_publishers(
    groups: dict[int, list[str]], processes: int, seconds: float, rate: float, batch: int
) -> tuple[int, float]:
    shares = [
        {port: users[i::processes] for port, users in groups.items() if users[i::processes]}
        for i in range(processes)
    ]
    start_at = time.time() + 1.5
    with mp.get_context("spawn").Pool(processes) as pool:
        sent = pool.starmap(
            publish_bus, [(s, seconds, rate / processes, start_at, batch) for s in shares]
        )
    return sum(sent), start_at


def bus(args: argparse.Namespace) -> dict[str, Any]:
    from core import events

    runs = []
    for shards in args.shards:
        cluster = LocalCluster(primaries=shards).start()
        try:
            for port in cluster.ports:
                redis.Redis(port=port).config_set(
                    "client-output-buffer-limit", "pubsub 256mb 256mb 60"
                )
            users = [f"bus-{i}" for i in range(args.users)]
            groups = by_node(cluster, users)
            readers = [
                ShardReader(port, [events.user_stream(owner_key(u)) for u in members])
                for port, members in groups.items()
            ]
            for reader in readers:
                reader.start()
            while sum(r.confirmed for r in readers) < len(users):
                time.sleep(0.05)
            idle0 = {port: cpu_seconds(port) for port in cluster.ports}
            time.sleep(args.seconds)
            idle = sum(cpu_seconds(p) - c for p, c in idle0.items()) / shards / args.seconds
            # As workers publish: one event per round trip, at a moderate pace.
            before = sum(cpu_seconds(port) for port in cluster.ports)
            paced, _ = run_publishers(groups, args.publishers, args.seconds, args.paced_rate, 1)
            paced_cpu = sum(cpu_seconds(port) for port in cluster.ports) - before
            paced_us = 1e6 * (paced_cpu - idle * shards * (args.seconds + 1.5)) / max(paced, 1)
            before_sat = sum(r.received for r in readers)
            before = {port: cpu_seconds(port) for port in groups}
            sent, started = run_publishers(groups, args.publishers, args.seconds, 0, args.batch)
            wall = time.time() - started
            after = {port: cpu_seconds(port) for port in groups}
            sent += before_sat
            deadline = time.monotonic() + 30
            while sum(r.received for r in readers) < sent and time.monotonic() < deadline:
                time.sleep(0.1)
            received = sum(r.received for r in readers)
            for reader in readers:
                reader.stopping = True
            key = events.user_stream(owner_key(users[0]))
            probe = redis.Redis(port=owner(owners(cluster), key))
            history = int(probe.xlen(key))
            stream_bytes = int(probe.memory_usage(key, samples=0) or 0)
            probe.close()
            cpu = {port: after[port] - before[port] for port in groups}
            runs.append(
                {
                    "shards": shards,
                    "events": sent,
                    "received": received,
                    "events_per_s": (sent - before_sat) / wall,
                    "redis_cpu_per_primary": {str(p): c / wall for p, c in cpu.items()},
                    "events_per_cpu_s_per_primary": {
                        str(p): ((sent - before_sat) * len(groups[p]) / len(users)) / max(c, 1e-9)
                        for p, c in cpu.items()
                    },
                    "us_per_event": 1e6 * sum(cpu.values()) / max(sent - before_sat, 1),
                    "idle_cpu_per_node": idle,
                    "paced_rate": args.paced_rate,
                    "paced_us_per_event": paced_us,
                    "history_bytes_per_event": stream_bytes / max(history, 1),
                    "history_len": history,
                }
            )
        finally:
            cluster.stop()
    return {"load": LOAD, "publishers": args.publishers, "runs": runs}


# --- Web: idle connections, memory and delivery cost of one web process ------------------------


def start_webs(count: int, env: dict[str, str]) -> list[Web]:
    args = ["--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
    webs = []
    try:
        for i in range(count):
            webs.append(start_web(f"capacity-web-{i}", env, *args, ready="/healthz"))
    except BaseException:
        for web in webs:
            web.stop(timeout=15)
        raise
    return webs


def tokens_for(users: list[str]) -> list[str]:
    from app.security.auth import mint_token

    return [mint_token(u, ttl_seconds=3600) for u in users]


def open_spread(clients: ClientPool, webs: list[Web], tokens: list[str]) -> tuple[int, int]:
    opened = failed = 0
    for i, web in enumerate(webs):
        o, f = clients.open(web.port, "/events", tokens[i :: len(webs)])
        opened, failed = opened + o, failed + f
    return opened, failed


def wait_received(clients: ClientPool, expected: int, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    stats = clients.stats()
    while stats["received"] < expected and time.monotonic() < deadline and not stats["lost"]:
        time.sleep(0.25)
        stats = clients.stats()
    return stats


def web(args: argparse.Namespace) -> dict[str, Any]:
    """One web process on a one-node cluster bus: idle memory, then delivery at saturation."""
    cluster = LocalCluster(primaries=1).start()
    queue_side = private_redis("capacity-redis-")
    queue_side.start()
    env = {
        **os.environ,
        "REDIS_URL": queue_side.url,
        "EVENTS_REDIS_URL": cluster.url,
        "EVENTS_REDIS_CLUSTER": "true",
    }
    clients = ClientPool(args.client_processes)
    try:
        [server] = start_webs(1, env)
        try:
            idle_users = [f"idle-{i}" for i in range(args.connections)]
            clients.open(server.port, "/events", tokens_for(idle_users[:100]))
            clients.call("close")
            time.sleep(1)
            base = server.rss_kib()
            opened, failed = clients.open(server.port, "/events", tokens_for(idle_users))
            time.sleep(2)
            rss = server.rss_kib()
            cpu0 = proc_cpu(server.pid)
            time.sleep(args.seconds)
            idle_us = 1e6 * (proc_cpu(server.pid) - cpu0) / opened / args.seconds
            clients.call("close")
            time.sleep(1)
            users = [f"fan-{i}" for i in range(args.users)]
            clients.open(server.port, "/events", tokens_for(users))
            clients.call("reset", False)
            groups = by_node(cluster, users)
            cpu0 = proc_cpu(server.pid)
            paced, _ = run_publishers(groups, args.publishers, args.seconds, args.paced_rate, 1)
            wait_received(clients, paced)
            paced_us = 1e6 * (proc_cpu(server.pid) - cpu0) / max(paced, 1)
            clients.call("reset", False)
            cpu0 = proc_cpu(server.pid)
            sent, _started = run_publishers(groups, args.publishers, args.seconds, 0, 100)
            stats = wait_received(clients, sent)
            cpu = proc_cpu(server.pid) - cpu0
            span = max(stats["last"] - stats["first"], 1e-9)
            clients.call("close")
        finally:
            server.stop(timeout=15)
    finally:
        clients.stop()
        cluster.stop()
        queue_side.stop()
    return {
        "load": LOAD,
        "connections": opened,
        "failed": failed,
        "base_rss_mib": base / 1024,
        "kib_per_connection": (rss - base) / max(opened, 1),
        "published": sent,
        "delivered": stats["received"],
        "delivered_per_s": stats["received"] / span,
        "web_cpu_us_per_event": 1e6 * cpu / max(stats["received"], 1),
        "idle_cpu_us_per_connection_s": idle_us,
        "paced_rate": args.paced_rate,
        "paced_us_per_event": paced_us,
        "users": args.users,
    }


# --- Queue: RQ enqueue and dequeue on a private Redis ----------------------------------------


def queue(args: argparse.Namespace) -> dict[str, Any]:
    from rq import Queue, SimpleWorker

    server = private_redis("capacity-queue-")
    server.start()
    try:
        conn = redis.Redis.from_url(server.url)

        def totals() -> tuple[float, int]:
            return cpu_seconds(server.port), int(conn.info("stats")["total_commands_processed"])

        q = Queue("capacity", connection=conn)
        cpu0, cmd0 = totals()
        t0 = time.perf_counter()
        for _ in range(args.jobs):
            q.enqueue("os.getpid")
        t1 = time.perf_counter()
        cpu1, _cmd1 = totals()
        SimpleWorker([q], connection=conn).work(burst=True, logging_level="WARNING")
        t2 = time.perf_counter()
        cpu2, cmd2 = totals()
        conn.close()
    finally:
        server.stop()
    jobs = args.jobs
    return {
        "load": LOAD,
        "jobs": jobs,
        "enqueue_per_s": jobs / (t1 - t0),
        "work_per_s": jobs / (t2 - t1),
        "redis_commands_per_job": (cmd2 - cmd0) / jobs,
        "redis_cpu_us_per_job": 1e6 * (cpu2 - cpu0) / jobs,
        "enqueue_cpu_us": 1e6 * (cpu1 - cpu0) / jobs,
        "work_cpu_us": 1e6 * (cpu2 - cpu1) / jobs,
    }


# --- PostgreSQL: rows written per chat and per imported row --------------------------------------

_TABLE_STATS = (
    "SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, pg_total_relation_size(relid)"
    " FROM pg_stat_user_tables WHERE schemaname = %s"
)


def pg_snapshot(base: str, schema: str) -> dict[str, tuple[int, int, int, int]]:
    import psycopg

    time.sleep(1.2)  # a backend's counters reach the views up to a second after it ends
    with psycopg.connect(base, autocommit=True) as conn:
        rows = conn.execute(_TABLE_STATS, (schema,)).fetchall()
    return {r[0]: (int(r[1]), int(r[2]), int(r[3]), int(r[4])) for r in rows}


def pg_delta(
    before: dict[str, tuple[int, int, int, int]], after: dict[str, tuple[int, int, int, int]]
) -> dict[str, list[int]]:
    out = {}
    for table, values in after.items():
        old = before.get(table, (0, 0, 0, 0))
        diff = [v - o for v, o in zip(values, old, strict=True)]
        if any(diff[:3]):
            out["upload_rows_*" if table.startswith("upload_rows_") else table] = diff
    return out


def pg_child(phase: str, count: int) -> None:
    """``--pg-child``: one phase in a fresh process (its backends end with it, flushing
    their statistics): chats through the real job, or one CSV import."""
    import psycopg

    from app.migrations import apply_migrations
    from core import settings

    apply_migrations()
    dsn = str(settings.DATABASE_URL)
    if phase == "chats":
        from jobs.chat.job import run_chat

        for _ in range(count):
            conversation, message = str(uuid.uuid4()), str(uuid.uuid4())
            with psycopg.connect(dsn, autocommit=True) as conn:  # what POST /chat/messages writes
                conn.execute(
                    "INSERT INTO conversations (id, user_id, tenant) VALUES (%s, 'pg', 'user:pg')",
                    (conversation,),
                )
                conn.execute(
                    "INSERT INTO messages (id, conversation_id, role, text, status)"
                    " VALUES (%s, %s, 'user', 'How big is the sea?', 'queued')",
                    (message, conversation),
                )
            asyncio.run(run_chat(message))
    else:
        from bench_csv import generate, stage

        from jobs.csvimport.job import import_upload

        path = Path(tempfile.mkdtemp(prefix="capacity-csv-")) / "rows.csv"
        generate(path, count)
        upload_id, _ = stage(dsn, path, settings.UPLOAD_CHUNK_BYTES)
        import_upload(upload_id)
        path.unlink()
        path.parent.rmdir()


def postgres(args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    base = os.environ.get("DATABASE_URL", "postgresql://127.0.0.1:5432/test")
    schema = f"capacity_{secrets.token_hex(4)}"
    sep = "&" if "?" in base else "?"
    dsn = f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    queue_side = private_redis("capacity-redis-")
    queue_side.start()
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "REDIS_URL": queue_side.url,
        "LLM_PROVIDER": "demo",
        "DEMO_WORD_DELAY_SECONDS": "0",
    }
    try:

        def phase(name: str, count: int) -> None:
            subprocess.run(
                [sys.executable, __file__, "--pg-child", name, str(count)],
                env=env,
                cwd=ROOT,
                check=True,
            )

        phase("chats", 0)  # migrations only
        s0 = pg_snapshot(base, schema)
        phase("chats", args.chats)
        s1 = pg_snapshot(base, schema)
        phase("csv", args.rows)
        s2 = pg_snapshot(base, schema)
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        queue_side.stop()
    chats, rows = pg_delta(s0, s1), pg_delta(s1, s2)
    return {
        "load": LOAD,
        "chats": args.chats,
        "rows": args.rows,
        "per_chat": {t: [v / args.chats for v in d] for t, d in chats.items()},
        "per_million_rows": {t: [v * 1e6 / args.rows for v in d] for t, d in rows.items()},
    }


# --- Check: a scaled-down deployment against the model's prediction -------------------------------


def check(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    model_web = json.loads((out / "web.json").read_text())
    model_bus = json.loads((out / "bus.json").read_text())
    bus_run = next(r for r in model_bus["runs"] if r["shards"] == args.shards)
    cluster = LocalCluster(primaries=args.shards).start()
    queue_side = private_redis("capacity-redis-")
    queue_side.start()
    env = {
        **os.environ,
        "REDIS_URL": queue_side.url,
        "EVENTS_REDIS_URL": ",".join(cluster.node_url(p) for p in cluster.ports),
        "EVENTS_REDIS_CLUSTER": "true",
    }
    clients = ClientPool(args.client_processes)
    try:
        webs = start_webs(args.web, env)
        try:
            users = [f"user-{i}" for i in range(args.connections)]
            opened, failed = open_spread(clients, webs, tokens_for(users))
            time.sleep(2)
            rss_mib = sum(w.rss_kib() for w in webs) / 1024
            chatting = users[: int(len(users) * args.chatting)]
            groups = by_node(cluster, chatting)
            clients.call("reset", False)
            cpu_web0 = sum(proc_cpu(w.pid) for w in webs)
            cpu_bus0 = sum(cpu_seconds(p) for p in cluster.ports)
            rate = len(chatting) * args.rate
            sent, started = run_publishers(groups, args.publishers, args.seconds, rate, 1)
            stats = wait_received(clients, sent)
            wall = time.time() - started
            cpu_web = sum(proc_cpu(w.pid) for w in webs) - cpu_web0
            cpu_bus = sum(cpu_seconds(p) for p in cluster.ports) - cpu_bus0
            clients.call("close")
        finally:
            for w in webs:
                w.stop(timeout=15)
    finally:
        clients.stop()
        cluster.stop()
        queue_side.stop()
    # The model: memory = base + per connection; CPU = an idle cost per connection (or
    # node) per second + a cost per event at a moderate pace, one event per round trip.
    predicted = {
        "web_rss_mib": args.web * model_web["base_rss_mib"]
        + opened * model_web["kib_per_connection"] / 1024,
        "web_cpu_s": opened * wall * model_web["idle_cpu_us_per_connection_s"] / 1e6
        + sent * model_web["paced_us_per_event"] / 1e6,
        "bus_cpu_s": args.shards * wall * bus_run["idle_cpu_per_node"]
        + sent * bus_run["paced_us_per_event"] / 1e6,
        "delivered": float(sent),
    }
    measured = {
        "web_rss_mib": rss_mib,
        "web_cpu_s": cpu_web,
        "bus_cpu_s": cpu_bus,
        "delivered": float(stats["received"]),
    }
    return {
        "load": LOAD,
        "web_processes": args.web,
        "shards": args.shards,
        "connections": opened,
        "failed": failed,
        "chatting": len(chatting),
        "offered_events_per_s": rate,
        "published": sent,
        "seconds": wall,
        "lost_streams": stats["lost"],
        "predicted": predicted,
        "measured": measured,
        "ratio": {k: measured[k] / predicted[k] for k in predicted if predicted[k]},
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--pg-child":
        pg_child(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["web", "bus", "queue", "postgres", "check"])
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "herald-capacity")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--connections", type=int, default=4000)
    parser.add_argument("--publishers", type=int, default=2)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--jobs", type=int, default=3000)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--web", type=int, default=4, help="check: web processes")
    parser.add_argument("--chatting", type=float, default=0.05, help="check: share chatting")
    parser.add_argument("--rate", type=float, default=10, help="check: events/s per chat")
    parser.add_argument("--paced-rate", type=float, default=2000, help="web, bus: events/s")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    global LOAD
    LOAD = os.getloadavg()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.part == "check":
        args.shards = args.shards[-1]
        result = check(args, args.out)
    else:
        result = {"web": web, "bus": bus, "queue": queue, "postgres": postgres}[args.part](args)
    result["load_at_end"] = os.getloadavg()[0]
    (args.out / f"{args.part}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
