"""Operations endpoints: /healthz, /readyz, /metrics (queue depth, worker counters)."""

from __future__ import annotations

import httpx
import pytest
import redis
from rq import Queue

from core import jobkinds, settings
from core.jobmetrics import record_job_metric
from tests.support.asgi import running_app

pytestmark = pytest.mark.anyio


def client_for(app: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")  # type: ignore[arg-type]


async def test_health_and_ready() -> None:
    async with running_app() as app, client_for(app) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"redis": "ok", "postgresql": "ok"}


async def test_metrics_show_queue_depth_and_worker_counters(redis_client: redis.Redis) -> None:
    queue = Queue(settings.UPLOAD_QUEUE, connection=redis_client)
    queue.empty()
    for n in range(3):
        queue.enqueue_call(jobkinds.CSV_IMPORT.target, args=(f"never-run-{n}",))
    record_job_metric(redis_client, "herald_test_things_total", 2, kind='a "quoted", odd one')
    try:
        async with running_app() as app, client_for(app) as client:
            response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert f'herald_queue_jobs{{queue="{settings.UPLOAD_QUEUE}",state="queued"}} 3.0' in text
        assert f'herald_queue_jobs{{queue="{settings.CHAT_QUEUE}",state="queued"}} 0.0' in text
        assert 'herald_test_things_total{kind="a \\"quoted\\", odd one"} 2.0' in text
        assert "herald_sse_open_streams 0.0" in text
    finally:
        queue.empty()


def test_log_lines_are_json_with_request_and_job_ids(redis_client: redis.Redis) -> None:
    import json
    import logging

    from rq.job import Job, _current_job

    from core.logs import JSONFormatter, request_id_var

    record = logging.LogRecord("herald.test", logging.INFO, __file__, 1, "hello %s", ("x",), None)
    request_token = request_id_var.set("req-1")
    job_token = _current_job.set(Job(id="job-1", connection=redis_client))
    try:
        line = json.loads(JSONFormatter().format(record))
    finally:
        _current_job.reset(job_token)
        request_id_var.reset(request_token)
    assert line["message"] == "hello x"
    assert line["request_id"] == "req-1"
    assert line["job_id"] == "job-1"
    assert line["level"] == "info"
