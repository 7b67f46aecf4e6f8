"""Prometheus metrics of the web process, and the worker-side counters it re-exports.

Workers run on other machines (Heroku dynos), where nothing scrapes them; so jobs add
their counts to one Redis hash (``record_job_metric``) and every web process's
``/metrics`` exposes them, next to its own in-process metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import redis
import redis.asyncio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from core.jobmetrics import worker_metrics_key

REGISTRY = CollectorRegistry(auto_describe=True)

OPEN_STREAMS = Gauge(
    "herald_sse_open_streams", "SSE streams open in this process", registry=REGISTRY
)
EVENTS_DELIVERED = Counter(
    "herald_sse_events_delivered_total", "Events written to SSE clients", registry=REGISTRY
)
SLOW_CLIENTS_DROPPED = Counter(
    "herald_sse_slow_clients_dropped_total",
    "SSE clients disconnected because their queue overflowed",
    registry=REGISTRY,
)
STREAMS_REFUSED = Counter(
    "herald_sse_streams_refused_total",
    "SSE connections refused by the per-user limit",
    registry=REGISTRY,
)
RESYNCS = Counter(
    "herald_sse_resyncs_total", "Resumes that fell outside history", registry=REGISTRY
)
HUB_RECONNECTS = Counter(
    "herald_hub_reconnects_total", "Times the pub/sub subscriber reconnected", registry=REGISTRY
)
HTTP_REQUESTS = Counter(
    "herald_http_requests_total",
    "HTTP requests by route and status",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "herald_http_request_duration_seconds",
    "HTTP request latency (time to response start)",
    ["route"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "herald_rate_limited_total", "Requests refused by a rate limit", ["limit"], registry=REGISTRY
)
AUTH_FAILURES = Counter(
    "herald_auth_failures_total", "Requests refused for a bad or missing token", registry=REGISTRY
)


class WorkerMetricsCollector(Collector):
    """Renders the Redis hash of worker counters; refreshed before each scrape."""

    def __init__(self) -> None:
        self.snapshot: dict[bytes, bytes] = {}

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for raw_field, raw_value in sorted(self.snapshot.items()):
            name, _, label_text = raw_field.decode().partition("|")
            try:
                labels = {str(k): str(v) for k, v in orjson.loads(label_text or "{}").items()}
            except (orjson.JSONDecodeError, AttributeError):
                continue  # a field written by an older version: skip, never fail the scrape
            family = families.get(name)
            if family is None:
                if name.endswith("_total"):
                    family = CounterMetricFamily(
                        name.removesuffix("_total"), "worker counter", labels=list(labels)
                    )
                else:
                    family = GaugeMetricFamily(name, "worker gauge", labels=list(labels))
                families[name] = family
            family.add_metric(list(labels.values()), float(raw_value))
        yield from families.values()


WORKER_METRICS = WorkerMetricsCollector()
REGISTRY.register(WORKER_METRICS)


QUEUE_JOBS = Gauge(
    "herald_queue_jobs",
    "RQ jobs per queue and state (queued = depth), read from Redis at scrape time",
    ["queue", "state"],
    registry=REGISTRY,
)


async def render_metrics(
    client: redis.asyncio.Redis, queue_keys: dict[str, dict[str, str]] | None = None
) -> bytes:
    """The Prometheus text: this process's metrics, the workers' counters from Redis,
    and ``queue_keys`` ({queue: {state: redis key}}) sized with LLEN/ZCARD."""
    async with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(worker_metrics_key())
        cells = [
            (q, state, key)
            for q, states in (queue_keys or {}).items()
            for state, key in states.items()
        ]
        for _, state, key in cells:
            if state == "queued":
                pipe.llen(key)
            else:
                pipe.zcard(key)
        snapshot, *sizes = await pipe.execute()
    WORKER_METRICS.snapshot = {_b(k): _b(v) for k, v in snapshot.items()}
    for (queue, state, _), size in zip(cells, sizes, strict=True):
        QUEUE_JOBS.labels(queue, state).set(size)
    return generate_latest(REGISTRY)


def _b(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()
