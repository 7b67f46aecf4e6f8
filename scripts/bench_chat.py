#!/usr/bin/env python
"""Chat latency and throughput on loopback, beside an in-process baseline, in one run.

    .venv/bin/python scripts/bench_chat.py [--chats 200 --concurrency 8 --workers 2]

Starts everything itself: Redis and PostgreSQL (REDIS_URL / DATABASE_URL if set, else
the embedded servers; a private key prefix and schema, dropped at the end), a
zero-latency OpenAI-compatible loopback upstream (tests/support/openai_server.py), one
uvicorn web process and RQ chat worker processes: ``jobs.worker.asyncworker.AsyncWorker`` (what the
Procfile runs for chats), rq's plain ``SimpleWorker`` and a forking ``Worker``.

Measures, with the ``openai`` provider pointed at the loopback upstream:

  baseline  the same upstream called directly (OpenAIProvider + httpx, no web/queue/job):
            request → first chunk, and the whole reply;
  job       ``run_chat`` called in-process (graph, guard, checkpointer, PostgreSQL,
            publishing), no web, no queue: start → first chunk published;
  e2e       POST /chat/messages → first ``chat.chunk`` on the caller's /events stream,
            one chat at a time (p50/p99), for each worker class;
  rate      chats/s with ``--concurrency`` chats in flight on ``--workers`` processes;
  rss       resident memory of one chat worker process after the run.

Prints a Markdown table (README "Chat"). ``--hops`` instead times each hop of one chat
(client, the web app's entry and answer, RQ dequeue and bookkeeping, the job, the first
publish, SSE) with plain SimpleWorker and AsyncWorker, in one run.

Every process is started through tests/support/procs.py and every stream read with
tests/support/sse.py; worker variants are this script's own ``--serve-worker`` and the
hop marks come through public seams only: an ASGI wrapper around ``app.main.app``, RQ
worker subclasses overriding RQ's public methods, and a Redis subscription to the
user's event channel. Steps inside the web handler are not split out (profile them).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.dev import embedded  # noqa: E402 - embedded reads no settings
from tests.support.benchenv import isolate_run  # noqa: E402 - sets the environment first

BENCH = isolate_run(
    "chat",
)
RUN = BENCH.run

import httpx  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402

from app.security.auth import mint_token  # noqa: E402
from core import events as event_streams  # noqa: E402
from tests.support.openai_server import OpenAIServer, call_directly  # noqa: E402
from tests.support.procs import Proc, start_web, start_worker, stop_all  # noqa: E402
from tests.support.sse import EventStream, SSEParser  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(v: float) -> str:
    return f"{v * 1000:.1f}"


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p99": pct(values, 0.99), "n": len(values)}


# --- The job in-process --------------------------------------------------------------------
def job_in_process(n: int) -> list[float]:
    from core import settings
    from jobs.chat.job import run_chat

    client = redis.Redis.from_url(settings.REDIS_URL)
    # The field record_job_metric writes: name|{sorted labels as JSON}.
    labels = {"model": "loopback-bench", "provider": "openai"}
    metric = (
        b"herald_chat_first_chunk_seconds_last|"
        + json.dumps(labels, separators=(",", ":")).encode()
    )
    out = []
    try:
        with psycopg.connect(str(settings.DATABASE_URL), autocommit=True) as db:
            for _ in range(n):
                conv, msg = str(uuid.uuid4()), str(uuid.uuid4())
                db.execute(
                    "INSERT INTO conversations (id, user_id, tenant) VALUES (%s, 'bench', 'org:b')",
                    (conv,),
                )
                db.execute(
                    "INSERT INTO messages (id, conversation_id, role, text, status)"
                    " VALUES (%s, %s, 'user', 'hello there', 'queued')",
                    (msg, conv),
                )
                asyncio.run(run_chat(msg))
                out.append(float(client.hget(f"{settings.REDIS_PREFIX}:metrics", metric) or 0))
    finally:
        client.close()
    return out


# --- Through web + queue + worker -----------------------------------------------------------
class Events:
    """The user's /events stream: when each message's first chunk and its end arrive."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.first_wall: dict[str, float] = {}
        self.done_wall: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.connected = asyncio.Event()
        self.changed = asyncio.Event()

    async def run(self, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", "/events", timeout=None) as response:
            stream = EventStream(response)
            await stream.connected()
            self.connected.set()
            async for event in stream:
                now, wall = time.perf_counter(), time.time()
                message_id = event.json().get("message_id")
                if event.type == "chat.chunk":
                    self.first.setdefault(message_id, now)
                    self.first_wall.setdefault(message_id, wall)
                elif event.type in ("chat.done", "chat.error"):
                    self.done[message_id] = now
                    self.done_wall[message_id] = wall
                    self.changed.set()

    async def wait_done(self, message_id: str) -> None:
        while message_id not in self.done:
            self.changed.clear()
            await self.changed.wait()


POST_TIMES: list[float] = []


async def post(client: httpx.AsyncClient) -> tuple[str, float]:
    t0 = time.perf_counter()
    r = await client.post("/chat/messages", json={"message": "hello there"})
    r.raise_for_status()
    POST_TIMES.append(time.perf_counter() - t0)
    return r.json()["message_id"], t0


async def through_stack(
    base: str, sequential: int, parallel: int, concurrency: int
) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {mint_token('bench-user-' + uuid.uuid4().hex[:6])}"}
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(
        base_url=base, headers=headers, limits=limits, timeout=60
    ) as client:
        events = Events()
        reader = asyncio.create_task(events.run(client))
        await asyncio.wait_for(events.connected.wait(), 10)
        for _ in range(5):  # warm-up: imports, pools, first compile
            mid, _t = await post(client)
            await events.wait_done(mid)
        ttfc = []
        POST_TIMES.clear()
        for _ in range(sequential):
            mid, t0 = await post(client)
            await events.wait_done(mid)
            ttfc.append(events.first[mid] - t0)
        posts = list(POST_TIMES)
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                mid, _t = await post(client)
                await events.wait_done(mid)

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(parallel)))
        rate = parallel / (time.perf_counter() - t0)
        reader.cancel()
    return {"ttfc": ttfc, "rate": rate, "post": posts}


def start_workers(kind: str, n: int, tree: Path = ROOT) -> list[Proc]:
    """``n`` chat worker processes of ``kind``: ``procfile`` is ``python -m jobs.worker``
    (any checkout's, for --compare), the others this script's ``--serve-worker``."""
    if kind == "procfile":
        env = {**os.environ, "WORKER_CHAT_PROCESSES": str(n), "WORKER_UPLOAD_PROCESSES": "0"}
        return [start_worker(f"bench-chat-worker-{RUN}", env, cwd=tree)]
    command = [sys.executable, __file__, "--serve-worker", kind]
    return [
        start_worker(f"bench-chat-{kind}-{i}-{RUN}", os.environ.copy(), command) for i in range(n)
    ]


def stack_run(
    args: argparse.Namespace, worker_kind: str, workers: int, tree: Path = ROOT
) -> dict[str, Any]:
    procs = start_workers(worker_kind, workers, tree)
    try:
        web = start_web(
            f"bench-chat-web-{RUN}", os.environ.copy(), "--log-level", "warning", cwd=tree
        )
        worker_procs = list(procs)
        procs.append(web)
        parallel = getattr(args, "parallel", args.chats)
        result = asyncio.run(through_stack(web.base, args.chats, parallel, args.concurrency))
        result["rss_kib"] = [p.rss_kib() for p in worker_procs]
        return result
    finally:
        stop_all(procs)


# --- Worker processes (--serve-worker) and hop marks (--hops) -------------------------------


def serve_worker(kind: str) -> None:
    """One chat worker process: ``chat`` is the class the Procfile's supervisor runs for
    chats (AsyncWorker), ``simple`` rq's SimpleWorker, ``fork`` rq's forking Worker;
    ``hops-chat`` / ``hops-simple`` the same, writing hop marks."""
    from rq import SimpleWorker, Worker

    import jobs.chat.job  # noqa: F401 - preloaded: a forking Worker's horse inherits it
    from core import settings
    from core.logs import configure_logging
    from jobs.chat.runtime import open_runtime
    from jobs.worker.asyncworker import AsyncWorker

    configure_logging()
    classes: dict[str, type[Worker]] = {
        "chat": AsyncWorker,
        "simple": SimpleWorker,
        "fork": Worker,
    }
    worker_class = classes[kind.removeprefix("hops-")]
    if kind.startswith("hops-"):
        worker_class = hop_worker(worker_class)
    connection = redis.Redis.from_url(settings.REDIS_URL)
    extra: dict[str, Any] = {}
    if issubclass(worker_class, AsyncWorker):
        extra = {"lifespan": open_runtime, "concurrency": settings.CHAT_WORKER_CONCURRENCY}
    worker = worker_class([settings.CHAT_QUEUE], connection=connection, **extra)
    worker.work(logging_level="WARNING")


class HopLog:
    """Hop marks ``<message id> <hop> <time.time()>``, one line each, to HOPS_FILE.<role>:
    wall-clock stamps, comparable across processes on one machine."""

    def __init__(self, role: str) -> None:
        self.out = open(f"{os.environ['HOPS_FILE']}.{role}", "a", buffering=1)  # noqa: SIM115

    def mark(self, key: str, hop: str, at: float | None = None) -> None:
        self.out.write(f"{key.removeprefix('chat-')} {hop} {at or time.time()!r}\n")


def hop_worker(base: type) -> type:
    """``base`` with a mark around RQ's public steps of each job (rq/worker/base.py)."""
    log = HopLog("worker")

    class HopWorker(base):  # type: ignore[misc, valid-type]
        def dequeue_job_and_maintain_ttl(self, *args: Any, **kwargs: Any) -> Any:
            asked = time.time()
            result = super().dequeue_job_and_maintain_ttl(*args, **kwargs)
            if result:
                log.mark(result[0].id, "worker.listen", asked)
                log.mark(result[0].id, "worker.dequeued")
            return result

        def prepare_execution(self, job: Any) -> Any:
            result = super().prepare_execution(job)
            log.mark(job.id, "worker.execution")
            return result

        def prepare_job_execution(self, job: Any, *args: Any, **kwargs: Any) -> Any:
            result = super().prepare_job_execution(job, *args, **kwargs)
            log.mark(job.id, "worker.prepared")
            return result

        def perform_job(self, job: Any, *args: Any, **kwargs: Any) -> Any:
            log.mark(job.id, "worker.job_start")
            try:
                return super().perform_job(job, *args, **kwargs)
            finally:
                log.mark(job.id, "worker.job_end")

        def handle_job_success(self, job: Any, *args: Any, **kwargs: Any) -> Any:
            result = super().handle_job_success(job, *args, **kwargs)
            log.mark(job.id, "worker.rq_success")
            return result

    return HopWorker


def serve_web_hops(port: int) -> None:
    """The web app behind an ASGI wrapper that marks when POST /chat/messages reaches
    the app and when its 202 leaves it (the message id is in the body)."""
    import uvicorn

    from app.main import app

    log = HopLog("web")

    async def hops_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/chat/messages":
            await app(scope, receive, send)
            return
        arrived = time.time()
        answered = 0.0

        async def send_marked(message: Any) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = time.time()
            elif message["type"] == "http.response.body" and answered:
                message_id = json.loads(message["body"]).get("message_id")
                if message_id:
                    log.mark(message_id, "web.asgi", arrived)
                    log.mark(message_id, "web.response", answered)
            await send(message)

        await app(scope, receive, send_marked)

    uvicorn.run(hops_app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


async def first_publishes(user: str, marks: dict[str, float], ready: asyncio.Event) -> None:
    """When each message's first chat.chunk is published: the user's channel, read here."""
    from core import settings
    from core.principal import Identity

    client = redis.asyncio.Redis.from_url(settings.REDIS_URL)
    try:
        async with client.pubsub() as pubsub:
            # The user's token has no org: a tenant of one (core/principal.py).
            await pubsub.subscribe(event_streams.user_stream(Identity(user).key))
            ready.set()
            async for message in pubsub.listen():
                if message["type"] != "message":
                    continue
                at = time.time()
                for event in SSEParser(keep=False).feed(message["data"]):
                    data = event.json()
                    if event.type == "chat.chunk" and data.get("index") == 0:
                        marks.setdefault(data["message_id"], at)
    finally:
        await client.aclose()


HOPS = [
    ("client.post", "client sends POST"),
    ("web.asgi", "request reaches the ASGI app"),
    ("web.response", "202 leaves the app (auth, body, rate limit, PostgreSQL, enqueue)"),
    ("client.response", "client has the 202"),
    ("worker.listen", "worker (idle) asks for the next job"),
    ("worker.dequeued", "job dequeued and fetched"),
    ("worker.execution", "RQ prepare_execution"),
    ("worker.job_start", "RQ perform_job begins"),
    ("worker.prepared", "RQ prepare_job_execution (the job function is next)"),
    ("redis.first_publish", "first chat.chunk announced on the user's channel"),
    ("client.first_chunk", "first chat.chunk read from /events"),
]


async def hop_chats(base: str, n: int, hops: dict[str, dict[str, float]]) -> None:
    user = "bench-user-" + uuid.uuid4().hex[:6]
    headers = {"authorization": f"Bearer {mint_token(user)}"}
    published: dict[str, float] = {}
    subscribed = asyncio.Event()
    listener = asyncio.create_task(first_publishes(user, published, subscribed))
    await asyncio.wait_for(subscribed.wait(), 10)
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=60) as client:
        events = Events()
        reader = asyncio.create_task(events.run(client))
        await asyncio.wait_for(events.connected.wait(), 10)
        for i in range(n + 5):
            wall = time.time()
            mid, _t = await post(client)
            got = time.time()
            await events.wait_done(mid)
            if i >= 5:  # warm-up
                hops[mid] = {
                    "client.post": wall,
                    "client.response": got,
                    "client.first_chunk": events.first_wall[mid],
                    "client.done": events.done_wall[mid],
                }
                if mid in published:
                    hops[mid]["redis.first_publish"] = published[mid]
        reader.cancel()
    listener.cancel()
    await asyncio.gather(reader, listener, return_exceptions=True)


def hops_run(n: int, worker_kind: str) -> None:
    """Per-hop timestamps through web + one worker, one chat at a time."""
    port = embedded.free_port()
    hops_file = f"/tmp/herald-hops-{RUN}"
    env = {**os.environ, "HOPS_FILE": hops_file}
    procs = [start_worker(f"bench-chat-hops-worker-{RUN}", env, [
        sys.executable, __file__, "--serve-worker", f"hops-{worker_kind}"
    ])]  # fmt: skip
    hops: dict[str, dict[str, float]] = {}
    try:
        command = [sys.executable, __file__, "--serve-web-hops", str(port)]
        web = start_web(f"bench-chat-hops-web-{RUN}", env, command=command, port=port)
        procs.append(web)
        asyncio.run(hop_chats(web.base, n, hops))
    finally:
        stop_all(procs)
    for role in ("web", "worker"):
        path = Path(f"{hops_file}.{role}")
        for line in path.read_text().splitlines():
            mid, hop, t = line.split()
            if mid in hops:
                hops[mid][hop] = float(t)
        path.unlink()
    name = {"chat": "jobs.worker.asyncworker.AsyncWorker", "simple": "rq SimpleWorker"}[worker_kind]
    print(f"\nper hop, {n} chats one at a time, one {name}; ms since client.post")
    print("| hop | since POST p50 (ms) | step p50 (ms) | step p90 (ms) |")
    print("|---|---|---|---|")
    prev = None
    for hop, label in HOPS:
        since = [h[hop] - h["client.post"] for h in hops.values() if hop in h]
        if not since:
            continue
        if prev is None:
            steps = [0.0]
        else:
            steps = [h[hop] - h[prev] for h in hops.values() if hop in h and prev in h]
        print(
            f"| {label} (`{hop}`) | {ms(statistics.median(since))} |"
            f" {ms(statistics.median(steps))} | {ms(pct(steps, 0.9))} |"
        )
        prev = hop
    tail = [
        ("worker.job_end", "RQ perform_job returned (after chat.done)"),
        ("worker.rq_success", "RQ stored the result"),
        ("worker.next_listen", "worker asks for the next job"),
    ]
    order = sorted(hops.values(), key=lambda h: h["client.post"])
    for before, after in itertools.pairwise(order):
        if "worker.listen" in after:
            before["worker.next_listen"] = after["worker.listen"]
    print()
    print("after the first chunk: the job's end and RQ's bookkeeping (ms since chat.done read)")
    print("| step | p50 (ms) |")
    print("|---|---|")
    for hop, label in tail:
        since = [h[hop] - h["client.done"] for h in order if hop in h and "client.done" in h]
        if since:
            print(f"| {label} (`{hop}`) | {ms(statistics.median(since))} |")


def compare_run(args: argparse.Namespace, other: Path) -> None:
    """This tree and ``other`` (e.g. ``git archive <commit> | tar -x -C dir``), one web
    process and one chat worker each, in alternating rounds, so both see the same load."""
    first, _whole = asyncio.run(call_directly(os.environ["LLM_BASE_URL"], args.chats))
    rounds = 4
    per = argparse.Namespace(chats=args.chats // rounds, concurrency=1, parallel=0)
    got: dict[str, list[float]] = {"this": [], "other": []}
    posts: dict[str, list[float]] = {"this": [], "other": []}
    for _ in range(rounds):
        for name, tree in (("other", other), ("this", ROOT)):
            result = stack_run(per, "procfile", 1, tree)
            got[name] += result["ttfc"]
            posts[name] += result["post"]
    b = summary(first)
    print(f"compare: {args.chats} chats each, {rounds} alternating rounds; other = {other}")
    print("| path | first chunk p50 (ms) | p99 (ms) | overhead p50 (ms) | POST p50 (ms) |")
    print("|---|---|---|---|---|")
    print(f"| baseline: upstream called directly | {ms(b['p50'])} | {ms(b['p99'])} | | |")
    for name in ("other", "this"):
        s = summary(got[name])
        print(
            f"| POST → /events chunk, {name} tree | {ms(s['p50'])} | {ms(s['p99'])} |"
            f" {ms(s['p50'] - b['p50'])} | {ms(statistics.median(posts[name]))} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--hops", action="store_true", help="only the per-hop timestamps (instrumented web, worker)"
    )
    parser.add_argument(
        "--compare", type=Path, help="another checkout: its web + worker against this one's"
    )
    parser.add_argument("--serve-worker", help=argparse.SUPPRESS)
    parser.add_argument("--serve-web-hops", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_worker:
        serve_worker(args.serve_worker)
        return
    if args.serve_web_hops:
        serve_web_hops(args.serve_web_hops)
        return

    BENCH.create_schema()
    server = OpenAIServer().start()
    os.environ["LLM_BASE_URL"] = server.base_url
    from core import settings

    settings.LLM_BASE_URL = server.base_url
    try:
        from app.migrations import apply_migrations

        apply_migrations()
        if args.compare:
            compare_run(args, args.compare)
            return
        if args.hops:
            hops_run(args.chats, "simple")
            hops_run(args.chats, "chat")
            return
        first, whole = asyncio.run(call_directly(server.base_url, args.chats))
        job = job_in_process(args.chats)
        chat = stack_run(args, "chat", args.workers)
        simple = stack_run(args, "simple", args.workers)
        fork = stack_run(args, "fork", args.workers)
        one = stack_run(
            argparse.Namespace(chats=args.chats // 2, concurrency=args.concurrency), "chat", 1
        )
    finally:
        server.stop()
        BENCH.remove()

    b, j = summary(first), summary(job)
    c, s, f = summary(chat["ttfc"]), summary(simple["ttfc"]), summary(fork["ttfc"])
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}")
    print(f"chats per measurement: {args.chats}; upstream reply: 6 chunks, zero latency\n")
    print("| path | first chunk p50 (ms) | p99 (ms) |")
    print("|---|---|---|")
    print(f"| baseline: upstream called directly | {ms(b['p50'])} | {ms(b['p99'])} |")
    print(f"| run_chat in-process (no web, no queue) | {ms(j['p50'])} | {ms(j['p99'])} |")
    print(f"| POST → /events chunk, AsyncWorker | {ms(c['p50'])} | {ms(c['p99'])} |")
    print(f"| POST → /events chunk, rq SimpleWorker | {ms(s['p50'])} | {ms(s['p99'])} |")
    print(f"| POST → /events chunk, forking Worker | {ms(f['p50'])} | {ms(f['p99'])} |")
    print()
    print(f"median overhead over baseline (AsyncWorker): {ms(c['p50'] - b['p50'])} ms")
    print(f"median overhead over baseline (SimpleWorker): {ms(s['p50'] - b['p50'])} ms")
    print(f"POST /chat/messages response p50: {ms(statistics.median(chat['post']))} ms")
    print(f"whole reply, baseline p50: {ms(statistics.median(whole))} ms")
    print(
        f"chats/s, {args.workers} AsyncWorker processes, {args.concurrency} in flight: "
        f"{chat['rate']:.1f}"
    )
    print(f"chats/s, {args.workers} SimpleWorker processes: {simple['rate']:.1f}")
    print(f"chats/s, {args.workers} forking Worker processes: {fork['rate']:.1f}")
    print(f"chats/s, 1 AsyncWorker process: {one['rate']:.1f}")
    print(f"worker RSS after run (KiB): chat {chat['rss_kib']}, fork {fork['rss_kib']}")


if __name__ == "__main__":
    main()
