"""Event-loop lag of an ``AsyncWorker``: how late a short sleep wakes up.

Hundreds of replies share one loop, so CPU work inside one of them (the guard, JSON,
checkpoint serialisation) delays every other stream by as long as it runs. The probe
sleeps ``tick`` seconds in a loop and counts how much later than asked each sleep ends:
the same measure as Node's ``perf_hooks.monitorEventLoopDelay`` and aiomonitor's lag.

The samples go to the worker metrics hash (core/jobmetrics.py) as a Prometheus
histogram: counters ``herald_worker_loop_lag_seconds_bucket_total{le=...}``,
``_sum_total`` and ``_count_total``. Counters add up across processes and never leave
a stale series behind a dead worker; ``histogram_quantile(0.99, rate(...))`` gives p99.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable

import redis

from core.jobmetrics import metric_field

logger = logging.getLogger("herald.worker")

NAME = "herald_worker_loop_lag_seconds"
# Upper bounds in seconds: fine below the 20 ms p99 aim, coarse above it.
BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0, 5.0)


class LagHistogram:
    """Lag samples of one report window, counted per bucket (not cumulative)."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def add(self, lag: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, lag)] += 1
        self.total += lag
        self.n += 1

    def record(self, client: redis.Redis, labels: dict[str, str]) -> None:
        """Add this window to the shared counters in one round trip (cumulative
        buckets, as Prometheus's text format has them)."""
        with client.pipeline(transaction=False) as pipe:
            running = 0
            for bound, count in zip((*BUCKETS, None), self.counts, strict=True):
                running += count
                le = "+Inf" if bound is None else repr(bound)
                pipe.hincrbyfloat(
                    *metric_field(f"{NAME}_bucket_total", {**labels, "le": le}), running
                )
            pipe.hincrbyfloat(*metric_field(f"{NAME}_sum_total", labels), self.total)
            pipe.hincrbyfloat(*metric_field(f"{NAME}_count_total", labels), self.n)
            pipe.execute()


async def probe_loop_lag(
    tick: float, window: float, report: Callable[[LagHistogram], None]
) -> None:
    """Until cancelled: sleep ``tick``, note the lateness; every ``window`` seconds hand
    the samples to ``report`` in an executor thread (it may block on Redis)."""
    loop = asyncio.get_running_loop()
    samples = LagHistogram()
    window_end = loop.time() + window
    try:
        while True:
            asked = loop.time()
            await asyncio.sleep(tick)
            woke = loop.time()
            samples.add(max(0.0, woke - asked - tick))
            if woke >= window_end:
                done, samples = samples, LagHistogram()
                window_end = woke + window
                await loop.run_in_executor(None, _report, report, done)
    except asyncio.CancelledError:
        if samples.n:
            await loop.run_in_executor(None, _report, report, samples)
        raise


def _report(report: Callable[[LagHistogram], None], samples: LagHistogram) -> None:
    try:
        report(samples)
    except (redis.exceptions.RedisError, OSError) as exc:
        # A metric must not stop the worker: the window is lost, the next one is tried.
        logger.warning("could not record event-loop lag: %s", exc)
