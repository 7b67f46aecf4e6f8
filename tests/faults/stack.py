"""The fault suite's stack: a private Redis and PostgreSQL (tests/support/servers.py)
that a test may stop and restart, and web and worker processes pointed at them
(tests/support/procs.py), with their logs in a temp directory."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from app.dev.embedded import free_port
from core import settings
from tests.conftest import PREFIX, unlink_prefix
from tests.support.procs import ROOT, Proc, Web, start_web, start_worker
from tests.support.servers import PostgresServer, RedisServer


class Stack:
    """A private Redis + PostgreSQL and the processes started against them."""

    def __init__(self, workdir: Path, redis_server: RedisServer, pg: PostgresServer) -> None:
        self.workdir = workdir
        self.redis = redis_server
        self.pg = pg
        self.procs: list[Proc] = []

    def wipe_private_redis(self) -> int:
        """Redis losing its data: every key of this run unlinked on the private server (by
        the run's prefix, as the end-of-run cleanup does; never a whole database, so even
        a misaimed call could touch only this run's keys). Returns how many keys went."""
        if not self.redis.ping():
            raise RuntimeError(f"the Redis on port {self.redis.port} is not the suite's own")
        client = self.redis.client()
        try:
            return unlink_prefix(client, PREFIX)
        finally:
            client.close()

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": self.pg.url,
            # The test process's own prefix, so events.user_stream() names the same
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

    def start_web(self, **extra: str) -> Web:
        # /healthz: a test may start a web process while PostgreSQL is down.
        port = free_port()
        web = start_web(
            f"web-{port}",
            self.env(**extra),
            "--timeout-graceful-shutdown",
            "3",
            "--backlog",
            "4096",
            port=port,
            ready="/healthz",
            logdir=self.workdir,
        )
        self.procs.append(web)
        return web

    def start_worker(self, name: str = "worker", **extra: str) -> Proc:
        env = self.env(**{"WORKER_CHAT_PROCESSES": "1", "WORKER_UPLOAD_PROCESSES": "1", **extra})
        worker = start_worker(name, env, logdir=self.workdir)
        self.procs.append(worker)
        return worker

    def stop_all(self) -> None:
        for proc in self.procs:
            proc.stop(timeout=10)
        self.procs.clear()

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


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
