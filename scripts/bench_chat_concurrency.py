#!/usr/bin/env python
"""Many chat replies at once through ONE chat worker process (issue 12's aims).

    .venv/bin/python scripts/bench_chat_concurrency.py            # every scenario
    .venv/bin/python scripts/bench_chat_concurrency.py --scenario k100 --scenario zero

K users, each holding an ``/events`` stream, post ``POST /chat/messages`` at the same
moment through the real web process (``app.dev.start.web_argv``, the Procfile's uvicorn
line) and one chat worker process, against a loopback OpenAI-compatible upstream
streaming paced chunks (tests/support/openai_server.py). Scenarios:

  k100   K=100, upstream 40 chunks 50 ms apart
  k500   K=500, upstream 20 chunks 100 ms apart
  zero   K=200, zero-latency upstream (6 chunks): chats/s per worker process
  k1     one chat at a time, zero-latency upstream: POST → first chunk minus the
         upstream called directly (OpenAIProvider + httpx, no web, queue or job)

Each runs on Herald's worker (``python -m jobs.worker`` with WORKER_CHAT_PROCESSES=1,
WORKER_UPLOAD_PROCESSES=0: one ``AsyncWorker``) and on the **baseline**, one reply per
process: rq's plain ``SimpleWorker`` running the same async job (RQ runs a coroutine
job under ``asyncio.run``, one at a time). The paced baselines use ``--baseline-k``
users (default 20): one reply at a time, K=500 would take 17 minutes.

For the paced scenarios a third row, ``upstream direct``, is the same K requests made at
once straight to the upstream by the bench's own (un-niced) process through the chat
worker's upstream transport: what this upstream and this box allow with no web, queue or
job at all, measured in the same run.

Reported: POST → first ``chat.chunk`` and → ``chat.done`` (p50/p99/max), errors (a
POST not answered 202, ``chat.error``, a reply missing or not exactly the upstream's
text), worker RSS per reply in flight ((peak − idle) / K, sampled from /proc), event-loop
lag (the worker's own probe, jobs/worker/looplag.py, 10 ms ticks, read from its
histogram in Redis), and ``chat.chunk`` events per reply against upstream pieces.

The upstream and the load client run as separate processes under ``nice -n 10`` so the
figures are about Herald. Everything starts through tests/support/procs.py and every
stream is read with tests/support/sse.py. Redis and PostgreSQL: REDIS_URL /
DATABASE_URL if set, else the embedded servers; a private key prefix and schema,
dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.benchenv import isolate_run  # noqa: E402 - sets the environment first

BENCH = isolate_run(
    "conc",
    # Nothing but the worker may limit the run: distinct users, no rate limits.
    CHAT_USER_CONCURRENCY="100000",
    WORKER_CHAT_PROCESSES="1",
    WORKER_UPLOAD_PROCESSES="0",
    WORKER_LOOP_LAG_TICK_SECONDS="0.01",
    WORKER_LOOP_LAG_REPORT_SECONDS="0.5",
)
RUN = BENCH.run

import orjson  # noqa: E402
import redis  # noqa: E402

from tests.support.openai_server import call_directly  # noqa: E402
from tests.support.procs import Proc, start, start_web, start_worker, stop_all, wait_until  # noqa: E402
from tests.support.sse import ChunkedDecoder, SSEParser, open_sse, status_of  # noqa: E402

NICE = ["nice", "-n", "10"]
SCENARIOS: dict[str, dict[str, Any]] = {
    "k100": {"k": 100, "chunks": 40, "delay": 0.05},
    "k500": {"k": 500, "chunks": 20, "delay": 0.1},
    "zero": {"k": 200, "chunks": 6, "delay": 0.0},
    "k1": {"k": 1, "chunks": 6, "delay": 0.0, "sequential": 100},
}


def pieces(n: int) -> list[str]:
    """The upstream's reply: ``n`` plain words (the guard and marker filter pass them)."""
    return [("Word" if i == 0 else " word") + str(i) for i in range(n)]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


# --- processes started by this script -------------------------------------------------------
def serve_upstream(port_file: str, chunks: int, delay: float) -> None:
    """The loopback upstream in its own (niced) process; its port goes to ``port_file``."""
    from tests.support.openai_server import OpenAIServer

    server = OpenAIServer(reply=pieces(chunks), chunk_delay=delay).start()
    Path(port_file).write_text(server.base_url)
    stopping = asyncio.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    while not stopping.is_set():
        time.sleep(0.2)
    server.stop()


def serve_baseline_worker() -> None:
    """One reply per process: rq's SimpleWorker runs the async job under asyncio.run."""
    from rq import SimpleWorker

    import jobs.chat.job  # noqa: F401 - imported before the first job, as the supervisor does
    from core import settings
    from core.logs import configure_logging

    configure_logging()
    connection = redis.Redis.from_url(settings.REDIS_URL)
    SimpleWorker([settings.CHAT_QUEUE], connection=connection).work(logging_level="WARNING")


# --- the load client (--serve-load, niced) --------------------------------------------------
class Reply:
    __slots__ = ("answered", "done", "error", "events", "final", "first", "sent", "text", "wall")

    def __init__(self, sent: float, wall: float, answered: float) -> None:
        self.sent, self.wall, self.answered = sent, wall, answered
        self.first: float | None = None
        self.done: float | None = None
        self.events = 0
        self.text: list[str] = []
        self.final: str | None = None
        self.error: str | None = None


class Poster:
    """One user's keep-alive connection for ``POST /chat/messages``, on a raw socket: an
    httpx request costs the (niced) client about a millisecond of CPU, and K of them at
    once would be the client's queue, not Herald's."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port, self.token = host, port, token
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, body: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        head = (
            f"POST /chat/messages HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.writer.write(head.encode() + body)
        response = await self.reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in response.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return status_of(response), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class Load:
    def __init__(self, base: str) -> None:
        self.base = base
        self.host, port = base.removeprefix("http://").split(":")
        self.port = int(port)
        self.replies: dict[str, Reply] = {}
        # Events that beat their POST's 202 to this (niced) client, replayed once it lands.
        self.early: dict[str, list[tuple[str, dict[str, Any], float]]] = {}
        self.ended = 0
        self.changed = asyncio.Event()

    async def stream(self, token: str, connected: asyncio.Event) -> None:
        """One user's /events, read until cancelled."""
        headers = {"Authorization": f"Bearer {token}"}
        reader, writer = await open_sse(self.host, self.port, "/events", headers)
        decoder, parser = ChunkedDecoder(), SSEParser(keep=False)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                now = time.perf_counter()
                for event in parser.feed(decoder.feed(data)):
                    self.on_event(event.type, event.json(), now)
                if parser.comments:
                    connected.set()
        finally:
            writer.close()

    def on_event(self, kind: str, data: dict[str, Any], now: float) -> None:
        reply = self.replies.get(data.get("message_id", ""))
        if reply is None:
            self.early.setdefault(data.get("message_id", ""), []).append((kind, data, now))
            return
        if reply.done is not None:
            return
        if kind == "chat.chunk":
            reply.first = reply.first or now
            reply.events += 1
            reply.text.append(data["text"])
        elif kind in ("chat.done", "chat.error"):
            reply.done = now
            reply.final = data.get("text")
            reply.error = data.get("code") if kind == "chat.error" else None
            self.ended += 1
            self.changed.set()

    async def post(self, user: Poster) -> str | None:
        sent, wall = time.perf_counter(), time.time()
        status, body = await user.post(b'{"message": "hello there"}')
        if status != 202:
            return f"HTTP {status}"
        answered = time.perf_counter()
        message_id = orjson.loads(body)["message_id"]
        self.replies[message_id] = Reply(sent, wall, answered)
        for kind, data, now in self.early.pop(message_id, []):
            self.on_event(kind, data, now)
        return None

    async def wait_ended(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.ended < n and time.monotonic() < deadline:
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), deadline - time.monotonic())


def worker_pid() -> int:
    from rq import Queue, Worker

    from core import settings

    connection = redis.Redis.from_url(settings.REDIS_URL)
    try:
        workers = Worker.all(queue=Queue(settings.CHAT_QUEUE, connection=connection))
        return int(workers[0].pid)
    finally:
        connection.close()


def rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS:")).split()[1])


def job_stamps(replies: dict[str, Reply]) -> dict[str, list[float]]:
    """Where the time to the first chunk went, per reply (s): the POST answered, the job
    enqueued and started by the worker (RQ's own job stamps; wall clock)."""
    from rq.job import Job

    from core import settings
    from core.jobkinds import chat_job_id

    connection = redis.Redis.from_url(settings.REDIS_URL)
    ids = list(replies)
    try:
        jobs = Job.fetch_many([chat_job_id(m) for m in ids], connection=connection)
    finally:
        connection.close()
    out: dict[str, list[float]] = {"answered": [], "enqueued": [], "started": []}
    for message_id, job in zip(ids, jobs, strict=True):
        reply = replies[message_id]
        out["answered"].append(reply.answered - reply.sent)
        if job is not None and job.enqueued_at and job.started_at:
            out["enqueued"].append(job.enqueued_at.timestamp() - reply.wall)
            out["started"].append(job.started_at.timestamp() - reply.wall)
    return out


def published_first() -> tuple[float, float]:
    """The job's own first-chunk counters (from enqueue to the publish): sum, count."""
    from core import settings
    from core.jobmetrics import metric_field

    labels = {"model": "loopback-bench", "provider": "openai"}
    connection = redis.Redis.from_url(settings.REDIS_URL)
    try:
        values = connection.hmget(
            *metric_field("herald_chat_first_chunk_seconds_sum_total", labels),
            metric_field("herald_chat_first_chunk_seconds_count_total", labels)[1],
        )
    finally:
        connection.close()
    return float(values[0] or 0), float(values[1] or 0)


def lag_buckets() -> dict[str, float]:
    """The worker's loop-lag histogram (jobs/worker/looplag.py): cumulative count per le."""
    from core import settings
    from core.jobmetrics import worker_metrics_key
    from jobs.worker.looplag import NAME

    connection = redis.Redis.from_url(settings.REDIS_URL)
    try:
        fields = connection.hgetall(worker_metrics_key())
    finally:
        connection.close()
    out: dict[str, float] = {}
    for field, value in fields.items():
        name, _, labels = field.decode().partition("|")
        if name == f"{NAME}_bucket_total":
            out[json.loads(labels)["le"]] = float(value)
    return out


def lag_summary(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    """Bucket bounds holding the p99 and the max of the samples taken between the two."""
    bounds = sorted(after, key=lambda le: float(le.replace("+Inf", "inf")))
    counts = {le: after[le] - before.get(le, 0.0) for le in bounds}
    total = counts[bounds[-1]] if bounds else 0.0
    p99 = next((le for le in bounds if counts[le] >= 0.99 * total), "+Inf")
    top = next((le for le in bounds if counts[le] >= total), "+Inf")
    return {"samples": total, "p99_le": p99, "max_le": top}


async def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    from app.security.auth import mint_token

    k, expected = spec["k"], "".join(pieces(spec["chunks"]))
    load = Load(spec["base"])
    tokens = [mint_token(f"bench-{RUN}-u{i}") for i in range(k)]
    opening = asyncio.Semaphore(50)

    async def open_one(token: str) -> asyncio.Task[None]:
        async with opening:
            connected = asyncio.Event()
            task = asyncio.create_task(load.stream(token, connected))
            await asyncio.wait_for(connected.wait(), 30)
            return task

    streams = await asyncio.gather(*(open_one(t) for t in tokens))
    users = [Poster(load.host, load.port, t) for t in tokens]
    try:
        await users[0].connect()
        for _ in range(5):  # warm-up: imports, pools, the first compile
            await load.post(users[0])
            await load.wait_ended(len(load.replies), 30)
        load.replies.clear()
        load.ended = 0
        # Keep-alive connections, as browsers that loaded the page have them (opened
        # late: the web closes a connection idle for HTTP_HEADER_TIMEOUT_SECONDS).
        await asyncio.gather(*(u.connect() for u in users[1:]))
        pid = worker_pid()
        idle = rss_kib(pid)
        await asyncio.sleep(0.6)  # the warm-up's lag samples reported before the start
        lag_before = lag_buckets()
        published_before = published_first()
        post_errors: list[str] = []
        peak = idle

        async def sample_rss() -> None:
            nonlocal peak
            while True:
                peak = max(peak, rss_kib(pid))
                await asyncio.sleep(0.01)

        sampler = asyncio.create_task(sample_rss())
        began = time.perf_counter()
        if spec.get("sequential"):
            for _ in range(spec["sequential"]):
                post_errors += [e for e in [await load.post(users[0])] if e]
                await load.wait_ended(len(load.replies), 30)
        else:
            got = await asyncio.gather(*(load.post(u) for u in users))
            post_errors += [e for e in got if e]
            await load.wait_ended(len(load.replies), spec.get("timeout", 120))
        ended = max((r.done for r in load.replies.values() if r.done), default=began)
        sampler.cancel()
        await asyncio.sleep(0.6)  # the probe reports every 0.5 s
        lag = lag_summary(lag_before, lag_buckets())
        stamps = job_stamps(load.replies)
        total, count = (a - b for a, b in zip(published_first(), published_before, strict=True))
        stamps["published (mean, from enqueue)"] = [total / count] if count else []
    finally:
        for user in users:
            user.close()
    for task in streams:
        task.cancel()
    await asyncio.gather(*streams, return_exceptions=True)
    direct = (await call_directly(spec["upstream"], 100))[0] if spec.get("sequential") else []
    replies = list(load.replies.values())
    errors = [r.error for r in replies if r.error] + post_errors
    missing = sum(1 for r in replies if r.done is None)
    wrong = sum(
        1
        for r in replies
        if r.done and not r.error and ("".join(r.text) != expected or r.final != expected)
    )
    first = [r.first - r.sent for r in replies if r.first]
    done = [r.done - r.sent for r in replies if r.done]
    return {
        "k": k,
        "replies": len(replies),
        "first": first,
        "done": done,
        "errors": errors,
        "missing": missing,
        "wrong_text": wrong,
        "events_per_reply": statistics.mean(r.events for r in replies) if replies else 0,
        "chats_per_s": len(done) / (ended - began) if done else 0.0,
        "rss_idle_kib": idle,
        "rss_peak_kib": peak,
        "lag": lag,
        "direct_first": direct,
        "stamps": stamps,
    }


# --- the orchestrator -----------------------------------------------------------------------
def run_scenario(name: str, worker: str, k: int) -> dict[str, Any]:
    spec = {**SCENARIOS[name], "k": k}
    tag = f"{name}-{worker}-{RUN}"
    port_file = ROOT / "test-artifacts" / f"bench-conc-upstream-{tag}.url"
    port_file.unlink(missing_ok=True)
    procs: list[Proc] = []
    try:
        command = [*NICE, sys.executable, __file__, "--serve-upstream", str(port_file)]
        command += [str(spec["chunks"]), str(spec["delay"])]
        procs.append(start(f"bench-conc-upstream-{tag}", command, os.environ.copy()))
        upstream = wait_until(lambda: port_file.exists() and port_file.read_text(), 30, "upstream")
        # Room for every reply in flight on the one worker process.
        env = {
            **os.environ,
            "LLM_BASE_URL": upstream,
            "CHAT_WORKER_CONCURRENCY": str(max(k, 200)),
            "LLM_MAX_CONCURRENCY": str(max(k, 200)),
        }
        if worker == "async":
            procs.append(start_worker(f"bench-conc-worker-{tag}", env))
        else:
            baseline = [sys.executable, __file__, "--serve-baseline-worker"]
            procs.append(start_worker(f"bench-conc-worker-{tag}", env, baseline))
        web = start_web(f"bench-conc-web-{tag}", env, "--log-level", "warning")
        procs.append(web)
        wait_until(lambda: _workers() == 1, 60, "the chat worker to register")
        out = ROOT / "test-artifacts" / f"bench-conc-result-{tag}.json"
        load_spec = {**spec, "base": web.base, "upstream": upstream, "out": str(out)}
        command = [*NICE, sys.executable, __file__, "--serve-load", json.dumps(load_spec)]
        load = start(f"bench-conc-load-{tag}", command, os.environ.copy())
        if load.popen.wait() != 0:
            raise RuntimeError(f"load client failed:\n{load.log()}")
        result: dict[str, Any] = json.loads(out.read_text())
        out.unlink()
        if worker == "async" and spec["delay"] > 0:
            # What the upstream and the box allow at all: the same K requests made at
            # once by this (un-niced) process straight to the upstream, no web or queue.
            first, done = asyncio.run(call_directly(upstream, k, at_once=k))
            result["direct_k"] = {"first": first, "done": done}
        return result
    finally:
        stop_all(procs)
        port_file.unlink(missing_ok=True)


def _workers() -> int:
    from rq import Queue, Worker

    from core import settings

    connection = redis.Redis.from_url(settings.REDIS_URL)
    try:
        return len(Worker.all(queue=Queue(settings.CHAT_QUEUE, connection=connection)))
    finally:
        connection.close()


def report_direct(name: str, r: dict[str, list[float]]) -> str:
    """The row of K requests made straight to the upstream at once (no Herald)."""
    ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
    first, done = r["first"], r["done"]
    return (
        f"| {name} | upstream direct | {len(first)} | {ms(statistics.median(first))}"
        f" / {ms(pct(first, 0.99))} / {ms(max(first))} | {ms(statistics.median(done))}"
        f" / {ms(pct(done, 0.99))} / {ms(max(done))} | — | — | — | — | — |"
    )


def report(name: str, worker: str, r: dict[str, Any]) -> str:
    ms = lambda v: f"{v * 1000:.0f}"  # noqa: E731
    first, done = r["first"], r["done"]
    errors = len(r["errors"]) + r["missing"] + r["wrong_text"]
    per_reply = (r["rss_peak_kib"] - r["rss_idle_kib"]) / max(1, r["k"])
    lag = r["lag"]
    lag_text = f"≤ {float(lag['p99_le']) * 1000:g} / ≤ {float(lag['max_le']) * 1000:g}"
    if not lag["samples"]:
        lag_text = "—"
    return (
        f"| {name} | {worker} | {r['k']} | {ms(statistics.median(first))} / {ms(pct(first, 0.99))}"
        f" / {ms(max(first))} | {ms(statistics.median(done))} / {ms(pct(done, 0.99))}"
        f" / {ms(max(done))} | {errors} | {r['chats_per_s']:.1f} | {per_reply:.0f}"
        f" ({r['rss_idle_kib'] // 1024}→{r['rss_peak_kib'] // 1024} MiB) | {lag_text}"
        f" | {r['events_per_reply']:.1f} / {SCENARIOS[name]['chunks']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS))
    parser.add_argument("--baseline-k", type=int, default=20)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--coalesce", type=float, help="CHAT_CHUNK_COALESCE_SECONDS for the worker (s)"
    )
    parser.add_argument("--serve-upstream", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--serve-baseline-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-load", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        port_file, chunks, delay = args.serve_upstream
        serve_upstream(port_file, int(chunks), float(delay))
        return
    if args.serve_baseline_worker:
        serve_baseline_worker()
        return
    if args.serve_load:
        spec = json.loads(args.serve_load)
        Path(spec["out"]).write_text(json.dumps(asyncio.run(run_load(spec))))
        return

    if args.coalesce is not None:
        os.environ["CHAT_CHUNK_COALESCE_SECONDS"] = str(args.coalesce)
    BENCH.create_schema()
    rows: list[str] = []
    extra: list[str] = []
    try:
        from app.migrations import apply_migrations

        apply_migrations()
        for name in args.scenario or list(SCENARIOS):
            k = SCENARIOS[name]["k"]
            runs = [("async", k)]
            if not args.no_baseline:
                paced = SCENARIOS[name]["delay"] > 0
                runs.append(("baseline", min(k, args.baseline_k) if paced else k))
            for worker, kk in runs:
                result = run_scenario(name, worker, kk)
                rows.append(report(name, worker, result))
                print(rows[-1], flush=True)
                stamps = result["stamps"]
                extra.append(
                    f"{name}/{worker} since POST sent, p50 / max (ms): "
                    + "; ".join(
                        f"{hop} {statistics.median(v) * 1000:.0f} / {max(v) * 1000:.0f}"
                        for hop, v in stamps.items()
                        if v
                    )
                )
                if result["errors"]:
                    extra.append(f"{name}/{worker} errors: {sorted(set(result['errors']))}")
                if result["missing"] or result["wrong_text"]:
                    extra.append(
                        f"{name}/{worker}: {result['missing']} never ended,"
                        f" {result['wrong_text']} with a wrong text"
                    )
                if "direct_k" in result:
                    rows.append(report_direct(name, result["direct_k"]))
                    print(rows[-1], flush=True)
                if result["direct_first"]:
                    over = statistics.median(result["first"]) - statistics.median(
                        result["direct_first"]
                    )
                    extra.append(
                        f"{name}/{worker}: upstream called directly, first chunk p50"
                        f" {statistics.median(result['direct_first']) * 1000:.1f} ms;"
                        f" POST → first chunk p50 {statistics.median(result['first']) * 1000:.1f}"
                        f" ms; overhead {over * 1000:.1f} ms"
                    )
    finally:
        BENCH.remove()
    print(
        f"\nmachine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release};"
        f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        "| scenario | worker | K | POST → first chunk p50 / p99 / max (ms) |"
        " POST → done p50 / p99 / max (ms) | errors | chats/s |"
        " RSS per reply in flight, KiB (idle→peak) | loop lag p99 / max (ms, bucket) |"
        " chunk events per reply / upstream pieces |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)
    for line in extra:
        print(line)


if __name__ == "__main__":
    main()
