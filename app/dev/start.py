"""``scripts/start``: web + worker on one machine, with embedded servers if needed.

Not for production (use the Procfile). The JWT secret here is a fixed, published
development value, passed to both processes so they agree; set JWT_SECRET to override.
"""

from __future__ import annotations

import os
import signal
import subprocess  # starts our own web and worker processes  # nosec B404
import sys
import time

# The documented dev-only value (README "Tokens"); production has no default.
DEV_SECRET = "herald-dev-secret-not-for-production"  # noqa: S105  # nosec B105


def web_argv(port: int | str, *extra: str, host: str = "127.0.0.1") -> list[str]:
    """The web process for local runs, tests and benchmarks: uvicorn on this
    interpreter as the Procfile runs it (request bounds, proxy headers read by
    app/proxy.py, no uvicorn access log: ours redacts query tokens)."""
    return [
        sys.executable, "-m", "uvicorn", "app.main:app",
        "--host", host, "--port", str(port),
        "--http", "app.connections:BoundedHttpToolsProtocol", "--no-proxy-headers",
        "--no-access-log", *extra,
    ]  # fmt: skip


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "jobs.worker"]


def main() -> int:
    from app.dev import embedded

    env = dict(os.environ)
    embedded.ensure_services(env)
    env.setdefault("JWT_SECRET", DEV_SECRET)
    env.setdefault("HERALD_DEV", "1")
    env.setdefault("PORT", "8000")
    os.environ.update(env)  # settings are read below, after this point

    from app.migrations import apply_migrations
    from app.security.auth import mint_token

    apply_migrations()
    token = mint_token("dev-user", org_id="dev-org", ttl_seconds=7 * 86400)
    port = env["PORT"]
    procs = [
        subprocess.Popen(web_argv(port, "--timeout-graceful-shutdown", "5"), env=env),  # noqa: S603  # nosec B603
        subprocess.Popen(worker_argv(), env=env),  # noqa: S603  # nosec B603
    ]
    print(f"\nHerald is starting on http://127.0.0.1:{port}/", flush=True)
    print(f"A token for user 'dev-user' in org 'dev-org' (7 days):\n{token}\n", flush=True)
    print(f"  curl -N -H 'Authorization: Bearer {token[:16]}...' http://127.0.0.1:{port}/events\n")

    def stop(*_: object) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
    finally:
        stop()
        for proc in procs:
            proc.wait(timeout=30)
    return max((p.returncode or 0) for p in procs)
