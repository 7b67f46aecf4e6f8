"""``scripts/start``: web + worker on one machine, with embedded servers if needed.

Not for production (use the Procfile). The JWT secret here is a fixed, published
development value, passed to both processes so they agree; set JWT_SECRET to override.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess  # starts our own web and worker processes  # nosec B404
import sys
import time
from collections.abc import Sequence

import httpx

# The documented dev-only value (README "Tokens"); production has no default.
DEV_SECRET = "herald-dev-secret-not-for-production"  # noqa: S105  # nosec B105
# Roomier limits for one developer trying things (the sample CSVs alone are 16
# uploads; a few browser tabs each hold a stream). Production defaults are in
# core/settings.py; a variable set in the environment always wins over these.
DEV_LIMITS = {
    "CHAT_RATE_LIMIT": "1000/hour",
    "UPLOAD_RATE_LIMIT": "1000/hour",
    "SSE_MAX_CONNECTIONS_PER_USER": "20",
}


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


def release_argv() -> list[str]:
    """The Procfile's release phase (migrations) on this interpreter."""
    return [sys.executable, "-m", "app.migrations"]


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "jobs.worker"]


class Stack:
    """The web and worker processes, stopped together on the first signal.

    Ctrl-C in a terminal sends SIGINT to the whole foreground process group: web and
    worker get it directly as well as the SIGTERM sent here, which both treat as one
    request (uvicorn stops gracefully; RQ ignores a repeat within a second). A second
    Ctrl-C forces: uvicorn drops open connections, RQ stops the job in hand (its cold
    shutdown; the reconciler runs it again after the next start, jobs/worker/reconciler.py).
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.signals = 0

    def start(self, argv: list[str], env: dict[str, str]) -> None:
        self.procs.append(subprocess.Popen(argv, env=env))  # noqa: S603  # nosec B603
        if self.signals:  # asked to stop while starting
            self.send(signal.SIGTERM)

    def on_signal(self, signum: int, frame: object) -> None:
        self.signals += 1
        if not self.procs:
            return
        if self.signals == 1:
            print(
                "\nStopping: workers finish the job in hand first (Ctrl-C again to force).",
                flush=True,
            )
            self.send(signal.SIGTERM)
        else:
            print("\nForcing the stop.", flush=True)
            self.send(signal.SIGINT)

    def send(self, signum: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def wait(self) -> int:
        """Until every process has exited; one exiting on its own stops the rest."""
        while any(p.poll() is None for p in self.procs):
            if self.signals == 0 and any(p.poll() is not None for p in self.procs):
                self.on_signal(signal.SIGTERM, None)
            time.sleep(0.2)
        return max((p.returncode or 0) for p in self.procs)


ENVIRONMENT_HELP = """\
environment:
  PORT              the web port, 8000 unless set (--port wins over it)
  REDIS_URL         a Redis to use; unset: an embedded one, its data in .herald/redis
  DATABASE_URL      a PostgreSQL to use; unset: an embedded one, in .herald/pgdata
  JWT_SECRET        the token secret; unset: a published, dev-only value
  HERALD_STATE_DIR  where embedded servers keep their data (default: ./.herald)
  Every other setting and limit is an environment variable too (core/settings.py).
  Roomier than in production here, unless set:
{dev_limits}

Ctrl-C stops: workers finish the job in hand first; Ctrl-C again forces.
"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/start",
        description="Run Herald's web and worker processes on this machine, for development.",
        epilog=ENVIRONMENT_HELP.format(
            dev_limits="\n".join(f"    {name}={value}" for name, value in DEV_LIMITS.items())
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("PORT") or 8000),
        help="the web port (default: $PORT, else 8000)",
    )
    return parser.parse_args(argv)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        # As uvicorn binds: a port only in TIME_WAIT (a restart) is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def main(argv: Sequence[str] | None = None) -> int:
    from app.dev import embedded

    args = parse_args(argv)
    if port_in_use(args.port):
        print(
            f"scripts/start: port {args.port} is already in use; "
            "stop what runs there, or choose another with PORT=... or --port.",
            file=sys.stderr,
        )
        return 1
    stack = Stack()
    # From here on a signal stops the stack; before any process started it only
    # cancels the start.
    signal.signal(signal.SIGTERM, stack.on_signal)
    signal.signal(signal.SIGINT, stack.on_signal)
    env = {**os.environ, "PORT": str(args.port)}
    notice = None if env.get("DATABASE_URL") else embedded.root_notice()
    if notice:
        print(notice, file=sys.stderr, flush=True)
    # Persistent: queued jobs and event history survive a restart of the dev stack.
    services = embedded.ensure_services(env, persistent_redis=True)
    try:
        return run(stack, env)
    finally:
        # Last: web and worker talk to Redis and PostgreSQL until they have exited.
        services.stop()


def dev_environment(environ: dict[str, str]) -> dict[str, str]:
    """The dev stack's settings: the dev secret and limits, unless set already."""
    return {"JWT_SECRET": DEV_SECRET, "HERALD_DEV": "1", **DEV_LIMITS, **environ}


def run(stack: Stack, env: dict[str, str]) -> int:
    env = dev_environment(env)
    os.environ.update(env)  # settings are read below, after this point

    from app.dev.token import DEV_ORG, DEV_TOKEN_TTL_SECONDS, DEV_USER
    from app.security.auth import mint_token

    # The Procfile's release phase, run as Heroku runs it before web and worker start.
    release = subprocess.run(release_argv(), env=env, check=False)  # noqa: S603  # nosec B603
    if stack.signals:
        return 130
    if release.returncode != 0:
        print("Migrations failed; see the log above.", file=sys.stderr, flush=True)
        return release.returncode
    token = mint_token(DEV_USER, org_id=DEV_ORG, ttl_seconds=DEV_TOKEN_TTL_SECONDS)
    port = env["PORT"]
    if stack.signals:
        return 130
    print(f"Starting Herald on port {port}...", flush=True)
    stack.start(web_argv(port, "--timeout-graceful-shutdown", "5"), env)
    stack.start(worker_argv(), env)
    if wait_ready(stack, f"http://127.0.0.1:{port}"):
        print(banner(f"http://127.0.0.1:{port}", token, DEV_USER, DEV_ORG), flush=True)
    return stack.wait()


def wait_ready(stack: Stack, base: str) -> bool:
    """Until ``/readyz`` answers 200 (Redis and PostgreSQL reachable, the web serving),
    or the stack is stopping."""
    while not stack.signals and all(p.poll() is None for p in stack.procs):
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def banner(base: str, token: str, user: str, org: str) -> str:
    # The whole token: the curl line is meant to be pasted as it is.
    return (
        f"\nHerald is ready on {base}/\n"
        f"A token for user '{user}' in org '{org}' (7 days):\n{token}\n\n"
        f"Try:\n  curl -N -H 'Authorization: Bearer {token}' {base}/events\n"
        "Stop with Ctrl-C.\n"
    )
