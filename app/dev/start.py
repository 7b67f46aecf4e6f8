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
    interpreter, without uvicorn's access log (ours redacts query tokens)."""
    return [
        sys.executable, "-m", "uvicorn", "app.main:app",
        "--host", host, "--port", str(port), "--no-access-log", *extra,
    ]  # fmt: skip


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "jobs.worker"]


class Stack:
    """The web and worker processes, stopped together on the first signal.

    Ctrl-C in a terminal sends SIGINT to the whole foreground process group: web and
    worker get it directly as well as the SIGTERM sent here, which both treat as one
    request (uvicorn stops gracefully; RQ ignores a repeat within a second). A second
    Ctrl-C forces: uvicorn drops open connections, RQ stops the job in hand (its cold
    shutdown; the job is retried at the next start, jobs/chat/recovery.py).
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


def main() -> int:
    from app.dev import embedded

    stack = Stack()
    # From here on a signal stops the stack; before any process started it only
    # cancels the start.
    signal.signal(signal.SIGTERM, stack.on_signal)
    signal.signal(signal.SIGINT, stack.on_signal)
    env = dict(os.environ)
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


def run(stack: Stack, env: dict[str, str]) -> int:
    env.setdefault("JWT_SECRET", DEV_SECRET)
    env.setdefault("HERALD_DEV", "1")
    env.setdefault("PORT", "8000")
    os.environ.update(env)  # settings are read below, after this point

    from app.migrations import apply_migrations
    from app.security.auth import mint_token

    apply_migrations()
    token = mint_token("dev-user", org_id="dev-org", ttl_seconds=7 * 86400)
    port = env["PORT"]
    if stack.signals:
        return 130
    stack.start(web_argv(port, "--timeout-graceful-shutdown", "5"), env)
    stack.start(worker_argv(), env)
    print(f"\nHerald is starting on http://127.0.0.1:{port}/", flush=True)
    print(f"A token for user 'dev-user' in org 'dev-org' (7 days):\n{token}\n", flush=True)
    print(f"  curl -N -H 'Authorization: Bearer {token[:16]}...' http://127.0.0.1:{port}/events\n")
    return stack.wait()
