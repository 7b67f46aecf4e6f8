"""core/collector.py: the collector's gen-0 threshold for a block, and the processes
that run under one (a chat worker while it works, the web app while its lifespan runs)."""

from __future__ import annotations

import gc

import pytest
import redis
from rq import Queue

from core import settings
from core.collector import gen0_threshold
from jobs.worker.asyncworker import AsyncWorker
from tests.support.asgi import running_app


async def gen0_now() -> int:
    """An RQ job: the threshold the worker runs its jobs under."""
    return gc.get_threshold()[0]


def test_the_threshold_holds_for_the_block_and_returns_after() -> None:
    before = gc.get_threshold()
    with gen0_threshold(12_345):
        assert gc.get_threshold() == (12_345, before[1], before[2])
    assert gc.get_threshold() == before
    with gen0_threshold(0):  # 0: CPython's own
        assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), gen0_threshold(54_321):
        raise RuntimeError
    assert gc.get_threshold() == before


def test_a_chat_worker_runs_its_jobs_under_its_threshold(redis_client: redis.Redis) -> None:
    before = gc.get_threshold()
    queue = Queue(f"{settings.CHAT_QUEUE}-collector", connection=redis_client)
    job = queue.enqueue(gen0_now)
    worker = AsyncWorker([queue], connection=redis_client, gc_gen0_threshold=23_456)
    assert worker.work(burst=True)
    job.refresh()
    assert job.return_value() == 23_456
    assert gc.get_threshold() == before


@pytest.mark.anyio
async def test_the_web_app_runs_under_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    before = gc.get_threshold()
    monkeypatch.setattr(settings, "GC_GEN0_THRESHOLD", 34_567)
    async with running_app():
        assert gc.get_threshold()[0] == 34_567
    assert gc.get_threshold() == before
