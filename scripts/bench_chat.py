#!/usr/bin/env python
"""Chat latency and throughput on loopback, beside an in-process baseline, in one run.

    .venv/bin/python scripts/bench_chat.py [--chats 200 --concurrency 8 --workers 2]

Starts everything itself: Redis and PostgreSQL (REDIS_URL / DATABASE_URL if set, else
the embedded servers; a private key prefix and schema, dropped at the end), a
zero-latency OpenAI-compatible loopback upstream (tests/support/openai_server.py), one
uvicorn web process and RQ chat worker processes: ``jobs.worker.ChatWorker`` (what the
Procfile runs), rq's plain ``SimpleWorker`` and a forking ``Worker``.

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
(client, web handler steps, RQ dequeue and bookkeeping, job, SSE) with plain
SimpleWorker and ChatWorker, in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RUN = secrets.token_hex(4)
# Settings are read once at import: the environment is set before any app import.
from app.dev import embedded  # noqa: E402 - embedded reads no settings

embedded.ensure_services()
_base_db = os.environ["DATABASE_URL"]
SCHEMA = f"bench_{RUN}"
_sep = "&" if "?" in _base_db else "?"
os.environ.update(
    DATABASE_URL=f"{_base_db}{_sep}options=-csearch_path%3D{SCHEMA}",
    REDIS_PREFIX=f"bench-chat-{RUN}",
    # rq reads it when first imported (below): its keys then sit under our prefix too.
    RQ_KEY_PREFIX=f"bench-chat-{RUN}:rq",
    JWT_SECRET=os.environ.get("JWT_SECRET") or "bench-" + secrets.token_hex(24),
    LOG_LEVEL="WARNING",
    CHAT_RATE_LIMIT="1000000/hour",
    LLM_PROVIDER="openai",
    LLM_MODEL="loopback-bench",
    LLM_API_KEY="not-a-key",
    # Its own queue: workers of a dev stack on the same Redis never see bench jobs.
    CHAT_QUEUE=f"bench-chat-{RUN}",
)

import httpx  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402

from app.security.auth import mint_token  # noqa: E402
from tests.support.openai_server import OpenAIServer  # noqa: E402

WORKER = """
import sys, redis
import jobs.chat.job  # preloaded: a forking Worker's horse then inherits the imports
from rq import SimpleWorker, Worker
from core import settings
from core.logs import configure_logging
try:
    from jobs.worker.supervisor import ChatWorker
except ImportError:  # --compare with a tree from before ChatWorker
    ChatWorker = SimpleWorker
configure_logging()
cls = {"chat": ChatWorker, "simple": SimpleWorker, "fork": Worker}[sys.argv[1]]
cls([settings.CHAT_QUEUE], connection=redis.Redis.from_url(settings.REDIS_URL)).work(
    logging_level="WARNING"
)
"""

# --hops: the same processes with a timestamp (time.time(), comparable across processes
# on one machine) written at each hop, keyed by message id, to HOPS_FILE.<role>.
WEB_HOPS = """
import json, os, time, uvicorn
from starlette.routing import Route
from app import jobqueue
from app.routes import chat
from app.security import ratelimit
out = open(os.environ["HOPS_FILE"] + ".web", "a", buffering=1)
marks = []
def mark(name):
    marks.append((name, time.time()))
def after(owner, attr, name):
    orig = getattr(owner, attr)
    async def wrapped(*a, **k):
        r = await orig(*a, **k)
        mark(name)
        return r
    setattr(owner, attr, wrapped)
after(chat, "authenticate", "auth")
after(chat, "read_message", "body")
after(ratelimit.RateLimiter, "acquire", "ratelimit")
after(jobqueue.JobQueue, "enqueue", "enqueue")
orig_inv = chat.ainvalidate_history
async def invalidate(*a, **k):
    mark("db")
    await orig_inv(*a, **k)
    mark("invalidate")
chat.ainvalidate_history = invalidate
orig_post = chat.post_message
async def post(request):
    mark("handler")
    resp = await orig_post(request)
    mid = json.loads(resp.body)["message_id"]
    for n, t in marks:
        out.write(f"{mid} web.{n} {t!r}\\n")
    marks.clear()
    return resp
chat.routes[0] = Route("/chat/messages", post, methods=["POST"])
from app.main import app as inner
async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/chat/messages":
        marks.clear()
        mark("asgi")
    await inner(scope, receive, send)
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["HOPS_PORT"]), log_level="warning",
            access_log=False)
"""

WORKER_HOPS = """
import os, sys, time, redis
import jobs.chat.job
from rq import Queue, SimpleWorker
from core import settings
from core.logs import configure_logging
from jobs.worker.supervisor import ChatWorker
out = open(os.environ["HOPS_FILE"] + ".worker", "a", buffering=1)
def mark(key, name):
    out.write(f"{key.removeprefix('chat-')} worker.{name} {time.time()!r}\\n")
orig_dq = Queue.dequeue_any.__func__
def dequeue_any(cls, *a, **k):
    t = time.time()
    r = orig_dq(cls, *a, **k)
    if r:
        out.write(f"{r[0].id.removeprefix('chat-')} worker.listen {t!r}\\n")
        mark(r[0].id, "dequeued")
    return r
Queue.dequeue_any = classmethod(dequeue_any)
def after(owner, attr, name):
    orig = getattr(owner, attr)
    def wrapped(self, job, *a, **k):
        r = orig(self, job, *a, **k)
        mark(job.id, name)
        return r
    setattr(owner, attr, wrapped)
cls = {"chat": ChatWorker, "simple": SimpleWorker}[sys.argv[1]]
after(cls, "prepare_execution", "execution")
after(cls, "prepare_job_execution", "prepared")
after(cls, "handle_job_success", "rq_success")
orig_run = jobs.chat.run_chat
def run_chat(message_id):
    mark(message_id, "job_start")
    try:
        return orig_run(message_id)
    finally:
        mark(message_id, "job_end")
jobs.chat.run_chat = run_chat
orig_publish = jobs.chat._publish
def publish(client, user_id, event, data):
    orig_publish(client, user_id, event, data)
    if event == "chat.chunk" and data.get("index") == 0:
        mark(data["message_id"], "first_publish")
jobs.chat._publish = publish
configure_logging()
cls([settings.CHAT_QUEUE], connection=redis.Redis.from_url(settings.REDIS_URL)).work(
    logging_level="WARNING"
)
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(v: float) -> str:
    return f"{v * 1000:.1f}"


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": statistics.median(values), "p99": pct(values, 0.99), "n": len(values)}


# --- Baseline: the upstream called directly ---------------------------------------------
async def baseline(base_url: str, n: int) -> tuple[list[float], list[float]]:
    from core import settings
    from jobs.chat.llm import OpenAIProvider

    first: list[float] = []
    whole: list[float] = []
    async with httpx.AsyncClient() as client:
        provider = OpenAIProvider(
            client,
            base_url=base_url,
            api_key="",
            model="loopback-bench",
            first_token_timeout=10,
            idle_timeout=10,
            max_tokens=settings.LLM_MAX_TOKENS,  # the same request body as a chat job sends
        )
        messages = [{"role": "user", "content": "hello"}]
        for _ in range(n):
            t0 = time.perf_counter()
            got_first = False
            async for _text in provider.stream(messages, asyncio.get_running_loop().time() + 30):
                if not got_first:
                    first.append(time.perf_counter() - t0)
                    got_first = True
            whole.append(time.perf_counter() - t0)
    return first, whole


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
                    "INSERT INTO conversations (id, user_id, org_id) VALUES (%s, 'bench', 'b')",
                    (conv,),
                )
                db.execute(
                    "INSERT INTO messages (id, conversation_id, role, text, status)"
                    " VALUES (%s, %s, 'user', 'hello there', 'queued')",
                    (msg, conv),
                )
                run_chat(msg)
                out.append(float(client.hget(f"{settings.REDIS_PREFIX}:metrics", metric) or 0))
    finally:
        client.close()
    return out


# --- Through web + queue + worker -----------------------------------------------------------
class Events:
    """The user's /events stream: records when each message's first chunk and end arrive."""

    def __init__(self) -> None:
        self.first: dict[str, float] = {}
        self.first_wall: dict[str, float] = {}
        self.done_wall: dict[str, float] = {}
        self.done: dict[str, float] = {}
        self.connected = asyncio.Event()
        self.changed = asyncio.Event()

    async def run(self, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", "/events", timeout=None) as stream:
            buffer = ""
            async for text in stream.aiter_text():
                buffer += text
                if ": connected" in buffer:
                    self.connected.set()
                *frames, buffer = buffer.split("\n\n")
                now, wall = time.perf_counter(), time.time()
                for frame in frames:
                    lines = dict(
                        line.split(": ", 1) for line in frame.splitlines() if line[:1] != ":"
                    )
                    if "data" not in lines:
                        continue
                    message_id = json.loads(lines["data"]).get("message_id")
                    if lines.get("event") == "chat.chunk":
                        self.first.setdefault(message_id, now)
                        self.first_wall.setdefault(message_id, wall)
                    elif lines.get("event") in ("chat.done", "chat.error"):
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


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def start(argv: list[str], cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=os.environ.copy(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def stack_run(
    args: argparse.Namespace, worker_class: str, workers: int, tree: Path = ROOT
) -> dict[str, Any]:
    port = embedded.free_port()
    web = start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        tree,
    )
    procs = [start([sys.executable, "-c", WORKER, worker_class], tree) for _ in range(workers)]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("web did not start")
            time.sleep(0.1)
        parallel = getattr(args, "parallel", args.chats)
        result = asyncio.run(through_stack(base, args.chats, parallel, args.concurrency))
        result["rss_kib"] = [rss_kib(p.pid) for p in procs]
        return result
    finally:
        for p in [web, *procs]:
            stop(p)


HOPS = [
    ("client.post", "client sends POST"),
    ("web.asgi", "request reaches the ASGI app"),
    ("web.handler", "through middleware, handler starts"),
    ("web.auth", "JWT checked"),
    ("web.body", "body read and validated"),
    ("web.ratelimit", "rate limit counted (Redis)"),
    ("web.db", "message stored (PostgreSQL), rate-limit headers read beside"),
    ("web.invalidate", "history cache invalidated (Redis), beside the enqueue"),
    ("web.enqueue", "RQ enqueue returned"),
    ("client.response", "client has the 202"),
    ("worker.listen", "worker (idle) blocks in BLMOVE"),
    ("worker.dequeued", "job dequeued and fetched"),
    ("worker.execution", "RQ prepare_execution"),
    ("worker.prepared", "RQ prepare_job_execution"),
    ("worker.job_start", "run_chat called"),
    ("worker.first_publish", "first chat.chunk published"),
    ("client.first_chunk", "first chat.chunk read from /events"),
]


async def hop_chats(base: str, n: int, hops: dict[str, dict[str, float]]) -> None:
    headers = {"authorization": f"Bearer {mint_token('bench-user-' + uuid.uuid4().hex[:6])}"}
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
        reader.cancel()


def hops_run(n: int, worker_class: str) -> None:
    """Per-hop timestamps through web + one worker, one chat at a time."""
    port = embedded.free_port()
    hops_file = f"/tmp/herald-hops-{RUN}"
    env = {"HOPS_FILE": hops_file, "HOPS_PORT": str(port)}
    os.environ.update(env)
    web = start([sys.executable, "-c", WEB_HOPS])
    worker = start([sys.executable, "-c", WORKER_HOPS, worker_class])
    base = f"http://127.0.0.1:{port}"
    hops: dict[str, dict[str, float]] = {}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("web did not start")
            time.sleep(0.1)
        asyncio.run(hop_chats(base, n, hops))
    finally:
        for p in (web, worker):
            stop(p)
    for role in ("web", "worker"):
        path = Path(f"{hops_file}.{role}")
        for line in path.read_text().splitlines():
            mid, hop, t = line.split()
            if mid in hops:
                hops[mid][hop] = float(t)
        path.unlink()
    name = {"chat": "jobs.worker.supervisor.ChatWorker", "simple": "rq SimpleWorker"}[worker_class]
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
        ("worker.job_end", "run_chat returned (after chat.done)"),
        ("worker.rq_success", "RQ stored the result"),
        ("worker.next_listen", "worker back in BLMOVE"),
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
    first, _whole = asyncio.run(baseline(os.environ["LLM_BASE_URL"], args.chats))
    rounds = 4
    per = argparse.Namespace(chats=args.chats // rounds, concurrency=1, parallel=0)
    got: dict[str, list[float]] = {"this": [], "other": []}
    posts: dict[str, list[float]] = {"this": [], "other": []}
    for _ in range(rounds):
        for name, tree in (("other", other), ("this", ROOT)):
            result = stack_run(per, "chat", 1, tree)
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
    args = parser.parse_args()

    with psycopg.connect(_base_db, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{SCHEMA}"')
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
        first, whole = asyncio.run(baseline(server.base_url, args.chats))
        job = job_in_process(args.chats)
        chat = stack_run(args, "chat", args.workers)
        simple = stack_run(args, "simple", args.workers)
        fork = stack_run(args, "fork", args.workers)
        one = stack_run(
            argparse.Namespace(chats=args.chats // 2, concurrency=args.concurrency), "chat", 1
        )
    finally:
        server.stop()
        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        try:
            keys = list(client.scan_iter(match=f"bench-chat-{RUN}:*", count=1000))
            for i in range(0, len(keys), 500):
                client.unlink(*keys[i : i + 500])
        finally:
            client.close()
        with psycopg.connect(_base_db, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE')

    b, j = summary(first), summary(job)
    c, s, f = summary(chat["ttfc"]), summary(simple["ttfc"]), summary(fork["ttfc"])
    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}")
    print(f"chats per measurement: {args.chats}; upstream reply: 6 chunks, zero latency\n")
    print("| path | first chunk p50 (ms) | p99 (ms) |")
    print("|---|---|---|")
    print(f"| baseline: upstream called directly | {ms(b['p50'])} | {ms(b['p99'])} |")
    print(f"| run_chat in-process (no web, no queue) | {ms(j['p50'])} | {ms(j['p99'])} |")
    print(f"| POST → /events chunk, ChatWorker | {ms(c['p50'])} | {ms(c['p99'])} |")
    print(f"| POST → /events chunk, rq SimpleWorker | {ms(s['p50'])} | {ms(s['p99'])} |")
    print(f"| POST → /events chunk, forking Worker | {ms(f['p50'])} | {ms(f['p99'])} |")
    print()
    print(f"median overhead over baseline (ChatWorker): {ms(c['p50'] - b['p50'])} ms")
    print(f"median overhead over baseline (SimpleWorker): {ms(s['p50'] - b['p50'])} ms")
    print(f"POST /chat/messages response p50: {ms(statistics.median(chat['post']))} ms")
    print(f"whole reply, baseline p50: {ms(statistics.median(whole))} ms")
    print(
        f"chats/s, {args.workers} ChatWorker processes, {args.concurrency} in flight: "
        f"{chat['rate']:.1f}"
    )
    print(f"chats/s, {args.workers} SimpleWorker processes: {simple['rate']:.1f}")
    print(f"chats/s, {args.workers} forking Worker processes: {fork['rate']:.1f}")
    print(f"chats/s, 1 ChatWorker process: {one['rate']:.1f}")
    print(f"worker RSS after run (KiB): chat {chat['rss_kib']}, fork {fork['rss_kib']}")


if __name__ == "__main__":
    main()
