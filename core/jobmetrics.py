"""Worker-side counters and gauges, shared with every web process through one Redis hash.

Workers cannot be scraped (they are short-lived and many), so they add to a hash that
``app.metrics`` renders on each ``/metrics`` scrape.
"""

from __future__ import annotations

import orjson
import redis

from core import settings


def worker_metrics_key() -> str:
    return f"{settings.REDIS_PREFIX}:metrics"


def record_job_metric(client: redis.Redis, name: str, amount: float = 1, **labels: str) -> None:
    """Add ``amount`` to a worker-side counter or gauge shared through Redis.

    ``name`` ending in ``_total`` is a counter; anything else is a gauge set to amount.
    """
    key, field = metric_field(name, labels)
    if name.endswith("_total"):
        client.hincrbyfloat(key, field, amount)
    else:
        client.hset(key, field, amount)


def metric_field(name: str, labels: dict[str, str]) -> tuple[str, str]:
    """The Redis hash and field of one worker metric, for callers that batch their
    writes (HINCRBYFLOAT for ``*_total`` counters, HSET for gauges)."""
    # Labels as JSON: a value may hold any character (a model name with a comma would
    # break a "k=v,k=v" form and with it every /metrics scrape).
    return worker_metrics_key(), name + "|" + orjson.dumps(dict(sorted(labels.items()))).decode()
