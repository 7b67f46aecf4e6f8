#!/usr/bin/env python
"""Measure the event-delivery core on loopback, and a naive baseline, in one run.

    .venv/bin/python scripts/bench_sse.py [--connections 10000 --users 1000 ...]

Starts everything itself: Redis (REDIS_URL if set, else embedded), one uvicorn web
process (httptools, uvloop, no access log), client processes holding raw asyncio
sockets (the SSE client of tests/support/sse.py), and publisher processes queueing
the worker-side publish (core.events.queue_event) on pipelines. Measures

  a. idle SSE connections held by one web process, and server RSS per connection;
  b. events/s fanned out to ``--users`` clients at saturation, nothing lost;
  c. publish-to-receive latency p50/p99 at ``--rate`` events/s;

then runs the same (a) and (b) against a naive design in its own uvicorn process: one
Redis pub/sub connection per SSE client (``baseline_app`` below). Prints a Markdown
table (README "Event streams: figures").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import resource
import secrets
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
LOAD_AT_START = 0.0
sys.path.insert(0, str(ROOT))

# Settings are read once at import: the environment is set before any app import.
os.environ.setdefault("JWT_SECRET", "bench-" + secrets.token_hex(24))
# Spawned children re-import this module: they must keep the parent's prefix.
os.environ["REDIS_PREFIX"] = os.environ.setdefault(
    "BENCH_SSE_PREFIX", "bench-" + secrets.token_hex(4)
)
os.environ["LOG_LEVEL"] = "WARNING"
os.environ["SSE_MAX_CONNECTIONS_PER_USER"] = "1000000"
os.environ.setdefault("SSE_HEARTBEAT_SECONDS", "15")

from tests.support.procs import Web, start_web  # noqa: E402
from tests.support.sse import ChunkedDecoder, SSEParser, request, status_of  # noqa: E402

# ---------------------------------------------------------------------------------------
# Client processes: many SSE connections on one event loop, raw sockets.


class SSEClient(asyncio.Protocol):
    """One SSE connection on a raw socket (tests/support/sse.py parses it); counts
    events and, if asked, their latency from the publish time they carry."""

    __slots__ = ("chunks", "count", "head", "opened", "parser", "stats", "transport")

    def __init__(self, stats: ClientStats, opened: asyncio.Future[bool]) -> None:
        self.stats = stats
        self.opened = opened
        self.head: bytes | None = b""
        self.chunks = ChunkedDecoder()
        self.parser = SSEParser(keep=False)
        self.count = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's own class

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data, self.head = self.head[:end], self.head[end + 4 :], None
            if status_of(head) != 200:
                self.opened.set_result(False)
                return
        events = self.parser.feed(self.chunks.feed(data))
        if not self.opened.done() and self.parser.comments:
            self.opened.set_result(True)
        stats = self.stats
        for event in events:
            self.count += 1
            stats.received += 1
            if stats.first == 0.0:
                stats.first = now
            stats.last = now
            if stats.record_latency:
                stats.latencies.append(now - event.json()["t"])

    def connection_lost(self, exc: Exception | None) -> None:
        self.stats.lost += 1
        if not self.opened.done():
            self.opened.set_result(False)


@dataclass
class ClientStats:
    received: int = 0
    lost: int = 0
    first: float = 0.0
    last: float = 0.0
    record_latency: bool = False
    latencies: list[float] = field(default_factory=list)


async def open_clients(
    port: int, path: str, tokens: list[str], stats: ClientStats, batch: int = 250
) -> tuple[list[SSEClient], int]:
    loop = asyncio.get_running_loop()
    clients: list[SSEClient] = []
    failed = 0

    async def one(token: str) -> None:
        nonlocal failed
        opened: asyncio.Future[bool] = loop.create_future()
        try:
            _, proto = await loop.create_connection(
                lambda: SSEClient(stats, opened), "127.0.0.1", port
            )
            assert proto.transport is not None
            proto.transport.write(
                request("127.0.0.1", port, path, {"Authorization": f"Bearer {token}"})
            )
            if await asyncio.wait_for(opened, 30):
                clients.append(proto)
                return
            proto.transport.close()
        except (OSError, TimeoutError):
            pass
        failed += 1

    # Batches keep the listen backlog from overflowing (SYN retries cost seconds).
    for start in range(0, len(tokens), batch):
        await asyncio.gather(*(one(t) for t in tokens[start : start + batch]))
    return clients, failed


def client_main(conn: Connection) -> None:
    import uvloop

    uvloop.run(client_loop(conn))


async def client_loop(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    stats = ClientStats()
    clients: list[SSEClient] = []
    # A blocking recv in a thread: the loop would make the pipe non-blocking and
    # Connection.recv does not handle partial reads of a large message.
    while True:
        command, *args = await loop.run_in_executor(None, conn.recv)
        if command == "open":
            port, path, tokens = args
            opened, failed = await open_clients(port, path, tokens, stats)
            clients.extend(opened)
            conn.send((len(opened), failed))
        elif command == "reset":
            stats.received = stats.lost = 0
            stats.first = stats.last = 0.0
            stats.record_latency = bool(args[0])
            stats.latencies = []
            for client in clients:
                client.count = 0
            conn.send(True)
        elif command == "stats":
            counts = [c.count for c in clients]
            conn.send(
                {
                    "received": stats.received,
                    "lost": stats.lost,
                    "first": stats.first,
                    "last": stats.last,
                    "min": min(counts, default=0),
                    "max": max(counts, default=0),
                    "latencies": stats.latencies,
                }
            )
        elif command == "close":
            for client in clients:
                if client.transport is not None:
                    client.transport.close()
            clients = []
            await asyncio.sleep(0.2)
            conn.send(True)
        elif command == "exit":
            return


class ClientPool:
    def __init__(self, processes: int) -> None:
        ctx = mp.get_context("spawn")
        self.conns: list[Connection] = []
        self.procs = []
        for _ in range(processes):
            here, there = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(there,), daemon=True)
            proc.start()
            self.conns.append(here)
            self.procs.append(proc)

    def call(self, *command: Any, per_process: list[Any] | None = None) -> list[Any]:
        for i, conn in enumerate(self.conns):
            conn.send(command if per_process is None else (*command, per_process[i]))
        return [conn.recv() for conn in self.conns]

    def open(self, port: int, path: str, tokens: list[str]) -> tuple[int, int]:
        shares = [tokens[i :: len(self.conns)] for i in range(len(self.conns))]
        for conn, share in zip(self.conns, shares, strict=True):
            conn.send(("open", port, path, share))
        results = [conn.recv() for conn in self.conns]
        return sum(r[0] for r in results), sum(r[1] for r in results)

    def stats(self) -> dict[str, Any]:
        parts = self.call("stats")
        firsts = [p["first"] for p in parts if p["first"]]
        return {
            "received": sum(p["received"] for p in parts),
            "lost": sum(p["lost"] for p in parts),
            "first": min(firsts, default=0.0),
            "last": max(p["last"] for p in parts),
            "min": min(p["min"] for p in parts),
            "max": max(p["max"] for p in parts),
            "latencies": [x for p in parts for x in p["latencies"]],
        }

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("exit",))
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self.conns:
            conn.close()


# ---------------------------------------------------------------------------------------
# Publisher processes: the worker side's Lua script, pipelined.


def publish_main(
    redis_url: str, users: list[str], per_user: int, rate: float, start_at: float
) -> tuple[int, float, float]:
    """Publish ``per_user`` events to each user, round robin; ``rate`` 0 = flat out.

    Returns (published, first publish time, last publish time).
    """
    import redis

    from core import events
    from core.eventkinds import EventKind
    from core.principal import Identity

    client = redis.Redis.from_url(redis_url)
    batch = 100 if rate == 0 else max(1, int(rate / 200))  # 200 batches/s when paced
    plan = [(u, i) for i in range(per_user) for u in users]
    sent = 0
    while time.time() < start_at:
        time.sleep(0.001)
    first = time.time()
    try:
        for start in range(0, len(plan), batch):
            if rate:
                due = first + start / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
            pipe = client.pipeline(transaction=False)
            now = time.time()
            for user, i in plan[start : start + batch]:
                data = {"t": now, "i": i, "text": "lorem ipsum "}
                events.queue_event(pipe, EventKind.CHAT_CHUNK, data, owner=Identity(user).key)
            pipe.execute()
            sent += len(plan[start : start + batch])
    finally:
        client.close()
    return sent, first, time.time()


def publish(
    redis_url: str, users: list[str], per_user: int, rate: float, processes: int
) -> tuple[int, float, float]:
    ctx = mp.get_context("spawn")
    start_at = time.time() + 1.5  # spawn + imports, then all start together
    shares = [users[i::processes] for i in range(processes)]
    with ctx.Pool(processes) as pool:
        results = pool.starmap(
            publish_main,
            [(redis_url, share, per_user, rate / processes, start_at) for share in shares],
        )
    return (
        sum(r[0] for r in results),
        min(r[1] for r in results),
        max(r[2] for r in results),
    )


# ---------------------------------------------------------------------------------------
# The naive baseline: one Redis pub/sub connection per SSE client.


def baseline_app() -> Any:
    import redis.asyncio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, StreamingResponse
    from starlette.routing import Route

    from app.security.auth import authenticate
    from core import events, settings

    state: dict[str, Any] = {}

    async def stream(request: Request) -> StreamingResponse:
        principal = await authenticate(request, allow_query=True)
        pubsub = state["redis"].pubsub()
        await pubsub.subscribe(events.user_stream(principal.key))

        async def body() -> Any:
            try:
                yield b"retry: 2000\n: connected\n\n"
                while True:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=settings.SSE_HEARTBEAT_SECONDS
                    )
                    yield message["data"] if message else b": ping\n\n"
            finally:
                await pubsub.aclose()

        return StreamingResponse(body(), media_type="text/event-stream")

    from contextlib import asynccontextmanager

    from app.security.auth import TokenVerifier

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        app.state.verifier = TokenVerifier.from_settings()
        # A pool without a cap: the naive design's one connection per client.
        state["redis"] = redis.asyncio.Redis.from_url(settings.REDIS_URL, max_connections=1_000_000)
        yield
        await state["redis"].aclose()

    from app.errors import exception_handlers

    async def healthz(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    return Starlette(
        routes=[Route("/events", stream), Route("/healthz", healthz)],
        lifespan=lifespan,
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
    )


def serve_baseline(port: int) -> None:
    import uvicorn

    uvicorn.run(
        baseline_app(),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


# ---------------------------------------------------------------------------------------
# The run.


def start_server(kind: str, port: int) -> Web:
    # /healthz: the web process needs no PostgreSQL to serve streams.
    if kind == "herald":
        uvicorn_args = ["--loop", "uvloop", "--http", "httptools", "--log-level", "warning"]
        return start_web(
            "bench-sse-herald", os.environ.copy(), *uvicorn_args, "--backlog", "4096",
            port=port, ready="/healthz",
        )  # fmt: skip
    command = [sys.executable, __file__, "--serve-baseline", str(port)]
    return start_web(
        "bench-sse-baseline", os.environ.copy(), command=command, port=port, ready="/healthz"
    )


def measure_idle(
    clients: ClientPool, web: Web, port: int, n: int, tokens: list[str]
) -> dict[str, Any]:
    # Warm up (first-request imports, caches), then take the baseline RSS.
    clients.open(port, "/events", tokens[:100])
    clients.call("close")
    time.sleep(1)
    before = web.rss_kib()
    started = time.perf_counter()
    opened, failed = clients.open(port, "/events", tokens[:n])
    took = time.perf_counter() - started
    time.sleep(2)
    after = web.rss_kib()
    return {
        "opened": opened,
        "failed": failed,
        "open_rate": opened / took,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "kib_per_conn": (after - before) / max(opened, 1),
    }


def measure_fanout(
    clients: ClientPool,
    redis_url: str,
    port: int,
    users: list[str],
    tokens: list[str],
    per_user: int,
    publishers: int,
) -> dict[str, Any]:
    opened, failed = clients.open(port, "/events", tokens)
    clients.call("reset", False)
    published, pub_first, pub_last = publish(redis_url, users, per_user, 0, publishers)
    expected = published
    deadline = time.monotonic() + 60
    while True:
        stats = clients.stats()
        if stats["received"] >= expected or time.monotonic() > deadline or stats["lost"]:
            break
        time.sleep(0.25)
    # Let stragglers (duplicates, if any) arrive before the final count.
    time.sleep(0.5)
    stats = clients.stats()
    clients.call("close")
    span = max(stats["last"] - stats["first"], 1e-9)
    return {
        "opened": opened,
        "failed": failed,
        "published": published,
        "received": stats["received"],
        "lost_connections": stats["lost"],
        "per_client_min": stats["min"],
        "per_client_max": stats["max"],
        "publish_rate": published / max(pub_last - pub_first, 1e-9),
        "delivered_rate": stats["received"] / span,
    }


def measure_latency(
    clients: ClientPool,
    redis_url: str,
    port: int,
    users: list[str],
    tokens: list[str],
    rate: float,
    seconds: float,
    publishers: int,
) -> dict[str, Any]:
    opened, _ = clients.open(port, "/events", tokens)
    clients.call("reset", True)
    per_user = max(1, int(rate * seconds / len(users)))
    published, pub_first, pub_last = publish(redis_url, users, per_user, rate, publishers)
    deadline = time.monotonic() + 30
    while clients.stats()["received"] < published and time.monotonic() < deadline:
        time.sleep(0.25)
    stats = clients.stats()
    clients.call("close")
    lat = sorted(stats["latencies"])
    q = statistics.quantiles(lat, n=1000) if len(lat) > 10 else [float("nan")] * 999
    return {
        "opened": opened,
        "published": published,
        "received": stats["received"],
        "offered_rate": published / max(pub_last - pub_first, 1e-9),
        "p50_ms": q[499] * 1000,
        "p99_ms": q[989] * 1000,
        "p999_ms": q[998] * 1000,
        "max_ms": lat[-1] * 1000 if lat else float("nan"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--per-user", type=int, default=100, help="fan-out events per user")
    parser.add_argument("--rate", type=float, default=10_000, help="latency test events/s")
    parser.add_argument("--seconds", type=float, default=5, help="latency test duration")
    parser.add_argument("--baseline-connections", type=int, default=None)
    parser.add_argument("--client-processes", type=int, default=2)
    parser.add_argument("--publishers", type=int, default=2, help="fan-out publishers")
    # One publisher paces 10,000 events/s easily; a second only adds CPU contention on
    # a 2-core box, which shows up as queueing latency.
    parser.add_argument("--latency-publishers", type=int, default=1)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--serve-baseline", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return 0

    # SIGTERM (e.g. `timeout`) must still run the finally blocks that stop servers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Each side of every connection is a descriptor: server, clients, Redis all inherit.
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    from app.dev import embedded

    own_redis = not os.environ.get("REDIS_URL")
    if own_redis:
        os.environ["REDIS_URL"] = embedded.start_redis(Path(tempfile.mkdtemp("-bench-redis")))
    redis_url = os.environ["REDIS_URL"]
    import redis

    admin = redis.Redis.from_url(redis_url)
    if own_redis:
        # The baseline needs one Redis client per SSE connection; the fan-out burst
        # may outrun the web process for a moment. Only on our own server.
        admin.config_set("maxclients", min(hard - 64, 50_000))
        admin.config_set("client-output-buffer-limit", "pubsub 256mb 256mb 60")
    os.environ.setdefault("DATABASE_URL", "postgresql://127.0.0.1:5432/test")

    from app.security.auth import mint_token

    n = args.connections
    idle_users = [f"idle-{i}" for i in range(n)]
    idle_tokens = [mint_token(u, ttl_seconds=3600) for u in idle_users]
    fan_users = [f"fan-{i}" for i in range(args.users)]
    fan_tokens = [mint_token(u, ttl_seconds=3600) for u in fan_users]
    lat_users = [f"lat-{i}" for i in range(args.users)]
    lat_tokens = [mint_token(u, ttl_seconds=3600) for u in lat_users]

    results: dict[str, dict[str, Any]] = {}
    clients = ClientPool(args.client_processes)
    port = embedded.free_port()
    started = time.monotonic()
    global LOAD_AT_START
    LOAD_AT_START = os.getloadavg()[0]
    try:
        server = start_server("herald", port)
        try:
            print(f"herald: holding {n} idle connections…", file=sys.stderr)
            results["herald_idle"] = measure_idle(clients, server, port, n, idle_tokens)
            clients.call("close")
            time.sleep(1)
            print("herald: fan-out at saturation…", file=sys.stderr)
            results["herald_fanout"] = measure_fanout(
                clients, redis_url, port, fan_users, fan_tokens, args.per_user, args.publishers
            )
            print(f"herald: latency at {args.rate:.0f} events/s…", file=sys.stderr)
            results["herald_latency"] = measure_latency(
                clients,
                redis_url,
                port,
                lat_users,
                lat_tokens,
                args.rate,
                args.seconds,
                args.latency_publishers,
            )
        finally:
            server.stop(timeout=15)
        if not args.skip_baseline:
            # The baseline holds two descriptors per client (client + Redis socket).
            bn = args.baseline_connections or min(n, (hard - 256) // 2, 5000)
            port = embedded.free_port()
            server = start_server("baseline", port)
            try:
                print(f"baseline: holding {bn} idle connections…", file=sys.stderr)
                redis_before = int(admin.info("memory")["used_memory"])
                results["baseline_idle"] = measure_idle(clients, server, port, bn, idle_tokens)
                results["baseline_idle"]["redis_kib_per_conn"] = (
                    (int(admin.info("memory")["used_memory"]) - redis_before)
                    / 1024
                    / max(results["baseline_idle"]["opened"], 1)
                )
                clients.call("close")
                time.sleep(1)
                print("baseline: fan-out at saturation…", file=sys.stderr)
                results["baseline_fanout"] = measure_fanout(
                    clients,
                    redis_url,
                    port,
                    fan_users,
                    fan_tokens,
                    args.per_user,
                    args.publishers,
                )
                print(f"baseline: latency at {args.rate:.0f} events/s…", file=sys.stderr)
                results["baseline_latency"] = measure_latency(
                    clients,
                    redis_url,
                    port,
                    lat_users,
                    lat_tokens,
                    args.rate,
                    args.seconds,
                    args.latency_publishers,
                )
            finally:
                server.stop(timeout=15)
    finally:
        clients.stop()
        cleanup(admin)
        admin.close()
    report(results, args, time.monotonic() - started)
    return 0


def cleanup(admin: Any) -> None:
    prefix = os.environ["REDIS_PREFIX"]
    for key in admin.scan_iter(match=f"{prefix}:*", count=1000):
        admin.delete(key)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace, took: float) -> None:
    def row(name: str, herald: str, baseline: str, ratio: str = "") -> str:
        return f"| {name} | {herald} | {baseline} | {ratio} |"

    hi, hf, hl = results["herald_idle"], results["herald_fanout"], results["herald_latency"]
    bi = results.get("baseline_idle")
    bf = results.get("baseline_fanout")
    bl = results.get("baseline_latency")
    na = "—"
    lines = [
        f"Machine: {os.cpu_count()} cores, {platform_line()}; run took {took:.0f} s; "
        f"load average at start {LOAD_AT_START:.1f}, at end {os.getloadavg()[0]:.1f} "
        "(other work on the box skews every figure).",
        "",
        "| measure | Herald (one subscriber per process) "
        "| baseline (pub/sub connection per client) | ratio |",
        "|---|---|---|---|",
        row(
            "idle connections held (asked)",
            f"{hi['opened']:,} of {args.connections:,} ({hi['failed']} failed)",
            f"{bi['opened']:,} ({bi['failed']} failed)" if bi else na,
        ),
        row(
            "web RSS before → after",
            f"{hi['rss_before_mib']:.0f} → {hi['rss_after_mib']:.0f} MiB",
            f"{bi['rss_before_mib']:.0f} → {bi['rss_after_mib']:.0f} MiB" if bi else na,
        ),
        row(
            "web RSS per connection",
            f"{hi['kib_per_conn']:.1f} KiB",
            f"{bi['kib_per_conn']:.1f} KiB (+ {bi['redis_kib_per_conn']:.1f} KiB in Redis)"
            if bi
            else na,
            f"{bi['kib_per_conn'] / hi['kib_per_conn']:.1f}× less" if bi else "",
        ),
        row(
            "connections opened per second",
            f"{hi['open_rate']:,.0f}",
            f"{bi['open_rate']:,.0f}" if bi else na,
        ),
        row(
            f"fan-out to {args.users:,} users: delivered events/s",
            f"{hf['delivered_rate']:,.0f}",
            f"{bf['delivered_rate']:,.0f}" if bf else na,
            f"{hf['delivered_rate'] / bf['delivered_rate']:.1f}×" if bf else "",
        ),
        row(
            "fan-out: received / published (lost streams)",
            f"{hf['received']:,} / {hf['published']:,} ({hf['lost_connections']})",
            f"{bf['received']:,} / {bf['published']:,} ({bf['lost_connections']})" if bf else na,
        ),
        row(
            "fan-out: publishers' rate (events/s)",
            f"{hf['publish_rate']:,.0f}",
            f"{bf['publish_rate']:,.0f}" if bf else na,
        ),
        row(
            f"latency at {hl['offered_rate']:,.0f} events/s: p50 / p99 / p99.9",
            f"{hl['p50_ms']:.1f} / {hl['p99_ms']:.1f} / {hl['p999_ms']:.1f} ms",
            f"{bl['p50_ms']:.1f} / {bl['p99_ms']:.1f} / {bl['p999_ms']:.1f} ms" if bl else na,
        ),
        row(
            "latency run: received / published",
            f"{hl['received']:,} / {hl['published']:,}",
            f"{bl['received']:,} / {bl['published']:,}" if bl else na,
        ),
    ]
    print("\n".join(lines))


def platform_line() -> str:
    import platform

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model or platform.processor()}, Python {platform.python_version()}"


if __name__ == "__main__":
    sys.exit(main())
