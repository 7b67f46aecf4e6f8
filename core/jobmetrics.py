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
    # Labels as JSON: a value may hold any character (a model name with a comma broke
    # the old "k=v,k=v" form and with it every /metrics scrape; found by tests/faults).
    field = name + "|" + orjson.dumps(dict(sorted(labels.items()))).decode()
    if name.endswith("_total"):
        client.hincrbyfloat(worker_metrics_key(), field, amount)
    else:
        client.hset(worker_metrics_key(), field, amount)
