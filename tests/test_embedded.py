"""The embedded servers of ``scripts/start`` (app/dev/embedded.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from app.dev import embedded


def test_issue10_embedded_redis_keeps_its_data_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dev stack's Redis appends to a file under .herald/redis: a restart keeps
    queued jobs and event history (issue 10 item 7)."""
    monkeypatch.setattr(embedded, "STATE_DIR", tmp_path)
    env = {"DATABASE_URL": "unused: only Redis is started"}
    services = embedded.ensure_services(env, persistent_redis=True)
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        client.rpush("queue", "job-1", "job-2")
        client.xadd("events", {"e": "chat.chunk"})
    finally:
        client.close()
        services.stop()
    assert (tmp_path / "redis").is_dir()

    env = {"DATABASE_URL": "unused: only Redis is started"}
    services = embedded.ensure_services(env, persistent_redis=True)
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        assert client.lrange("queue", 0, -1) == [b"job-1", b"job-2"]
        assert client.xlen("events") == 1
    finally:
        client.close()
        services.stop()


def test_test_and_benchmark_redis_is_not_persistent() -> None:
    env = {"DATABASE_URL": "unused: only Redis is started"}
    services = embedded.ensure_services(env)
    client = redis.Redis.from_url(env["REDIS_URL"])
    try:
        assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        client.close()
    scratch = services.scratch
    assert scratch is not None and scratch.is_dir()
    services.stop()
    assert not scratch.exists()  # nothing left behind in /tmp


def test_issue10_root_is_told_about_the_pgserver_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as root, pgserver creates a system user and opens folder permissions; the
    start command says so first (issue 10 item 8)."""
    monkeypatch.setattr(embedded.os, "geteuid", lambda: 0)
    notice = embedded.root_notice()
    assert notice is not None
    assert "'pgserver'" in notice
    assert "DATABASE_URL" in notice
    monkeypatch.setattr(embedded.os, "geteuid", lambda: 1000)
    assert embedded.root_notice() is None
